"""What sets a CPU kernel's last bits besides its inputs, and holding a replay to a run's.

1. The vector ISA. MindSpore's CPU kernels (oneDNN) take the widest vector unit the CPU
   has, and AVX-512 and AVX2 kernels round differently. Measured on 2026-12-04 with the
   seed's MLP (seed 3, two epochs, batch 64, lr 0.01): on an AVX-512 EPYC the train loss
   differs from the same training capped at AVX2 (`DNNL_MAX_CPU_ISA=AVX2`) at the 8th
   digit and every weight in its last bits; capped, it gives exactly the bits recorded on
   an AVX2 machine, at the same speed (the main job took 15 s either way). So a run
   records the ISA it trained with (`cpu.isa`), and a replay on a wider CPU caps its
   kernels at the run's. oneDNN reads the cap once, at its first kernel.
2. The thread count: a convolution sums in another order on another (measured: a sweep
   worker pinned to one core and a replay on two differed in the last bits of every
   LeNet-style metric). A run records its `cores`, and a replay trains on as many.

Both are set before MindSpore runs anything: a task file may run a kernel as it is read.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# oneDNN reads the first of these that is set; a value it does not know it ignores.
ENVS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# oneDNN's x86 ISAs told apart here, narrowest first, with the cpuinfo flags each needs;
# a CPU with none of them (or not x86) is named by its architecture and never capped.
LEVELS = (("sse41", frozenset({"sse4_1"})), ("avx", frozenset({"avx"})),
          ("avx2", frozenset({"avx2", "fma"})),
          ("avx512_core", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})))
NAMES = [name for name, _ in LEVELS]
# oneDNN's cap names (in any case) by the level whose float32 kernels they run.
CAPS = {"sse41": "sse41", "avx": "avx", "avx2": "avx2", "avx2_vnni": "avx2",
        "avx2_vnni_2": "avx2",
        **{name: "avx512_core" for name in (
            "avx512_core", "avx512_core_vnni", "avx512_core_bf16", "avx512_core_fp16",
            "avx512_core_amx", "avx512_core_amx_fp16", "avx10_1_512", "avx10_1_512_amx",
            "avx10_1_512_amx_fp16", "avx10_2_512", "avx10_2_512_amx_2")}}


def isa() -> str:
    """The ISA this process's kernels use: the CPU's widest level, or the cap oneDNN
    obeys where that is narrower."""
    flags = _flags()
    level = next((name for name, need in reversed(LEVELS) if need <= flags), "")
    if not level:
        return platform.machine() or "unknown"
    given = next((os.environ[k] for k in ENVS if os.environ.get(k)), "")
    cap = CAPS.get(given.lower(), "")
    if cap and NAMES.index(cap) < NAMES.index(level):
        return cap
    return level


def hold_to(recorded: str) -> str:
    """Cap this process's kernels at the `recorded` ISA where this CPU is wider; what a
    reader of the replay should know ('' when the kernels are the run's)."""
    here, recorded = isa(), recorded.strip().lower()
    shown = recorded if len(recorded) <= 40 else recorded[:40] + "..."
    if not recorded:
        return ("the run did not record its kernels' vector ISA (cpu.isa): made with "
                "another, its last bits may differ for that")
    if recorded == here:
        return ""
    if recorded in NAMES and here in NAMES and NAMES.index(recorded) < NAMES.index(here):
        for name in ENVS:
            os.environ[name] = recorded.upper()
        return f"trained with {recorded} kernels as the run was (this CPU has {here})"
    return (f"the run trained with {shown} kernels, this process has {here}: they round "
            "differently, so its last bits may differ for that")


def hold_cores(recorded: str) -> str:
    """Train on as many cores as the run did (its `cores` tag): a convolution's sums
    follow the thread count. A note when this machine has fewer; nothing for a run that
    did not record it (trained before the tag)."""
    from experiments.runtime.workers import usable_cores

    here = usable_cores()
    if not recorded.isdigit() or int(recorded) == len(here):
        return ""
    if int(recorded) < len(here):
        os.sched_setaffinity(0, set(here[: int(recorded)]))
        return f"trained on {recorded} of this machine's {len(here)} cores, as the run was"
    return (f"the run trained on {recorded} cores, this process has {len(here)}: a "
            "convolution sums in another order on another thread count, so its last bits "
            "may differ for that")


@functools.cache
def _flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()
