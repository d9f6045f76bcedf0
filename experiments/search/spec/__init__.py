"""What was asked: a sweep file (W&B's sweep YAML with this runner's keys beside it) and
the command's flags, read and checked whole before anything heavy is imported. Imports
neither Optuna nor MLflow: a bad file or flag costs nothing and writes nothing.

W&B's own engine (the `sweeps` package) decides what W&B decides: wandb_schema (its
schema's verdict), space (its laws and grid points), hyperband (its bands).

Read bottom-up: reader (one line per mistake) < wandb_schema, space, parameters (the
laws), metrics, hyperband, pruners, warm_start, models_kept < sweepfile (the whole file)
< differences (where W&B would do otherwise) < options (the flags).
"""

from experiments.search.spec.options import (
    SweepIncomplete,
    SweepOptions,
    check_proxy,
    check_storage,
    parse_workers,
)
from experiments.search.spec.reader import SweepError
from experiments.search.spec.sweepfile import SweepSpec, load

__all__ = ["SweepError", "SweepIncomplete", "SweepOptions", "SweepSpec", "check_proxy",
           "check_storage", "load", "parse_workers"]
