"""Runs of a sweep (or any experiment) as pandas DataFrames, from any folder.

`runs()` is one row per trial run with typed params, each run's result in words, and
final and best-epoch metrics; `history()` is every per-epoch point in long form with the
swept params, fetched in bulk (one request per metric per 100 runs, not one per run per
metric); `paired()` puts the grad modes of one trial side by side with their differences
and `ablation()` says the verdict. Each takes a client or `store=` (a project folder, its
mlruns/, an mlflow.db or a URI). `runner.py compare` is report.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.core import config as cfg
from experiments.core import verdict
from experiments.search import noise
from experiments.search.runs.parent import PARENT_TAG, parents
from experiments.search.spec.sweepfile import load
from experiments.tracking.store import metric_history_bulk

EPOCH_METRICS = ("train_loss", "test_loss", "test_accuracy", "grad_cosine", "grad_norm_ratio",
                 "epoch_time_s", "train_time_s")
MAX_STEPS = 10_000


class CompareError(cfg.UserError):
    """Nothing to compare; the message names what was looked for."""


def experiment_name(target: str) -> str:
    """A sweep file's experiment, or the argument itself as an experiment name."""
    if target.endswith((".yaml", ".yml", ".json")):
        return load(target).experiment
    return target


def sweep_of(target: str) -> str | None:
    """The sweep a sweep file names (its runs only, when several share a W&B `project`)."""
    return load(target).name if target.endswith((".yaml", ".yml", ".json")) else None


def sweep_metric(name: str, client: Any, sweep: str | None = None) -> tuple[str, bool]:
    """(metric, ascending) from the sweep's parent run, test_accuracy descending otherwise."""
    found = parents(client, experiment_id_of(client, name), sweep)
    if found:
        params = found[0].data.params
        return params.get("metric", "test_accuracy"), params.get("goal") == "minimize"
    return "test_accuracy", False


def experiment_id_of(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise CompareError(f"no MLflow experiment named '{name}' in {client.tracking_uri}")
    return exp.experiment_id


def _typed(key: str, value: str) -> Any:
    if cfg.known(key):
        try:
            return cfg.coerce(key, value)
        except cfg.ConfigError:
            return value
    return value


def trial_runs_of(client: Any, name: str, sweep: str | None = None) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id_of(client, name)], max_results=1000,
                                  page_token=token)
        # A tag filter with != skips runs without the tag, so parents are dropped here; and
        # replays, which check a run's bits and are no result of their own (a replay in a
        # sweep's experiment doubled a learning rate in its comparison).
        out += [r for r in page if r.data.tags.get(PARENT_TAG) != "true"
                and "replay_of" not in r.data.tags
                and (sweep is None or r.data.tags.get("sweep") == sweep)]
        token = page.token
        if not token:
            return out


def _client(client: Any, store: str | Path | None) -> Any:
    """The client given, or one on `store` (a project folder, mlruns/, mlflow.db or a
    URI), or on the store of the folder this runs in."""
    from experiments.tracking.lookup import client_for
    from experiments.tracking.store import client as local

    return client if client is not None else client_for(store) if store is not None \
        else local(create=False)


def history(target: str, client: Any = None, found: list | None = None, *,
            store: str | Path | None = None) -> pd.DataFrame:
    """Long form: run_id, trial, grad_mode, the swept params, epoch, metric, value; ready
    to plot the top trials' curves without a merge."""
    client = _client(client, store)
    found = found if found is not None else trial_runs_of(client, experiment_name(target),
                                                    sweep_of(target))
    meta = {r.info.run_id: {**r.data.tags, "grad_mode": _grad_mode(r)} for r in found}
    swept = _swept(found)
    ids = list(meta)
    rows = [(m.run_id, m.step, key, m.value) for key in EPOCH_METRICS
            for m in metric_history_bulk(client, ids, key, MAX_STEPS)]
    frame = pd.DataFrame(rows, columns=["run_id", "epoch", "metric", "value"]).astype(
        {"epoch": "int64", "value": "float64"})
    frame["trial"] = frame["run_id"].map(lambda i: _trial(meta[i])).astype("Int64")
    frame["grad_mode"] = frame["run_id"].map(lambda i: meta[i]["grad_mode"])
    params = {r.info.run_id: r.data.params for r in found}
    for key in swept:
        frame[key] = frame["run_id"].map(lambda i, k=key: _typed(k, params[i].get(k, "")))
    frame = frame[["run_id", "trial", "grad_mode", *swept, "epoch", "metric", "value"]]
    return frame.sort_values(["trial", "grad_mode", "metric", "epoch"]).reset_index(drop=True)


