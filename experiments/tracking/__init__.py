"""Everything MLflow: the store, the tracked run, its figures and the pyfunc model."""

import os

# MLflow's telemetry, set up when mlflow is imported, asks its server for a config from a
# thread; on failing (always, offline) that thread removes the environment variable
# _MLFLOW_TELEMETRY_SESSION_ID, while the main thread may be reading os.environ (requests
# looks up proxies in it at every call to a tracking server). The main thread then met a
# KeyError '_MLFLOW_TELEMETRY_SESSION_ID', and a log-batch failed mid-trial (seen with two
# sweeps on a loaded machine; the race is in os.environ's items()). Set before any import
# of mlflow by this package; a user's own MLFLOW_DISABLE_TELEMETRY is kept.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
