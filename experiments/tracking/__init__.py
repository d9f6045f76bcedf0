"""Everything MLflow: the store, the tracked run, its figures and the pyfunc model."""