def _swept(found: list) -> list[str]:
    """The config keys whose value differs between the runs (those the sweep searched),
    grad_mode aside (a column of its own)."""
    values: dict[str, set] = {}
    for r in found:
        for k, v in r.data.params.items():
            if cfg.known(k) and k != "grad_mode":
                values.setdefault(k, set()).add(v)
    return sorted(k for k, seen in values.items() if len(seen) > 1)


def _grad_mode(run: Any) -> str:
    """A sweep's runs are tagged with their mode; `runner.py train` records it as a param."""
    return run.data.tags.get("grad_mode") or run.data.params.get("grad_mode", "")


def _trial(tags: dict) -> int | None:
    value = tags.get("trial")
    return int(value) if value is not None and value.isdigit() else None


def runs(target: str, client: Any = None, *, store: str | Path | None = None) -> pd.DataFrame:
    """One row per run: trial, state, result, grad_mode, params (typed), final and
    best-epoch metrics. `final_*` is the last epoch's: a pruned trial's `result` says
    "pruned after epoch k", a complete one's "complete"."""
    client = _client(client, store)
    name, sweep = experiment_name(target), sweep_of(target)
    metric, ascending = sweep_metric(name, client, sweep)
    found = trial_runs_of(client, name, sweep)
    if not found:
        return pd.DataFrame(columns=["trial", "state", "grad_mode", "fail_kind", "run_id"])
    hist = history(name, client, found)
    best = _best_epochs(hist, metric, ascending)
    rows = []
    for r in found:
        tags, info = r.data.tags, r.info
        row = {"sweep": tags.get("sweep", ""), "trial": _trial(tags),
               "state": tags.get("state", info.status), "result": tags.get("result", ""),
               "status": info.status, "role": tags.get("role", ""),
               # Runs of a trial that crashed or was interrupted: not a result of the sweep.
               "fail_kind": tags.get("fail_kind", ""),
               "diverged": tags.get("outcome") == "diverged",
               "diverged_at": (f"epoch {tags['diverged_epoch']}, step {tags['diverged_step']}"
                               if "diverged_epoch" in tags else ""),
               "same_bits_as": tags.get("same_bits_as", ""),
               "repeat": int(tags.get("repeat", "0")), "pareto": tags.get("pareto") == "true"}
        row |= {k: _typed(k, v) for k, v in sorted(r.data.params.items())}
        row["grad_mode"] = _grad_mode(r)
        row |= {f"final_{k}": r.data.metrics.get(k, np.nan) for k in EPOCH_METRICS}
        row |= best.get(info.run_id, {})
        end = info.end_time or info.start_time
        row |= {"duration_s": (end - info.start_time) / 1000, "run_id": info.run_id,
                "run_name": info.run_name}
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["trial"] = frame["trial"].astype("Int64")
    # Each run carries its configuration's mean ± std over the seeds (NaN std: one seed).
    configs = noise.per_config(frame, metric, ascending)
    frame = frame.merge(configs, on=["sweep", "trial"], how="left")
    frame["seeds"] = frame["seeds"].astype("Int64")
    return frame.sort_values(f"final_{metric}", ascending=ascending,
                             na_position="last").reset_index(drop=True)


