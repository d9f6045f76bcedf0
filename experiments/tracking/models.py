"""The run's model: saved as an MLflow pyfunc model, found again, loaded to predict.

`model/` on a run holds the weights, this package's code, a signature and an input
example; `DigitClassifier` (pyfunc_model.py) does the pre-processing, MindSpore
`Model.predict` and the post-processing.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from experiments.core.digits import PredictError

PIP_REQUIREMENTS = ["mindspore==2.10.0", "numpy==1.26.4", "pandas==2.3.3", "pillow==11.3.0"]
PACKAGE = Path(__file__).resolve().parent.parent  # experiments/, copied into every model
MODEL_CODE = Path(__file__).with_name("model_code.py")


def log_model(client: Any, run_id: str, net: Any, example: np.ndarray,
              task: tuple[Any, Any] | None = None, classes: int = 10) -> None:
    """Save the pyfunc model (weights, code, signature, example) as the run's `model/`.
    `task` (the task file, the run's config): a user's task file goes into the model as
    an artifact, with the keys its network is built from, so the model loads anywhere.
    A task with its own data takes images through its `to_input`: no digit signature."""
    import mindspore
    import mlflow.pyfunc

    from experiments.core.config import BUILT_IN_TASKS, flatten

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.ckpt"
        mindspore.save_checkpoint(net, str(weights))
        artifacts = {"weights": str(weights)}
        model_config = None
        if task is not None:
            file, config = task
            model_config = {"config": {k: v for k, v in flatten(config).items()
                                       if k != "task"}, "task": config.task,
                            "own_data": "data" in file.defines, "classes": classes}
            if file.name not in BUILT_IN_TASKS:
                artifacts["task"] = str(file.path)
        own = bool(model_config and model_config["own_data"])
        # A task's own inputs go in as they train (served); image files go through its
        # to_input (runner.py predict).
        contract = signature(classes, example.shape[1:]) if own else signature()
        example = example[:2] if own else example[:2].astype(np.uint8)
        # The package's sources only: its __pycache__ folders were two thirds of the files
        # every model copied, twice (into the model, then into the store), for nothing.
        code = Path(tmp) / "code" / PACKAGE.name
        shutil.copytree(PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        mlflow.pyfunc.save_model(
            path=str(Path(tmp) / "model"), python_model=str(MODEL_CODE),
            artifacts=artifacts, code_paths=[str(code)], model_config=model_config,
            signature=contract, input_example=example,
            pip_requirements=PIP_REQUIREMENTS)
        client.log_artifacts(run_id, str(Path(tmp) / "model"), "model")


def signature(classes: int = 10, own_input: tuple[int, ...] | None = None) -> Any:
    """The contract, written out rather than inferred from examples (inference guesses,
    and warns about the guess): N x 28 x 28 uint8 digits in (a task's own float32 inputs,
    for a task with its own data); per input, the digit or class (-1 for a blank digit),
    its probability, p0..p(classes-1) and whether nothing was drawn."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    outputs = [ColSpec("long", "digit" if own_input is None else "class"),
               ColSpec("double", "probability"),
               ColSpec("boolean", "blank"), *(ColSpec("double", f"p{i}")
                                              for i in range(classes))]
    inputs = TensorSpec(np.dtype(np.uint8), (-1, 28, 28)) if own_input is None else \
        TensorSpec(np.dtype(np.float32), (-1, *own_input))
    return ModelSignature(inputs=Schema([inputs]), outputs=Schema(outputs))


def model_run(client: Any, run_id: str, named: str = "") -> str:
    """`run_id` if it is a run of the store with a logged model; PredictError otherwise.
    `named`: how the message names the run (default: --model's run id)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PredictError(f"--model: no run '{run_id}' in {client.tracking_uri}") from None
    named = named or f"--model: run '{run_id}'"
    if not [a for a in client.list_artifacts(run.info.run_id) if a.path == "model"]:
        why = run.data.tags.get("model") or "diverged, pruned or interrupted?"
        raise PredictError(f"{named} has no logged model ({why}); a sweep's `models:` says "
                           "which runs keep theirs")
    return run.info.run_id


def predict(client: Any, run_id: str, digits: np.ndarray, paths: list[str]) -> Any:
    """The run's model on 28x28 uint8 digits (the image files as MNIST-style digits): a
    frame of digit, probability, p0..p9. A task with its own data gets the files' pixels
    through its `to_input` instead: the digit column is then the class.

    The model is fetched through `client` (not a global tracking URI), so it comes from
    the store this process uses.
    """
    import mlflow.pyfunc

    from experiments.core.digits import read_pixels

    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, "model", tmp)
        model = mlflow.pyfunc.load_model(local)
        if (model.model_config or {}).get("own_data"):
            return model.unwrap_python_model().predict(None, [read_pixels(p) for p in paths])
        return model.predict(digits)
