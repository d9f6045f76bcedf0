"""The compiled functional loop on real MindSpore and the offline digits."""

from __future__ import annotations

import numpy as np
import pytest
from mindspore import Tensor

from experiments.core import config as cfg
from experiments.core.hooks import Diverged
from experiments.core.train import fit


def batch(prepared, n=64, start=0):
    idx = np.arange(start, start + n) * (len(prepared.train_y) // n)
    return Tensor(prepared.train_x[idx]), Tensor(prepared.train_y[idx])


@pytest.mark.parametrize("mode", ["has_aux", "no_aux", "stop_gradient"])
def test_compiled_step_applies_its_own_gradient(prepared, trainers, mode):
    """One compiled step moves every weight by exactly -lr x the mode's gradient."""
    trainer = trainers(mode)
    lr = 1e-3
    trainer.reset(seed=0, learning_rate=lr)
    x, y = batch(prepared)
    before = trainer.weights()
    grads = trainer.gradients(x, y)["has_aux" if mode != "no_aux" else "no_aux"]
    trainer.model.set_train()
    trainer.train_step(x, y)
    after = trainer.weights()
    for w0, w1, g in zip(before, after, grads, strict=True):
        assert not np.array_equal(w0, w1)
        np.testing.assert_allclose(w1, w0 - lr * g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", ["has_aux", pytest.param("stop_gradient",
                                                            marks=pytest.mark.slow)])
def test_loss_falls_over_two_epochs(prepared, trainers, mode):
    config = cfg.build({"epochs": 2, "grad_mode": mode, "learning_rate": 0.05})
    history = fit(config, prepared, trainers(mode)).history
    assert [r.epoch for r in history] == [1, 2]
    assert history[1].train_loss < history[0].train_loss
    assert history[1].test_loss < history[0].test_loss
    assert history[1].test_accuracy > 0.5
    assert all(0 <= r.test_accuracy <= 1 for r in history)


def test_gradient_relations_on_a_real_batch(prepared, trainers):
    trainer = trainers("has_aux")
    trainer.reset(seed=0, learning_rate=1e-2)
    grads = trainer.gradients(*batch(prepared))
    stop = trainers("stop_gradient")
    stop.reset(seed=0, learning_rate=1e-2)
    x, y = batch(prepared)
    _, stop_grads = stop.train_step.grad_fn(x, y)
    for a, s in zip(grads["has_aux"], stop_grads, strict=True):
        np.testing.assert_array_equal(a, s.asnumpy())
    from experiments.core.autodiff import grad_relation

    cosine, ratio = grad_relation(grads["has_aux"], grads["no_aux"])
    assert cosine < 0.99 and ratio > 1
    # The last layer's bias gets d(sum logits)/db = batch size on top of the loss gradient.
    np.testing.assert_allclose(grads["no_aux"][-1] - grads["has_aux"][-1], 64.0, rtol=1e-5)


@pytest.mark.slow
def test_same_seed_same_metrics_and_reuse_equals_fresh(prepared, trainers):
    from experiments.core.train import Trainer

    config = cfg.build({"epochs": 2, "seed": 3})
    first = fit(config, prepared, trainers("has_aux")).history
    again = fit(config, prepared, trainers("has_aux")).history
    fresh = fit(config, prepared, Trainer("has_aux")).history

    def strip(history):  # timings differ between any two runs
        return [{k: v for k, v in r.__dict__.items() if not k.endswith("_time_s")}
                for r in history]

    assert strip(first) == strip(again) == strip(fresh)
    other = fit(cfg.build({"epochs": 1, "seed": 4}), prepared, trainers("has_aux")).history
    assert other[0].train_loss != first[0].train_loss


def test_evaluation_counts_every_sample(prepared, trainers):
    trainer = trainers("has_aux")
    trainer.reset(seed=0, learning_rate=1e-2)
    a = trainer.evaluate(prepared.test_x, prepared.test_y, 1000)
    b = trainer.evaluate(prepared.test_x, prepared.test_y, 300)  # 300 x 3 + 100
    assert a.accuracy == b.accuracy and (a.accuracy * 1000).is_integer()
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    # The predictions are every sample's, and they are what the accuracy counts.
    assert len(a.predictions) == len(prepared.test_y)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert (a.predictions == prepared.test_y).mean() == a.accuracy


def test_no_aux_diverges_and_says_where(prepared, trainers):
    with pytest.raises(Diverged) as err:
        fit(cfg.build({"grad_mode": "no_aux", "epochs": 1}), prepared, trainers("no_aux"))
    assert err.value.epoch == 1 and 1 <= err.value.step <= 63


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["has_aux", pytest.param("stop_gradient",
                                                            marks=pytest.mark.slow)])
def test_fast_path_equals_straightforward_path(prepared, mode):
    """k steps per compiled call give bit-identical numbers and weights to one per call."""
    from experiments.core.train import Trainer

    config = cfg.build({"epochs": 2, "grad_mode": mode, "batch_size": 96, "seed": 5})
    single, chunked = Trainer(mode, steps_per_call=1), Trainer(mode)  # the default k
    assert chunked.steps_per_call > 1
    by_step, by_chunk = fit(config, prepared, single), fit(config, prepared, chunked)
    np.testing.assert_array_equal(by_step.predictions, by_chunk.predictions)
    for a, b in zip(by_step.history, by_chunk.history, strict=True):
        assert (a.train_loss, a.test_loss, a.test_accuracy, a.grad_cosine) == (
            b.train_loss, b.test_loss, b.test_accuracy, b.grad_cosine)
    for w1, w8 in zip(single.weights(), chunked.weights(), strict=True):
        np.testing.assert_array_equal(w1, w8)


@pytest.mark.slow
def test_divergence_step_is_exact_inside_a_chunk(prepared):
    from experiments.core.train import STEPS_PER_CALL, Trainer

    config = cfg.build({"grad_mode": "no_aux", "epochs": 1})
    steps = []
    for k in (1, STEPS_PER_CALL):
        with pytest.raises(Diverged) as err:
            fit(config, prepared, Trainer("no_aux", steps_per_call=k))
        steps.append((err.value.step, err.value.losses[:-1]))
    assert steps[0] == steps[1]


def test_a_process_builds_one_trainer_per_grad_mode():
    """Every trial of a process reuses its compiled trainer: a new one per trial compiled
    every shape again (4-5 s a trial instead of 0.4 s, measured when the cache was lost).
    What changes only per run (seed, learning rate, batch size, epochs) shares one."""
    from experiments.core.train import forkable, trainer_for

    one = trainer_for(cfg.build({"grad_mode": "has_aux"}))
    assert trainer_for(cfg.build({"grad_mode": "has_aux", "seed": 5, "learning_rate": 0.3,
                                  "batch_size": 32, "epochs": 7})) is one
    assert trainer_for(cfg.build({"grad_mode": "no_aux"})) is not one
    assert trainer_for(cfg.build({"weight_decay": 1e-4})) is not one
    assert not forkable()  # a process that built one must not fork workers

