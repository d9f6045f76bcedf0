"""Any number of workers, the answer of one: trial k decides as if trials 0..k-1 were done.

With one worker, trial k is sampled and pruned with the earlier trials finished and no
later one begun. With several, Optuna would show each decision whatever happens to be
finished at that moment, so TPE's draws and the median pruner's cuts would depend on
timing (measured: `sweeps/lr.yaml` with 2 workers pruned trial 3 an epoch later and drew
another trial 11). Here the sampler and the pruner see the study as it was for the
one-worker run: only trials numbered below k, and k itself.

A decision that cannot depend on a trial still running is made at once: a random draw, a
grid point, TPE's first `n_startup_trials` (random by count: fewer trials than that are
below k), and a pruning decision that comes out the same whether each running earlier
trial ends complete (with the value it reported for this epoch) or not. Otherwise the
trial waits for the earlier ones, polling the storage. It stops waiting for a trial whose
worker died (the parent fails it; on other hosts its heartbeats tell, checked every
SWEEP_S) or that its own process left running, and after MAX_WAIT_S, so workers never
deadlock; a trial that waited that long is tagged `ordered=false` and waits no more.
Ctrl-C ends a wait. Warm-start and retried trials are enqueued trials
whose numbers the sweep's history decides, so a sweep with a crash or a retry is the
one-worker sweep only up to it. Optuna's Hyperband (`pruner: {type: hyperband}`) builds
its brackets from the storage itself, and QMC numbers its points in the order they are
drawn: neither is ordered here (W&B's hyperband, early_terminate, is).
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.runtime import interrupts

POLL_S = 0.05
MAX_WAIT_S = float(os.environ.get("RUNNER_ORDER_WAIT_S", "3600"))
MAX_UNDECIDED = 3  # running earlier trials tried both ways (2**3 pruning decisions at most)
SWEEP_S = 10.0  # while waiting, how often trials of dead workers elsewhere are failed
_gave_up: set[int] = set()  # trials that waited MAX_WAIT_S once: they wait no more


@dataclass(frozen=True)
class Judge:
    """What a wait needs to know of the workers (liveness.py, passed in by samplers.py):
    whether a running trial's worker lives, how trials of dead workers elsewhere are
    failed, and how a trial that gave up waiting is marked."""

    alive: Callable[[FrozenTrial], bool]
    sweep: Callable[[optuna.Study], None]
    unordered: Callable[[optuna.Study, FrozenTrial], None]


class Before:
    """The study as trial `number` saw it in a one-worker run: trials numbered below it,
    `undecided` (running earlier ones) shown as in `done`, and itself."""

    def __init__(self, study: optuna.Study, number: int,
                 done: dict[int, FrozenTrial] | None = None) -> None:
        self._study, self._number, self._done = study, number, done or {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _view(self, trials: list[FrozenTrial], states: Any) -> list[FrozenTrial]:
        out = []
        for t in trials:
            t = self._done.get(t.number, t)
            if t.number <= self._number and (states is None or t.state in states):
                out.append(t)
        return out

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list[FrozenTrial]:
        return self._view(self._study.get_trials(deepcopy=deepcopy), states)

    def _get_trials(self, deepcopy: bool = True, states: Any = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        # What Optuna's samplers call on a study; answered through the public API.
        return self.get_trials(deepcopy, states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def running_before(study: optuna.Study, number: int, judge: Judge) -> list[FrozenTrial]:
    """Earlier trials still running in a live worker."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number < number and judge.alive(t)]


def _wait(study: optuna.Study, trial: FrozenTrial, ready: Callable[[list[FrozenTrial]], Any],
          judge: Judge) -> Any:
    """Poll until `ready(running earlier trials)` answers (not None). Past MAX_WAIT_S the
    trial is marked unordered, and it never waits again: None."""
    start = swept = time.monotonic()
    while True:
        answer = ready(running_before(study, trial.number, judge))
        if answer is not None:
            return answer
        if trial.number in _gave_up or time.monotonic() - start > MAX_WAIT_S:
            if trial.number not in _gave_up:
                _gave_up.add(trial.number)
                judge.unordered(study, trial)
            return None
        interrupts.check()  # Ctrl-C ends a wait as it ends training: between steps
        if time.monotonic() - swept > SWEEP_S:
            judge.sweep(study)  # workers on other hosts that died: their trials are failed
            swept = time.monotonic()
        time.sleep(POLL_S)


def wait_for_earlier(study: optuna.Study, trial: FrozenTrial, judge: Judge) -> None:
    """Block until no trial numbered below `trial` is running (see the module's text)."""
    _wait(study, trial, lambda running: True if not running else None, judge)


class OrderedPruner(optuna.pruners.BasePruner):
    """`inner`, deciding for trial k on the trials below k (see the module's text)."""

    def __init__(self, inner: optuna.pruners.BasePruner, judge: Judge) -> None:
        self._inner, self._judge = inner, judge

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        decided = _wait(study, trial, lambda running: self._decided(study, trial, running),
                        self._judge)
        if decided is None:  # waited too long: on what is done
            return self._inner.prune(Before(study, trial.number), trial)
        return decided

    def _decided(self, study: optuna.Study, trial: FrozenTrial,
                 running: list[FrozenTrial]) -> bool | None:
        """The decision if every way the running earlier trials can end gives the same."""
        step = trial.last_step
        if len(running) > MAX_UNDECIDED or any(
                step is not None and step not in t.intermediate_values for t in running):
            return None  # one has not reached this epoch: its value here is unknown
        answers = set()
        for ends in itertools.product((TrialState.COMPLETE, TrialState.FAIL), repeat=len(running)):
            done = {}
            for t, state in zip(running, ends, strict=True):
                seen = copy.copy(t)
                seen.state = state
                done[t.number] = seen
            answers.add(self._inner.prune(Before(study, trial.number, done), trial))
            if len(answers) > 1:
                return None
        return answers.pop()