def _best_epochs(hist: pd.DataFrame, metric: str, ascending: bool) -> dict[str, dict]:
    """Per run: the epoch where the sweep metric was best, and every metric at that epoch."""
    out: dict[str, dict] = {}
    if hist.empty:
        return out
    wide = hist.pivot_table(index=["run_id", "epoch"], columns="metric", values="value")
    for run_id, frame in wide.groupby(level=0):
        if metric not in frame or frame[metric].isna().all():
            continue
        pos = frame[metric].idxmin() if ascending else frame[metric].idxmax()
        out[run_id] = {"best_epoch": int(pos[1]),
                       **{f"best_{k}": frame.loc[pos, k] for k in frame.columns}}
    return out


def paired(frame: pd.DataFrame, metrics: tuple[str, ...] = ("final_test_accuracy",
                                                              "final_test_loss",
                                                              "final_train_loss")) -> pd.DataFrame:
    """One row per trial (per trial and repeat, with `repeats`: modes pair by seed), a
    column per (metric, grad mode) and each mode's difference to the trial's objective
    mode (the first listed in the ablation). Trials that crashed or were interrupted are
    left out: their variants did not all train, so nothing pairs."""
    frame = frame[frame["trial"].notna() & (frame["fail_kind"] == "")]
    if frame.empty:
        return pd.DataFrame({"trial": pd.Series([], dtype="Int64")})
    objective = frame.loc[frame["role"] == "objective", "grad_mode"]
    base = objective.iloc[0] if len(objective) else frame["grad_mode"].iloc[0]
    index = ["trial", "repeat"] if "repeat" in frame and (frame["repeat"] > 0).any() \
        else "trial"
    wide = frame.pivot_table(index=index, columns="grad_mode", values=list(metrics),
                             aggfunc="first", dropna=False)
    out = pd.DataFrame(index=wide.index)
    for metric in metrics:
        for mode in wide[metric].columns:
            out[f"{metric}[{mode}]"] = wide[metric][mode]
        for mode in wide[metric].columns:
            if mode != base:
                out[f"{metric}[{mode} - {base}]"] = wide[metric][mode] - wide[metric][base]
    diverged = frame.pivot_table(index=index, columns="grad_mode", values="diverged",
                                 aggfunc="first")
    for mode in diverged.columns:
        # A mode that did not run in a trial has no answer, not False (and not NaN -> True).
        out[f"diverged[{mode}]"] = diverged[mode].astype("boolean")
    out = out.reset_index()
    out.attrs["verdict"] = "\n".join(ablation(frame, metrics[0].removeprefix("final_")))
    return out


def modes_of(frame: pd.DataFrame) -> tuple[str, ...]:
    """The grad modes of an ablation, the objective's first; () without one."""
    if frame.empty or "grad_mode" not in frame or frame["grad_mode"].nunique() < 2:
        return ()
    objective = frame.loc[frame["role"] == "objective", "grad_mode"]
    base = objective.iloc[0] if len(objective) else frame["grad_mode"].iloc[0]
    return (base, *sorted(m for m in frame["grad_mode"].unique() if m != base))


def ablation(frame: pd.DataFrame, metric: str = "test_accuracy") -> list[str]:
    """The ablation's verdict (core/verdict.py) from `runs()`: per grad mode, trials,
    diverged k of n and where, mean metric, the paired difference to the objective's mode
    and its noise verdict, or "identical to the bit". The first seed of each trial; runs
    cut short by a crash or Ctrl-C are no result."""
    modes = modes_of(frame)
    if not modes or f"final_{metric}" not in frame:
        return []
    ok = frame[frame["trial"].notna() & (frame["fail_kind"] == "")
               & (frame.get("repeat", 0) == 0) & (frame["role"] != "")]
    results = [verdict.ModeResult(
        trial=int(row["trial"]), mode=row["grad_mode"], diverged=row.get("diverged_at") or (
            "a non-finite loss" if row.get("diverged") else ""),
        value=None if row.get("diverged") or pd.isna(row[f"final_{metric}"])
        else float(row[f"final_{metric}"]),
        identical=row.get("same_bits_as") == modes[0]) for _, row in ok.iterrows()]
    return verdict.lines(results, modes, metric)
