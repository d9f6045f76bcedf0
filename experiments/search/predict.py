"""`runner.py predict`: a logged model on image files, by run id or a sweep's best."""

from __future__ import annotations

from typing import Any

from experiments.core.digits import PredictError, as_digits


def predict_files(model: str, paths: list[str]) -> Any:
    """The model of run `model` (or `best:SWEEP.yaml`) on image files: a frame of digit,
    probability and p0..p9, one row per file, in order."""
    digits = as_digits(paths)  # unreadable files are refused before any heavy import
    from experiments.search.runs import parent
    from experiments.search.spec.sweepfile import load
    from experiments.tracking import models
    from experiments.tracking.store import client as make_client

    client = make_client(create=False)
    if model.startswith("best:"):
        spec = load(model[len("best:"):])
        if spec.multi:
            raise PredictError(f"--model {model}: sweep '{spec.name}' is a trade-off with no "
                               "one best trial; give the run id of a trial on its Pareto "
                               "front (runs tagged pareto=true)")
        run_id = parent.best_run_id(client, spec)
        if not run_id:
            raise PredictError(f"--model {model}: sweep '{spec.name}' has no finished best "
                               "trial yet")
        run_id = models.model_run(client, run_id, f"--model {model}: the best trial's run "
                                                  f"'{run_id}'")
    else:
        run_id = models.model_run(client, model)
    return models.predict(client, run_id, digits, paths)
