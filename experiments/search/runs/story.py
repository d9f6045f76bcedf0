"""What the parent run says while its sweep runs, updated after every counted trial.

Metrics (step = trials counted): `best_<metric>`, `trials_complete`, `trials_pruned`,
`trials_failed`, `trials_running`. Tags: `best_trial`, `best_value`, `best_run_id`,
`best.<key>`, kept current. Its description (`mlflow.note.content`, Markdown on the run
page): the sweep's question, the budget used, the top trials with links to their runs,
and the paired ablation where there is one. Optuna's plots are redrawn at most every
PLOTS_EVERY_S seconds while it runs, and at the end.

Every update is computed whole from the study, the source of truth, and written in one
batch: a crash leaves the parent as it was after the previous update, and the next one
(or the end of the sweep) brings it up to date. Workers on one host take turns through a
lock file; on several hosts the last writer wins, with a state as current as its own.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search.spec.metrics import describe as describe_metrics
from experiments.search.spec.metrics import pareto
from experiments.search.spec.space import shown, values_of
from experiments.search.spec.sweepfile import SweepSpec
from experiments.search.trials import ablation
from experiments.search.trials.budget import Budget, ranked
from experiments.tracking.mlflow_run import MlflowRun
from experiments.tracking.store import MLRUNS

# Drawing Optuna's plots costs ~0.8 s (measured on 2 cores): every 10 trials, as before,
# it took 3.1 of the main job's 15 s, with a first drawing at its first trial. By time
# alone, and counted from the parent run's start, a short sweep draws once, at the end,
# and a long one at most 1% of its time.
PLOTS_EVERY_S = 90.0
TOP = 5
# MLflow cuts a longer tag value with a warning at every update; the space and the file's
# description are clipped first, so the answer and the table always fit.
NOTE_MAX = 8000


_held: set[str] = set()  # parent runs whose turn this process holds


@contextmanager
def turn(parent_run_id: str) -> Iterator[None]:
    """One writer of the parent run at a time on this host (the lock file lives beside the
    local store): its updates, and the end of the sweep, which two identical commands
    reach together. Reentrant within a process."""
    if parent_run_id in _held:
        yield
        return
    try:
        MLRUNS.mkdir(exist_ok=True)
        handle = open(MLRUNS / f".parent-{parent_run_id}.lock", "w")  # noqa: SIM115
    except OSError:  # a read-only folder: go on without taking turns
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _held.add(parent_run_id)
        try:
            yield
        finally:
            _held.discard(parent_run_id)
            fcntl.flock(handle, fcntl.LOCK_UN)


def update(client: Any, parent_run_id: str, study: optuna.Study, spec: SweepSpec,
           budget: Budget, plots: bool | None = None) -> None:
    """Bring the parent run up to date; `plots` forces (True) or skips (False) redrawing
    Optuna's plots, which by default happens PLOTS_EVERY_S after the last drawing."""
    from mlflow.entities import Metric, RunTag

    with turn(parent_run_id):
        trials = study.get_trials(deepcopy=False)
        counted = budget.counted(trials)
        step, now = len(counted), int(time.time() * 1000)
        counts = _counts(trials, counted)
        metrics = [Metric(f"trials_{k}", v, now, step) for k, v in counts.items()]
        tags = {}
        ranking = ranked(trials, spec)
        if ranking and spec.multi:
            front = pareto(trials, spec.metrics)
            metrics.append(Metric("pareto_trials", len(front), now, step))
            tags["pareto_trials"] = ",".join(str(t.number) for t in front)[:5000]
        elif ranking:
            best = ranking[0]  # as study.best_trial: the first of equals (a stable sort)
            metrics.append(Metric(f"best_{spec.metric}", best.value, now, step))
            tags |= {"best_trial": str(best.number), "best_value": str(best.value),
                     "best_run_id": best.user_attrs.get("mlflow_run_id", ""),
                     **{f"best.{k}": str(v) for k, v in values_of(best).items()}}
        run = client.get_run(parent_run_id)
        tags["mlflow.note.content"] = describe(spec, run.info.experiment_id, trials, counts,
                                               step, budget.limit)
        last = run.data.tags
        drawn = float(last.get("plots.time", run.info.start_time / 1000))
        due = time.time() - drawn >= PLOTS_EVERY_S
        draw = plots if plots is not None else due and step > 0
        if draw:
            tags |= {"plots.counted": str(step), "plots.time": str(time.time())}
        client.log_batch(parent_run_id, metrics=metrics,
                         tags=[RunTag(k, v) for k, v in tags.items()])
        if draw:
            _plots(client, parent_run_id, study)


def _counts(trials: list[FrozenTrial], counted: list[FrozenTrial]) -> dict[str, int]:
    return {"complete": sum(t.state == TrialState.COMPLETE for t in counted),
            "pruned": sum(t.state == TrialState.PRUNED for t in counted),
            "failed": sum(t.state == TrialState.FAIL for t in counted),
            "running": sum(t.state == TrialState.RUNNING for t in trials)}


