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
trial waits for the earlier ones, polling the storage. Waiting stops for a trial whose
worker died (the parent fails it) and after MAX_WAIT_S, so workers never deadlock; the
trial is then tagged `ordered=false`. Warm-start and retried trials are enqueued trials
whose numbers the sweep's history decides, so a sweep with a crash or a retry is the
one-worker sweep only up to it. Hyperband builds its brackets from the storage itself,
and QMC numbers its points in the order they are drawn: neither is ordered here.
"""

from __future__ import annotations

import copy
import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

POLL_S = 0.05
MAX_WAIT_S = float(os.environ.get("RUNNER_ORDER_WAIT_S", "3600"))
MAX_UNDECIDED = 3  # running earlier trials tried both ways (2**3 pruning decisions at most)
ORDERED_ATTR = "ordered"
Mark = Callable[[optuna.Study, FrozenTrial], None]  # sets ORDERED_ATTR False on a trial


def _any_alive(t: FrozenTrial) -> bool:
    return True


# Whether a running trial's worker lives is liveness.py's to judge. It registers its test
# here when imported: it imports study.py, which imports this module, so this module
# cannot import it. Every process that runs trials imports it (trials.py).
_alive: Callable[[FrozenTrial], bool] = _any_alive


def judge_liveness_by(alive: Callable[[FrozenTrial], bool]) -> None:
    global _alive  # one judge per process, as there is one liveness module
    _alive = alive


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


def running_before(study: optuna.Study, number: int) -> list[FrozenTrial]:
    """Earlier trials still running in a live worker."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.number < number and _alive(t)]


def wait_for_earlier(study: optuna.Study, trial: FrozenTrial, unordered: Mark) -> None:
    """Block until no trial numbered below `trial` is running (see the module's text)."""
    start = time.monotonic()
    while running_before(study, trial.number):
        if time.monotonic() - start > MAX_WAIT_S:
            unordered(study, trial)
            return
        time.sleep(POLL_S)


class OrderedPruner(optuna.pruners.BasePruner):
    """`inner`, deciding for trial k on the trials below k (see the module's text)."""

    def __init__(self, inner: optuna.pruners.BasePruner, unordered: Mark) -> None:
        self._inner, self._unordered = inner, unordered

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        start = time.monotonic()
        while True:
            running = running_before(study, trial.number)
            decided = self._decided(study, trial, running)
            if decided is not None:
                return decided
            if time.monotonic() - start > MAX_WAIT_S:
                self._unordered(study, trial)
                return self._inner.prune(Before(study, trial.number), trial)
            time.sleep(POLL_S)

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
