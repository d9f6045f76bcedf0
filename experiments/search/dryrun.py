"""`sweep --dry-run`: the resolved sweep and its first configs, with nothing written.

The configs come from the sweep's own trial loop (`study.work`) on an in-memory study,
with the same samplers, per-trial seeds and grid queue as a real run, so they are the
configs the first trials of a new study train. A model-based method's later draws depend
on results the dry run does not have; it says from which trial on.
"""

from __future__ import annotations

import dataclasses

from experiments.core import config as cfg
from experiments.search.sweepfile import Param, SweepSpec

SAMPLES = 3
# Trials drawn without looking at results, per method (Optuna's defaults): TPE and GP start
# with 10 random trials, CMA-ES with one.
RESULT_FREE = {"tpe": 10, "gp": 10, "cmaes": 1}


def _space(p: Param) -> str:
    if p.distribution in ("categorical", "constant"):
        return f"{p.distribution} {list(p.values)}"
    step = f" step {p.q}" if p.q else ""
    return f"{p.distribution} [{p.low}, {p.high}]{step}"


def describe(spec: SweepSpec) -> str:
    import optuna

    from experiments.search import study as st
    from experiments.search import trials as tr

    modes = spec.all_grad_modes()
    lines = [f"sweep '{spec.name}' from {spec.path}: method {spec.method}, "
             f"{spec.goal} {spec.metric}, budget {tr.budget(spec)} trials, "
             f"pruner {spec.pruner} (warmup {spec.warmup_epochs} epochs)"
             + (f", timeout {spec.timeout_s:g}s" if spec.timeout_s else "")]
    if spec.ablation:
        lines.append("grad modes per trial: " + ", ".join(modes)
                     + ("  (first is the objective)" if len(modes) > 1 else ""))
    else:
        lines.append("grad mode: " + (f"searched over {', '.join(modes)}" if any(
            p.key == "grad_mode" for p in spec.parameters) else modes[0]))
    lines.append("fixed: " + (", ".join(f"{k}={v}" for k, v in spec.fixed.items()) or "-"))
    lines.append("search space:")
    lines += [f"  {p.key}: {_space(p)}" for p in spec.parameters]
    n = min(SAMPLES, tr.budget(spec))
    configs = []

    def objective(trial: optuna.Trial) -> float:
        config = cfg.build({**spec.fixed, **tr.suggest(trial, spec.parameters)})
        configs.append({k: v for k, v in cfg.flatten(config).items()
                        if not k.startswith("data.")})
        return 0.0

    study = optuna.create_study(direction=spec.goal)
    study.sampler = st.sampler(spec)
    tr.work(study, dataclasses.replace(spec, n_trials=n, pruner="none"), objective,
            lambda t: None, tr.Recovery())
    free = RESULT_FREE.get(spec.method)
    note = f"; from trial {free} on, draws depend on results" if free is not None and \
        free < n else ""
    lines.append(f"the first {len(configs)} configs a new study trains{note}:")
    lines += [f"  {i}. " + ", ".join(f"{k}={v}" for k, v in c.items())
              for i, c in enumerate(configs)]
    return "\n".join(lines)
