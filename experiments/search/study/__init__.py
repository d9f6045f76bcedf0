"""The Optuna study: its storage, the question it answers, how it samples and prunes, and
whether the worker of a running trial is alive.

Read bottom-up: storage (the journal, a database, the gRPC proxy) and internals (every
use of Optuna's private API) < liveness (whose trial is alive) < ordered (any number of
workers, the one-worker answer) < wandb_bayes, wandb_hyperband (W&B's bayes search and
hyperband rule, asked of W&B's own engine) < samplers (a sampler per method, the pruner,
each given liveness's judgement) < study (one study, one question).
"""

from experiments.search.study.storage import open_storage
from experiments.search.study.study import budget_of, check, existing, open_study

__all__ = ["budget_of", "check", "existing", "open_storage", "open_study"]