def _plots(client: Any, parent_run_id: str, study: optuna.Study) -> None:
    for name, figure in optuna_figures(study):
        MlflowRun(client, parent_run_id).log_figure(figure, f"plots/{name}.png")


def describe(spec: SweepSpec, experiment_id: str, trials: list[FrozenTrial],
             counts: dict[str, int], step: int, limit: int) -> str:
    """The parent run's description, in Markdown. The UI folds it after about three
    lines, so those say the answer so far and the budget; the details follow."""
    space = _clip("; ".join(f"{p.key} {_clip(p.describe(), 200)}" for p in spec.parameters),
                  1500)
    top = ranked(trials, spec)[:TOP]
    keys = [p.key for p in spec.parameters]
    lines = [f"### Sweep `{spec.name}`: {describe_metrics(spec.metrics)}", ""]
    verdict = ablation.lines(trials, spec)
    if verdict:  # the ablation's answer first: the UI folds all but the first lines
        lines += [f"**{verdict[0].rstrip(':')}:**  ", *(f"{v.strip()}  " for v in verdict[1:]),
                  ""]
    front = {t.number for t in pareto(trials, spec.metrics)} if spec.multi else set()
    if top and spec.multi:
        lines += [f"**Pareto front so far: {len(front)} trial(s)** (no trial is better in "
                  "every metric; the table marks them).", ""]
    elif top:
        best = top[0]
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in values_of(best).items())
        lines += [f"**Best so far: {spec.metric} {best.value:.4f}**, trial {best.number} "
                  f"({values}), run {_run_link(best, experiment_id)}.", ""]
    lines += [f"**{step} of {limit} trials counted** ({counts['complete']} complete, "
              f"{counts['pruned']} pruned, {counts['failed']} failed; {counts['running']} "
              f"running). Updated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.",
              ""]
    said = dict(spec.recorded).get("description")  # the file's own words (W&B's key)
    if said:
        lines += [_clip(str(said), 2000), ""]
    lines += [f"Searching {space} with {spec.method}, pruner {spec.pruner}.", ""]
    if top:
        names = " | ".join(name for name, _ in spec.metrics)
        lines += [f"| rank | trial | {names} | {' | '.join(keys)} | run |",
                  "|" + "---|" * (len(keys) + len(spec.metrics) + 3)]
        for rank, t in enumerate(top, start=1):
            values = values_of(t)
            cells = " | ".join(_fmt(values.get(k, "-")) for k in keys)
            scores = " | ".join(f"{v:.4f}" for v in t.values)
            std = t.user_attrs.get(f"{spec.metric}.std")
            if not spec.multi and std is not None and std == std:  # mean ± std over seeds
                scores += f" ± {std:.4f}"
            mark = " (Pareto)" if t.number in front else ""
            lines.append(f"| {rank} | {t.number}{mark} | {scores} | {cells} | "
                         f"{_run_link(t, experiment_id)} |")
        lines.append("")
    return _clip("\n".join(lines), NOTE_MAX)


def _run_link(t: FrozenTrial, experiment_id: str) -> str:
    """The trial's objective run, by the name the objective gave it, linked to its page."""
    run_id = t.user_attrs.get("mlflow_run_id", "")
    if not run_id:
        return "-"
    mode = next((k.removeprefix("run_id.") for k, v in t.user_attrs.items()
                 if k.startswith("run_id.") and v == run_id), "run")
    return f"[trial-{t.number}-{mode}](#/experiments/{experiment_id}/runs/{run_id})"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fmt(v: Any) -> str:
    return _clip(shown(v), 60)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def optuna_figures(study: Any) -> list[tuple[str, Any]]:
    """Optuna's own plots that the study can draw so far (importances need 2+ trials)."""
    import warnings

    from optuna.visualization import matplotlib as ovm

    plt = _pyplot()
    makers = {"optimization_history": ovm.plot_optimization_history,
              "param_importances": ovm.plot_param_importances,
              "parallel_coordinate": ovm.plot_parallel_coordinate,
              "slice": ovm.plot_slice}
    if len(study.directions) > 1:  # the others need one target value to plot
        makers = {"pareto_front": ovm.plot_pareto_front}
    elif len({k for t in study.get_trials(deepcopy=False) for k in t.params}) < 2:
        # One parameter has all the importance: a single 100% bar, for 0.4 s of importing
        # scikit-learn (fANOVA) and fitting its forest (measured on the main job).
        del makers["param_importances"]
    out = []
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = make(study)
            except Exception:  # a plot the study cannot support yet (too few trials) is skipped
                plt.close("all")
                continue
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            figure = first.figure
            figure.set_size_inches(9, 5)
            # Optuna's plots are experimental (ExperimentalWarning on every call), and the
            # colour bar of the parallel-coordinate plot makes tight_layout warn that it
            # may be imperfect; neither says anything about the sweep, so neither is shown.
            figure.tight_layout()
        out.append((name, figure))
    return out

