"""Measure the runner against the tutorial's loop and PyTorch, on this machine.

Every figure is a median of repeated runs and every comparison a ratio against a baseline
measured in the same script run:

1. train step: the runner's compiled step vs the tutorial's PyNative step (and default
   `@mindspore.jit`), per grad mode and batch size, compile time apart;
2. a full epoch (60,000 train / 10,000 test: the offline sample tiled) end to end vs the
   same MLP in PyTorch eager (if torch is installed) and vs the tutorial's own epoch;
3. tracking overhead: a tracked trial vs the same trial untracked;
4. sweep throughput: trials per minute with 1 and 2 workers (pinned and not);
5. pruning: epochs spent and best accuracy on sweeps/lr.yaml with and without the pruner;
6. compare: 200 runs of 10 epochs into pandas, vs one history request per run per metric.

    python benchmarks/bench.py [--quick] [--only 1,2,3,4,5,6] [--out benchmarks/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_compare  # noqa: E402
import bench_sweeps  # noqa: E402
import bench_train  # noqa: E402

# (number, title, measure) in run order: the subprocess sweeps first, while the cores are
# still theirs alone.
SECTIONS = [
    (4, "sweep throughput", bench_sweeps.throughput),
    (5, "pruning on sweeps/lr.yaml", bench_sweeps.pruning),
    (1, "train step (ms/step)", bench_train.steps),
    (2, "full epoch, 60k train + 10k test (s)", bench_train.epoch),
    (3, "tracking overhead (s per trial)", bench_train.tracking),
    (6, "compare in pandas", bench_compare.compare_speed),
]


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("mindspore", "numpy", "mlflow", "optuna", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']['cores']} cores, {results['machine']['cpu']}, "
             f"Python {results['machine']['python']}, " + ", ".join(
                 f"{k} {v}" for k, v in results["machine"]["versions"].items() if v)]
    for section, rows in results["sections"].items():
        if not rows:
            continue
        lines += ["", f"### {section}", ""]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else str(value)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    p.add_argument("--only", default="1,2,3,4,5,6",
                   help="sections to run, e.g. 1,3 (others are kept from --out if present)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    args = p.parse_args()
    only = {int(x) for x in args.only.split(",") if x.strip()}
    np.random.seed(0)
    sections = {f"{number}. {title}": measure(args.quick)
                for number, title, measure in SECTIONS if number in only}
    out = Path(args.out)
    if out.exists() and only != {number for number, _, _ in SECTIONS}:
        kept = json.loads(out.read_text()).get("sections", {})
        sections = {**{k: v for k, v in kept.items() if k not in sections}, **sections}
    order = sorted(sections)
    results = {"machine": machine(), "quick": args.quick,
               "sections": {k: sections[k] for k in order}}
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
