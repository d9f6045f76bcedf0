"""`sweep --dry-run`: the resolved sweep and a few sampled configs, with nothing written."""

from __future__ import annotations

from experiments import config as cfg
from experiments.sweepfile import Param, Sweep

SAMPLES = 3


def _space(p: Param) -> str:
    if p.distribution in ("categorical", "constant"):
        return f"{p.distribution} {list(p.values)}"
    step = f" step {p.q}" if p.q else ""
    return f"{p.distribution} [{p.low}, {p.high}]{step}"


def describe(spec: Sweep) -> str:
    import optuna

    from experiments import study as st

    lines = [f"sweep '{spec.name}' from {spec.path}: method {spec.method}, "
             f"{spec.goal} {spec.metric}, budget {st.budget(spec)} trials, "
             f"pruner {spec.pruner} (warmup {spec.warmup_epochs} epochs)"
             + (f", timeout {spec.timeout_s:g}s" if spec.timeout_s else "")]
    lines.append("grad modes per trial: " + ", ".join(spec.grad_modes)
                 + ("  (first is the objective)" if len(spec.grad_modes) > 1 else ""))
    lines.append("fixed: " + (", ".join(f"{k}={v}" for k, v in spec.fixed.items()) or "-"))
    lines.append("search space:")
    lines += [f"  {p.key}: {_space(p)}" for p in spec.parameters]
    # An in-memory study: the real sampler proposes, nothing touches disk.
    study = optuna.create_study(direction=spec.goal)
    study.sampler = st._sampler(spec, spec.seed)
    lines.append(f"{SAMPLES} sampled configs:")
    for i in range(SAMPLES):
        trial = study.ask()
        config = cfg.build({**spec.fixed, **st.suggest(trial, spec.parameters)})
        shown = {k: v for k, v in cfg.flatten(config).items() if not k.startswith("data.")}
        lines.append(f"  {i + 1}. " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        study.tell(trial, 0.0)
    return "\n".join(lines)


