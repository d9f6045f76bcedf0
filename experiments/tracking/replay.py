"""`runner.py replay RUN_ID`: train a recorded run again from what it recorded, and prove
"same seed, same bits".

The run's own `config.yaml` (seed and grad mode included) is the config, built with the
project's validation. Everything is checked before anything is written: the run must be a
training, and the MindSpore and NumPy versions and the data must be the ones it recorded
(`--force` replays anyway and records each difference on the new run). The replay is a new
run in the original's experiment, and every metric both runs recorded is compared as read
back from the store, so both sides went through the same float round trip.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.core import config as cfg
from experiments.core import devices
from experiments.core.config import Config, UserError, one_line
from experiments.runtime import interrupts, kernels
from experiments.tracking.bits import (
    AGGREGATE_SUFFIXES,
    TIMING_SUFFIX,
    Check,
    compare,
    history,
    per_epoch,
)
from experiments.tracking.mlflow_run import MlflowRun
from experiments.tracking.reuse import DIGEST_TAG, config_digest

# What changes the bits without changing the config.
CHECKED_VERSIONS = ("mindspore", "numpy")


class ReplayRefused(UserError):
    """The run cannot be replayed here (unknown, not a training, trained elsewhere)."""


@dataclass(frozen=True)
class Difference:
    """Something the run was trained with that is not what is here."""

    name: str
    recorded: str | None  # None: the run did not record it
    here: str

    def __str__(self) -> str:
        was = "not recorded" if self.recorded is None else f"{self.recorded} (recorded)"
        return f"{self.name}: {was} -> {self.here} (here)"


@dataclass(frozen=True)
class Report:
    original_id: str
    run_id: str
    experiment: str
    span: str  # what was compared: "over 3 epochs", "up to the divergence at epoch 1, step 5"
    checks: list[Check]
    notes: list[str]

    @property
    def identical(self) -> bool:
        return not any(c.differs for c in self.checks)

    def text(self) -> str:
        lines = [f"{c.label}  DIFFERS  " + "; ".join(c.differs) if c.differs else
                 f"{c.label}  identical  " + " ".join(f"{k}={v}" for k, v in c.shown.items())
                 for c in self.checks]
        values = sum(c.values for c in self.checks)
        verdict = ("bit-identical" if self.identical else
                   "DIFFERS at " + ", ".join(c.label for c in self.checks if c.differs))
        lines += self.notes
        lines.append(f"replay of {self.original_id}: {verdict} {self.span} ({values} values) "
                     f"-> run {self.run_id} in experiment '{self.experiment}'")
        return "\n".join(one_line(line) for line in lines)


def replay(run_id: str, force: bool, say: Callable[[str], None],
           progress: Callable[[int], Any] | None = None) -> Report:
    """Replay run `run_id` into a new run and compare the two; ReplayRefused (nothing
    written) when it cannot be replayed. `progress(epochs)` gives epoch callbacks."""
    from experiments.core import task as tasks
    from experiments.core import task_checks as checks
    from experiments.core.data import load
    from experiments.core.hooks import Callbacks, compose
    from experiments.core.train import Prepared, trainer_for
    from experiments.tracking.tracked_fit import (
        CORES_TAG,
        ISA_TAG,
        TrackContext,
        tracked_fit,
    )

    c = _client()
    original, experiment = _training_run(c, run_id)
    config, missing = _recorded_config(c, original)
    devices.check(config.device, [config.device_id])
    epochs = _epochs_to_train(c, original, config)
    # The run's cores and vector ISA, before any kernel runs: a task file may run one as
    # it is read or loads its data, and the replay then differed (review, reproduced).
    cores = kernels.hold_cores(original.data.tags.get(CORES_TAG, ""))
    isa = kernels.hold_to(original.data.tags.get(ISA_TAG, ""))
    # What loading says (the offline sample, a failed download) is said only once the
    # replay goes ahead: a refusal is its one line.
    said: list[str] = []
    config, file = _task(config, original.data.tags)
    differences = missing + _environment(original.data.tags, file)
    if not (differences and not force):  # a changed task file is not even imported
        task = tasks.load(file)
        data = checks.own_data(task, config) or load(config.data.path, config.data.download,
                                                    said.append)
        differences += _data(original.data.tags, data.digest)
    if differences and not force:
        raise ReplayRefused(f"run {run_id} was not trained with what is here: "
                            + "; ".join(map(str, differences))
                            + "; pass --force to replay anyway")
    for message in said:
        say(message)
    interrupts.check()  # a Ctrl-C during the checks ends here, before any write
    interrupts.waiting_for("the replay to stop at its next step and close its run as KILLED")
    tags = {"replay_of": run_id, "grad_mode": config.grad_mode,
            **{f"replay.diff.{d.name}": f"{d.recorded or '(not recorded)'} -> {d.here}"
               for d in differences}}
    prepared = Prepared.of(data)
    if file.name not in cfg.BUILT_IN_TASKS:
        task = checks.check(task, config, prepared.test_x, checks.classes_of(data))
    ctx = TrackContext(client=c, data=data, prepared=prepared, experiment=experiment,
                       task=task)
    # The interrupt check is the replay's own: a Ctrl-C between steps closes the run KILLED.
    steps = Callbacks(on_step=lambda epoch, step: interrupts.check())
    config = dataclasses.replace(config, epochs=epochs)
    outcome = tracked_fit(
        ctx, config, trainer_for(config, task),
        f"replay-{original.info.run_name}", tags=tags,
        callbacks=compose(steps, progress(epochs) if progress else None),
        # A diverged run ends as its original did (a sweep's ablation variant FINISHED).
        diverged_status="FAILED" if original.info.status == "KILLED" else original.info.status)
    checks = compare(c, original, c.get_run(outcome.run_id))
    recorded = original.data.tags
    span = (f"up to the divergence at epoch {recorded['diverged_epoch']}, step "
            f"{recorded.get('diverged_step', '?')}" if "diverged_epoch" in recorded else
            f"over {epochs} epoch{'s' * (epochs != 1)}")
    report = Report(run_id, outcome.run_id, experiment, span, checks,
                    _notes(original, config, epochs, differences) + [n for n in (cores, isa) if n])
    MlflowRun(c, outcome.run_id).set_tags({"replay.identical": str(report.identical).lower()})
    return report


def _client() -> Any:
    """The store to replay from, read-only; one line when it cannot be opened (exit 2:
    exit 1 says a replay differs)."""
    from experiments.runtime.infra import what_broke
    from experiments.tracking.store import NoStore, client, tracking_uri

    try:
        return client(create=False)
    except NoStore:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ReplayRefused(f"cannot open the MLflow store {tracking_uri()}: "
                            f"{what_broke(exc) or type(exc).__name__ + ': ' + first}") from None


def _training_run(c: Any, run_id: str) -> tuple[Any, str]:
    """The run and its experiment's name, if it is a training that ended."""
    from mlflow.exceptions import MlflowException

    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ReplayRefused(f"no run {run_id!r} in the tracking store") from None
    name, tags = f"run {run_id} ({run.info.run_name})", run.data.tags
    if tags.get("sweep.parent") == "true":
        raise ReplayRefused(f"{name} is the parent run of sweep '{tags.get('sweep', '')}', "
                            "not a training: replay one of its trial runs")
    if run.info.status not in ("FINISHED", "FAILED", "KILLED"):
        raise ReplayRefused(f"{name} is {run.info.status}: it is still training, or its "
                            "process died before closing it; replay a run that ended")
    experiment = c.get_experiment(run.info.experiment_id)
    if run.info.lifecycle_stage == "deleted" or experiment.lifecycle_stage == "deleted":
        raise ReplayRefused(f"{name} or its experiment is deleted; restore it to replay it")
    if "config.yaml" not in {a.path for a in c.list_artifacts(run_id)}:
        raise ReplayRefused(f"{name} has no config.yaml artifact: not a training run of "
                            "this runner")
    return run, experiment.name


