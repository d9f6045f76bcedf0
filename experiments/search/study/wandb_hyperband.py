"""W&B's `early_terminate: {type: hyperband}` as an Optuna pruner, decided by W&B's own code.

W&B's controller asks `sweeps.hyperband_stop_runs` again and again which running runs to
stop: its bands are `int(max_iter / eta^k)` (k = 1..s) or `min_iter * eta^k`, each band's
threshold is the top 1/eta of every run's value at that band, and a run is checked at the
latest band it has reached against that band's threshold: its value there when `strict`
(W&B's default), its best value so far otherwise. Optuna's HyperbandPruner differs (one
bracket per trial by a hash, rungs by powers of eta from min_resource): measured on 60
identical curves, only 24-47 runs got W&B's decision at W&B's epoch.

Here a trial that reports epoch e is a W&B run with e history rows. Every other trial the
pruner is shown (the earlier ones, through ordered.py) is a run that is not running: its
curve sets the thresholds, and only this trial can be stopped. The decision is the
`sweeps` package's, called on those runs.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiments.search.spec import hyperband
from experiments.search.spec.engine import part
from experiments.search.spec.pruners import Pruner
from experiments.search.study import liveness


def curve(trial: FrozenTrial) -> list[dict[str, float]]:
    """The trial's reported values, epoch by epoch, as W&B history rows (a NaN row is
    kept: W&B filters it out of the curve itself)."""
    return [{hyperband.METRIC: float(v)} for _, v in sorted(trial.intermediate_values.items())]


class WandbHyperband(optuna.pruners.BasePruner):
    """Stops a trial exactly when W&B's hyperband rule stops the run at that epoch."""

    def __init__(self, pruner: Pruner, goal: str) -> None:
        self._rule, self._goal = dict(pruner.wandb), goal
        self._first = pruner.bands[0]
        self._sweeps = part("sweeps")

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._first:
            return False  # no band reached: W&B checks nothing yet
        run, state = self._sweeps.SweepRun, self._sweeps.RunState
        # A trial cut short is left out: its retry is the config's curve, which would
        # otherwise count twice in a band's threshold.
        others = [run(name=str(t.number), state=state.finished, history=curve(t))
                  for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and t.intermediate_values
                  and t.state != TrialState.WAITING and not liveness.cut_short(t)]
        me = run(name=str(trial.number), state=state.running, history=curve(trial))
        stopped = hyperband.stop_runs([*others, me], self._rule, self._goal)
        return any(r.name == me.name for r in stopped)
