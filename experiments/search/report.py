"""`runner.py compare`: the ablation's verdict, the top runs as a table, what the seeds'
noise can say, and the CSV/Parquet files asked for (the frames come from compare.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from experiments.runtime.paths import writable_ancestor
from experiments.search import noise
from experiments.search.compare import (
    CompareError,
    ablation,
    experiment_id_of,
    experiment_name,
    history,
    runs,
    sweep_metric,
    sweep_of,
    trial_runs_of,
)
from experiments.search.runs.parent import parents


def _check_output(option: str, path: str) -> None:
    """Before any work: a path ending .csv/.parquet that is not a folder and can be made."""
    if not path.endswith((".csv", ".parquet")):
        raise CompareError(f"{option}: expected a path ending in .csv or .parquet, got {path}")
    try:
        if Path(path).is_dir():
            raise IsADirectoryError(21, "is a folder")
        writable_ancestor(Path(path))
    except OSError as exc:
        raise CompareError(f"{option}: cannot write {path} ({exc.strerror or exc})") from None


def write(frame: pd.DataFrame, path: str) -> None:
    """CSV, or Parquet when the name ends in .parquet; written whole or not at all."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        if target.suffix == ".parquet":
            frame.to_parquet(partial, index=False)
        else:
            frame.to_csv(partial, index=False)
        partial.replace(target)
    except OSError as exc:
        raise CompareError(f"cannot write {path} ({exc.strerror or exc})") from None


def report(target: str, client: Any, top: int, csv: str | None = None,
           history_path: str | None = None) -> str:
    """`runner.py compare`: the top runs as a table, and the CSV/Parquet files asked for."""
    for option, path in (("--csv", csv), ("--history", history_path)):
        if path:
            _check_output(option, path)
    frame = runs(target, client)
    name, sweep = experiment_name(target), sweep_of(target)
    metric, ascending = sweep_metric(name, client, sweep)
    shown = [c for c in ("trial", "state", "grad_mode", "repeat") if c in frame]
    if "pareto" in frame and frame["pareto"].any():
        shown.append("pareto")
    shown += [c for c in frame.columns if c in ("epochs", "batch_size", "learning_rate")]
    shown += [c for c in (f"final_{metric}", "best_epoch", f"best_{metric}") if c in frame]
    if "diverged" in frame and frame["diverged"].any():
        shown.append("diverged")
    shown += [c for c in ("duration_s", "run_id") if c in frame]
    # The ablation's answer first: its diverged runs sort last and may be off the table.
    lines = ablation(frame, metric)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        lines += [frame[shown].head(top).to_string(index=False) if len(frame) else
                  f"no runs in experiment '{name}'"]
    configs = noise.per_config(frame, metric, ascending) if len(frame) else None
    if configs is not None and len(configs) and configs["seeds"].max() > 1:
        lines.append(noise.configs_text(configs, frame, metric, top))
    multi = any("metrics" in p.data.params for p in parents(client, experiment_id_of(client, name),
                                                                 sweep))
    if configs is not None and len(configs) > 1 and not multi:
        lines.append(noise.verdict(frame, configs, metric, ascending))
    elif configs is not None and len(configs) > 1:
        lines.append("noise: a trade-off has no one best configuration to test; its answer "
                     "is the Pareto front (the pareto column)")
    if csv:
        write(frame, csv)
        lines.append(f"wrote {len(frame)} runs to {csv}")
    if history_path:
        hist = history(name, client, trial_runs_of(client, name, sweep))
        write(hist, history_path)
        lines.append(f"wrote {len(hist)} points to {history_path}")
    return "\n".join(lines)
