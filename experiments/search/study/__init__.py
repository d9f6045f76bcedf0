"""The Optuna study: its storage, the question it answers, how it samples and prunes, and
whether the worker of a running trial is alive.

Read bottom-up: storage (the journal, a database, the gRPC proxy) and internals (every
use of Optuna's private API) < liveness (whose trial is alive) < ordered (any number of
workers, the one-worker answer) < samplers (a sampler per method, the pruner, each given
liveness's judgement) < study (one study, one question).
"""

from experiments.search.study.storage import open_storage
from experiments.search.study.study import budget_of, check, existing, open_study

__all__ = ["budget_of", "check", "existing", "open_storage", "open_study"]
