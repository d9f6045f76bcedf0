"""Finished trainings of a lost trial, taken over by its retry rather than trained again.

A worker killed in the middle of a trial (kill -9, a crash) may already have finished some
of its trainings (seeds of `repeats`, grad modes of an ablation). Training is
deterministic (same config, seed and data give the same bits, which `runner.py replay`
proves), so the retry takes those runs over: found by the lost trial's number and the
digest of the exact config, on the same data, finished whole (not pruned, not diverged).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from experiments.core.config import Config, question
from experiments.core.hooks import EpochResult
from experiments.tracking.mlflow_run import MlflowRun

DIGEST_TAG = "config_digest"
_FIELDS = ("train_loss", "test_loss", "test_accuracy", "grad_cosine", "grad_norm_ratio",
           "epoch_time_s", "train_time_s")


def config_digest(config: Config) -> str:
    """What trains, exactly: every config value, the evaluation batch size too (it sums
    the test loss per batch, so it changes test_loss in its last bits) and the device, but
    not which card of it."""
    values = {k: v for k, v in question(config).items() if k != "device_id"}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def take_over(client: Any, experiment_id: str, sweep: str, lost_trial: int, config: Config,
              data_digest: str, tags: dict[str, str]) -> tuple[str, list[EpochResult]] | None:
    """The lost trial's finished run of `config`, retagged as the retry's (`tags`), and
    its history; None if there is none."""
    digest = config_digest(config)
    found = client.search_runs(
        [experiment_id], f"tags.trial = '{lost_trial}' and tags.{DIGEST_TAG} = '{digest}' "
                         "and attributes.status = 'FINISHED'")
    for run in found:
        t = run.data.tags
        if (t.get("sweep") != sweep or t.get("fail_kind") not in ("crashed", "interrupted")
                or "stop_reason" in t or t.get("outcome") == "diverged"
                or t.get("data.digest") != data_digest):
            continue
        history = _history(client, run.info.run_id, config.epochs)
        if history is None:
            continue
        client.delete_tag(run.info.run_id, "fail_kind")
        MlflowRun(client, run.info.run_id).set_tags(
            {**tags, "taken_over_from_trial": str(lost_trial)})
        return run.info.run_id, history
    return None


def _history(client: Any, run_id: str, epochs: int) -> list[EpochResult] | None:
    """The run's epochs as the loop reported them; None unless every epoch is there."""
    series = {}
    for key in _FIELDS:
        points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        if sorted(points) != list(range(1, epochs + 1)):
            if key == "train_time_s":  # runs from before the metric existed
                points = dict.fromkeys(range(1, epochs + 1), 0.0)
            else:
                return None
        series[key] = points
    return [EpochResult(e, *(series[k][e] for k in _FIELDS)) for e in range(1, epochs + 1)]
