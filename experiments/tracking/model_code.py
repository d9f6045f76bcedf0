"""The model's code, as MLflow's models-from-code runs it when a logged model is loaded:
logging code instead of a pickled object is what MLflow recommends (a pickle can run
arbitrary code when it is loaded, and MLflow warns at every trial when it is asked to
make one)."""

from mlflow.models import set_model

from experiments.tracking.pyfunc_model import DigitClassifier

set_model(DigitClassifier())
