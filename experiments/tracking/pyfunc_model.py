"""The pyfunc model class: raw digits in; digit and probabilities out, through MindSpore
`Model.predict`. It is logged as code (model_code.py), not pickled."""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from experiments.core.data import normalize
from experiments.core.digits import PredictError, as_digits, is_blank


class DigitClassifier(PythonModel):
    """28x28 uint8 digits (or, called directly, image paths) to a frame of `digit`,
    `probability`, `p0`..`p9` and `blank` (nothing drawn: digit -1, probabilities 0)."""

    def load_context(self, context: Any) -> None:
        import mindspore

        from experiments.core import config as cfg
        from experiments.core import task as tasks

        # The run's task: a user's file travels in the model; a model logged before
        # tasks were is the seed's network.
        recorded = context.model_config or {}
        where = context.artifacts.get("task") or recorded.get("task") or "mlp"
        config = cfg.build({**recorded.get("config", {}), "task": where})
        task = tasks.load(tasks.locate(where))
        net = task.network(task.file.complete(config))
        mindspore.load_checkpoint(context.artifacts["weights"], net)
        net.set_train(False)
        self.model = mindspore.train.Model(net)
        self.to_input = task.to_input
        self.own_data = bool(recorded.get("own_data"))
        self.classes = int(recorded.get("classes", 10))


    # The hint is one MLflow infers no schema from (so it neither warns nor validates):
    # the logged signature (uint8 digits) is the contract, and paths are accepted too.
    def predict(self, context: Any, model_input: np.ndarray, params: Any = None) -> Any:
        import pandas as pd
        from mindspore import Tensor

        if self.own_data:  # inputs as they train (served), or images through to_input
            if isinstance(model_input, np.ndarray) and model_input.dtype == np.float32:
                inputs = model_input
            elif self.to_input is None:
                raise PredictError("this model's task trains on its own data and defines no "
                                   "to_input(image): image files cannot be fed to it")
            else:
                inputs = np.stack([np.asarray(self.to_input(image), dtype=np.float32)
                                   for image in model_input])
            blank = np.zeros(len(inputs), dtype=bool)
        else:
            digits = as_digits(model_input.to_numpy() if hasattr(model_input, "to_numpy")
                               else model_input)
            inputs = normalize(digits) if self.to_input is None else \
                np.stack([np.asarray(self.to_input(d), dtype=np.float32) for d in digits])
            blank = np.array([is_blank(d) for d in digits], dtype=bool)
        inputs = np.ascontiguousarray(inputs, dtype=np.float32)
        logits = self.model.predict(Tensor(inputs)).asnumpy().astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        probs[blank] = 0.0
        frame = pd.DataFrame(probs, columns=[f"p{i}" for i in range(probs.shape[1])])
        frame.insert(0, "blank", blank)
        frame.insert(0, "probability", probs.max(axis=1))
        # A task's own data has classes, not digits.
        frame.insert(0, "class" if self.own_data else "digit",
                     np.where(blank, -1, probs.argmax(axis=1)))
        return frame