def _recorded_config(c: Any, run: Any) -> tuple[Config, list[Difference]]:
    """The run's config.yaml as a checked Config, and the keys it did not record (each
    then takes today's default, a difference like any other)."""
    from experiments.core import yamlfile

    with tempfile.TemporaryDirectory(prefix="replay-") as tmp:
        text = Path(c.download_artifacts(run.info.run_id, "config.yaml", tmp)).read_text()
    try:
        recorded = yamlfile.load(text)
        if not isinstance(recorded, dict):
            raise UserError("not a mapping")
        flat: dict[str, Any] = {}
        for key, value in recorded.items():  # nested sections (data:) become dotted keys
            flat |= {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) \
                else {key: value}
        config = cfg.build(flat)
    except Exception as exc:  # YAML errors and ConfigError alike: the artifact is bad
        raise ReplayRefused(f"run {run.info.run_id}: its config.yaml does not make a config "
                            f"here: {exc}") from None
    values = cfg.flatten(config)
    # The artifact must say what the run's params and config digest say: a config.yaml
    # edited after the run would replay another training and call it non-determinism.
    params = run.data.params
    clash = [f"{k}: {params[k]} (param) vs {values[k]} (config.yaml)" for k in values
             if k in params and params[k] != str(values[k])]
    digest = run.data.tags.get(DIGEST_TAG)
    if not clash and digest and digest != config_digest(config):
        clash = [f"config_digest: {digest} (tag) vs {config_digest(config)} (config.yaml)"]
    if clash:
        raise ReplayRefused(f"run {run.info.run_id}: its config.yaml does not match what the "
                            f"run recorded: {'; '.join(clash)}")
    # Where a run was trained is not recorded before devices were: those ran on CPU.
    missing = [Difference(f"config.{k}", None, str(values[k]))
               for k in cfg.KEYS if k not in flat and k not in cfg.PLACEMENT_KEYS
               and k not in cfg.LATER_KEYS]  # older runs trained with their value
    return config, missing


