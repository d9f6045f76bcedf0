"""The cost of `method: bayes` per trial: W&B's proposal (study/wandb_bayes.py) for a study
with 10, 100 and 300 finished trials, against Optuna's TPE proposal on the same history,
timed in the same run.

The history is synthetic (no training): three parameters as a typical sweep has them, a
log-uniform learning rate, an integer epoch count and a categorical batch size, each
trial with one reported value per epoch. A proposal is what the sweep pays before a trial
trains: a sampler made for the trial (as PerTrialSeed makes one, with the trial's seed)
reading the study and choosing all three parameters. W&B's proposal fits a Gaussian
process on at most 100 runs (a random subset beyond) and scores 1,000 random candidates;
TPE (the project's settings: 10 random start-up trials) fits its Parzen estimators per
parameter on every finished trial.

    python -m benchmarks.bench_bayes [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from benchmarks import bench_common as C
from experiments.search.spec import sweepfile
from experiments.search.spec.space import VALUE_ATTR
from experiments.search.study.samplers import TPE_STARTUP, trial_seed
from experiments.search.study.wandb_bayes import WandbBayesSampler

SWEEP = """
    method: bayes
    metric: {name: test_accuracy, goal: maximize}
    parameters:
      learning_rate: {distribution: log_uniform_values, min: 1.0e-4, max: 0.5}
      epochs: {distribution: int_uniform, min: 1, max: 5}
      batch_size: {values: [32, 64, 128]}
    """
SIZES = (10, 100, 300)


def spec() -> sweepfile.SweepSpec:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_bayes.yaml"
        path.write_text(textwrap.dedent(SWEEP))
        return sweepfile.load(path)


def history(s: sweepfile.SweepSpec, n: int, seed: int = 0) -> tuple[optuna.Study, FrozenTrial]:
    """A study of `n` finished trials, and a trial of its own to propose for."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(direction="maximize")
    for _ in range(n):
        values = {p.key: p.ppf(float(rng.uniform())) for p in s.parameters}
        # Accuracy peaks near lr 1e-2 and grows with the epochs trained, with some noise.
        peak = 0.97 - 0.05 * (math.log10(values["learning_rate"]) + 2) ** 2
        curve = {e: peak - 0.3 / e + float(rng.normal(0, 0.01))
                 for e in range(1, values["epochs"] + 1)}
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=curve[values["epochs"]],
            params={p.key: values[p.key] for p in s.parameters},
            distributions={p.key: p.optuna_distribution() for p in s.parameters},
            user_attrs={VALUE_ATTR + k: v for k, v in values.items()},
            intermediate_values=curve))
    study.ask()  # the trial being proposed: running, so neither sampler learns from it
    return study, study.get_trials(deepcopy=False)[-1]


def propose(make: Callable[[], optuna.samplers.BaseSampler], study: optuna.Study,
            trial: FrozenTrial, s: sweepfile.SweepSpec) -> dict:
    """Every parameter of `trial`, as Optuna asks a new sampler for them: the relative
    space at once, what it leaves out one by one."""
    sampler = make()
    space = sampler.infer_relative_search_space(study, trial)
    chosen = sampler.sample_relative(study, trial, space) if space else {}
    for p in s.parameters:
        if p.optuna_name() not in chosen:
            chosen[p.optuna_name()] = sampler.sample_independent(
                study, trial, p.optuna_name(), p.optuna_distribution())
    return chosen


def bayes(quick: bool) -> list[dict]:
    s, repeats = spec(), 3 if quick else 7
    config = s.wandb_config()
    rows = []
    for n in SIZES:
        study, trial = history(s, n)
        seed = trial_seed(s.seed, trial.number)
        wandb = C.timed(partial(propose, partial(WandbBayesSampler, config, s.parameters, seed),
                                study, trial, s), repeats)
        tpe = C.timed(partial(propose, partial(optuna.samplers.TPESampler, seed=seed,
                                               n_startup_trials=TPE_STARTUP),
                              study, trial, s), repeats)
        rows.append(C.row(f"bayes proposal, W&B's engine (sweeps {_version()})",
                          C.workload("synthetic history", trials=n,
                                     other="3 params: log-uniform lr, int epochs, "
                                           "categorical batch size"),
                          "s/proposal", wandb, "Optuna TPE proposal", tpe, style="speed"))
    return rows


def _version() -> str:
    from importlib import metadata

    return metadata.version("sweeps")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = bayes(p.parse_args().quick)
    print(f"{'finished trials':>15}  {'W&B bayes s [min, max]':>26}  "
          f"{'TPE s [min, max]':>26}  {'ratio':>6}  repeats")
    for n, row in zip(SIZES, rows, strict=True):
        m, b = row["measured"], row["baseline"]
        print(f"{n:>15}  {_cell(m):>26}  {_cell(b):>26}  {row['ratio']:>5.1f}x  {m['n']}")
    return 0


def _cell(fig: dict) -> str:
    return f"{fig['median']:.4f} [{fig['min']:.4f}, {fig['max']:.4f}]"


if __name__ == "__main__":
    raise SystemExit(main())
