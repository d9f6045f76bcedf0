"""The ablation's verdict as rules: per grad mode, trials, where it diverged, its mean,
its paired difference to the objective's mode with the noise verdict, and "identical to
the bit" only where every epoch was."""

import pandas as pd

from experiments.core.verdict import ModeResult, lines, verdicts
from experiments.search import compare

MODES = ("has_aux", "no_aux", "stop_gradient")


def result(trial, mode, value, **given):
    return ModeResult(trial=trial, mode=mode, value=value, **given)


def test_diverged_modes_say_where_and_identical_modes_say_so():
    results = []
    for t, (acc, step) in enumerate([(0.9, 3), (0.8, 5), (0.7, 4)]):
        results += [result(t, "has_aux", acc),
                    result(t, "no_aux", None, diverged=f"epoch 1, step {step}"),
                    result(t, "stop_gradient", acc, identical=True)]
    assert lines(results, MODES, "test_accuracy") == [
        "ablation (same seed, weights and batches per trial; has_aux is the objective):",
        "  has_aux: 3 trials, mean test_accuracy 0.8000; the objective",
        "  no_aux: 3 trials, diverged in 3 of 3 (at epoch 1, steps 3-5)",
        "  stop_gradient: 3 trials, mean test_accuracy 0.8000; identical to has_aux to the "
        "bit in 3 of 3 paired trials"]


def test_a_difference_gets_a_paired_test_and_equal_values_are_not_identical_bits():
    base = [0.90, 0.80, 0.70, 0.60]
    steady = [result(t, "has_aux", v) for t, v in enumerate(base)]
    better = [result(t, "no_aux", v + 0.05 + 0.001 * t) for t, v in enumerate(base)]
    noisy = [result(t, "stop_gradient", v + d) for t, (v, d)
             in enumerate(zip(base, [0.02, -0.03, 0.01, -0.01], strict=True))]
    (_, up, mixed) = verdicts(steady + better + noisy, MODES)
    assert up.paired == 4 and round(up.difference, 4) == 0.0515 and up.p < 0.05
    assert "beyond the noise" in up.words("has_aux", "test_accuracy")
    assert mixed.p > 0.05 and "within the noise" in mixed.words("has_aux", "test_accuracy")
    # Equal final values are not "to the bit": only a whole equal history is.
    same = verdicts(steady + [result(t, "no_aux", v) for t, v in enumerate(base)], MODES)[1]
    assert same.identical == 0 and "the same difference in every pair" in \
        same.words("has_aux", "test_accuracy")


def test_divergences_in_several_epochs_are_named_by_epoch():
    results = [result(0, "has_aux", 0.9), result(1, "has_aux", 0.8),
               result(0, "no_aux", None, diverged="epoch 1, step 3"),
               result(1, "no_aux", None, diverged="epoch 2, step 7")]
    assert "(at epochs 1, 2)" in verdicts(results, MODES)[1].words("has_aux", "acc")


def test_no_ablation_no_verdict():
    assert lines([result(0, "has_aux", 0.9)], ("has_aux",), "test_accuracy") == []


def test_the_paired_frame_carries_the_verdict():
    frame = pd.DataFrame({
        "trial": pd.array([0, 0, 1, 1], dtype="Int64"), "repeat": [0] * 4,
        "grad_mode": ["has_aux", "no_aux"] * 2, "role": ["objective", "ablation"] * 2,
        "fail_kind": [""] * 4, "diverged": [False, True] * 2,
        "diverged_at": ["", "epoch 1, step 2", "", "epoch 1, step 2"],
        "same_bits_as": [""] * 4,
        "final_test_accuracy": [0.9, float("nan"), 0.8, float("nan")],
        "final_test_loss": [0.3, float("nan"), 0.4, float("nan")],
        "final_train_loss": [0.2, float("nan"), 0.3, float("nan")]})
    out = compare.paired(frame)
    assert out.attrs["verdict"].splitlines()[1:] == [
        "  has_aux: 2 trials, mean test_accuracy 0.8500; the objective",
        "  no_aux: 2 trials, diverged in 2 of 2 (at epoch 1, step 2)"]
