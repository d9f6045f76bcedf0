"""W&B's own sweep engine (the `sweeps` package), imported in one place.

Its import warns (pydantic's renamed config keys) and changes the process's warning
filters (its bayes module silences sklearn's ConvergenceWarning for everyone): every part
of it is imported here, on first use, inside catch_warnings, which undoes both. Only what
is asked for is imported: `sweeps.config` is light enough for validation, `sweeps.params`
brings SciPy and `sweeps.bayes_search` scikit-learn.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType


def part(name: str) -> ModuleType:
    """`sweeps` or one of its modules ("sweeps.params", ...), imported quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)