def _epochs_to_train(c: Any, run: Any, config: Config) -> int:
    """The config's epochs, or the epochs recorded by a run that stopped early (pruned,
    interrupted, crashed): a replay trains what the original trained."""
    tags = run.data.tags
    if "diverged_epoch" in tags:
        return config.epochs  # it diverges again on the way, where the original did
    recorded = {step for k in run.data.metrics if per_epoch(k)
                for step in history(c, run.info.run_id, k)}
    if not recorded:
        raise ReplayRefused(f"run {run.info.run_id} recorded no epoch: nothing to compare")
    stopped = "stop_reason" in tags or run.info.status != "FINISHED"
    return max(recorded) if stopped else config.epochs


def _task(config: Config, tags: dict[str, str]) -> tuple[Config, Any]:
    """The run's task file, where the run found it (a relative path is read from the
    directory the run trained in, which may not be this one), and the config with it."""
    from experiments.core import task as tasks

    if config.task not in cfg.BUILT_IN_TASKS and tags.get("task.path"):
        config = dataclasses.replace(config, task=tags["task.path"])
    file = tasks.locate(config.task)
    return file.complete(config), file


def _data(tags: dict[str, str], digest: str) -> list[Difference]:
    return [] if tags.get("data.digest") == digest else \
        [Difference("data.digest", tags.get("data.digest"), digest)]


def _environment(tags: dict[str, str], task: Any) -> list[Difference]:
    """Each version or task file that is not what the run recorded. A built-in task is
    the runner's code, as the rest of it is: a user's file is compared."""
    from experiments.tracking.store import versions

    here = {f"versions.{p}": versions()[p] for p in CHECKED_VERSIONS}
    if task.name not in cfg.BUILT_IN_TASKS:
        here["task.digest"] = task.digest
    return [Difference(k, tags.get(k), v) for k, v in here.items() if tags.get(k) != v]


def _notes(original: Any, config: Config, epochs: int,
           differences: list[Difference]) -> list[str]:
    """What a reader needs to trust the verdict: what was left out, and why."""
    metrics = sorted(original.data.metrics)
    timings = [k for k in metrics if k.endswith(TIMING_SUFFIX)]
    notes = [f"timings are not compared ({', '.join(timings) or 'none recorded'}): they "
             "differ between any two runs"]
    if aggregates := [k for k in metrics if k.endswith(AGGREGATE_SUFFIXES)]:
        notes.append(f"not compared: {', '.join(aggregates)} (the sweep's mean and std over "
                     "the seeds of this configuration, not this training's)")
    if epochs != config.epochs:
        notes.append(f"the original stopped after epoch {epochs} of {config.epochs} "
                     f"({original.data.tags.get('stop_reason', original.info.status)}); "
                     f"the replay trains {epochs}")
    if original.data.tags.get("task.random") == "true":
        notes.append("the network draws random numbers as it trains (dropout), which "
                     "MindSpore's CPU kernels do not repeat for a seed: differences are "
                     "that noise, not a changed training")
    notes += [f"forced: {d}" for d in differences]
    return notes
