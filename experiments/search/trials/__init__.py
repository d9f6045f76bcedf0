"""The budgeted trial loop: which trials count (budget), the loop that trains until the
budget is met and takes care of the trials that will not finish (loop), what one trial
trains (objective), and warm starts queued first (warm_queue).

Read bottom-up: budget (rules only) < loop < warm_queue; objective stands apart (it is
what the loop calls, handed in by the session).
"""

from experiments.search.trials.budget import Budget, Word, state_name, tally
from experiments.search.trials.loop import End, Recovery, recover, work

__all__ = ["Budget", "End", "Recovery", "Word", "recover", "state_name", "tally", "work"]
