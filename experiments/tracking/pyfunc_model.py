"""The pyfunc model class, apart so that the CLI's fast paths do not import MLflow."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from experiments.core.data import normalize
from experiments.core.digits import as_digits

# MLflow warns at class creation that predict() has no type hints; by design it has none
# (it takes arrays or paths, and the logged signature is the contract).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class DigitClassifier(PythonModel):
        """Raw digits in; digit and probabilities out, through MindSpore `Model.predict`."""

        def load_context(self, context: Any) -> None:
            import mindspore

            from experiments.core.model import Network

            net = Network()
            mindspore.load_checkpoint(context.artifacts["weights"], net)
            net.set_train(False)
            self.model = mindspore.train.Model(net)

        # No type hints here: MLflow would read them as a competing input schema.
        def predict(self, context, model_input, params=None):
            import pandas as pd
            from mindspore import Tensor

            digits = as_digits(model_input.to_numpy() if hasattr(model_input, "to_numpy")
                               else model_input)
            logits = self.model.predict(Tensor(normalize(digits))).asnumpy().astype(np.float64)
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            frame = pd.DataFrame(probs, columns=[f"p{i}" for i in range(10)])
            frame.insert(0, "probability", probs.max(axis=1))
            frame.insert(0, "digit", probs.argmax(axis=1))
            return frame
