"""The vector instructions MindSpore's CPU kernels use, and holding a replay to a run's.

MindSpore's CPU kernels (oneDNN) take the widest vector unit the CPU has, and AVX-512 and
AVX2 kernels round differently. Measured on 2026-12-04 with the seed's MLP (seed 3, two
epochs, batch 64, lr 0.01): on an AVX-512 EPYC the train loss differs from the same
training capped at AVX2 (`DNNL_MAX_CPU_ISA=AVX2`) at the 8th digit and every weight in its
last bits; capped, it gives exactly the bits recorded on an AVX2 machine, at the same
speed (the main job took 15 s either way). So a run records the ISA it trained with, and a
replay on a wider CPU caps its kernels at the run's.

oneDNN reads the cap once, at its first kernel: it is set before MindSpore runs anything.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

ENV = "DNNL_MAX_CPU_ISA"
# oneDNN's x86 ISAs told apart here, narrowest first, with the cpuinfo flags each needs;
# a CPU with none of them (or not x86) is named by its architecture and never capped.
LEVELS = (("sse41", frozenset({"sse4_1"})), ("avx", frozenset({"avx"})),
          ("avx2", frozenset({"avx2", "fma"})),
          ("avx512_core", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})))
NAMES = [name for name, _ in LEVELS]


def isa() -> str:
    """The ISA this process's kernels use: the CPU's widest level, or the cap in
    DNNL_MAX_CPU_ISA where that is narrower."""
    flags = _flags()
    level = next((name for name, need in reversed(LEVELS) if need <= flags), "")
    if not level:
        return platform.machine() or "unknown"
    cap = _level_of(os.environ.get(ENV, ""))
    if cap and NAMES.index(cap) < NAMES.index(level):
        return cap
    return level


def _level_of(cap: str) -> str:
    """The level told apart here that a DNNL_MAX_CPU_ISA value caps at ('' for none):
    oneDNN's finer names (AVX2_VNNI, AVX512_CORE_BF16, AVX10_1_512...) run the same float32
    kernels as their family's."""
    cap = cap.strip().lower()
    for name, family in (("avx512_core", ("avx512", "avx10")), ("avx2", ("avx2",)),
                         ("avx", ("avx",)), ("sse41", ("sse41",))):
        if cap.startswith(family):
            return name
    return ""


def hold_to(recorded: str) -> str:
    """Cap this process's kernels at the `recorded` ISA where this CPU is wider; what a
    reader of the replay should know ('' when the kernels are the run's)."""
    here = isa()
    if not recorded or recorded == here:
        return ""
    if recorded in NAMES and here in NAMES and NAMES.index(recorded) < NAMES.index(here):
        os.environ[ENV] = recorded.upper()
        return f"trained with {recorded} kernels as the run was (this CPU has {here})"
    return (f"the run trained with {recorded} kernels, this process has {here}: they round "
            "differently, so its last bits may differ for that")


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
