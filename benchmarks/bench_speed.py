"""Section 8 of the benchmark: sweep speed, whole commands as a user runs them.

- the main job (`runner.py sweep sweeps/lr.yaml`, default flags) against the same command
  with `--workers 1`, and against each lever turned back off: the store made by MLflow's
  migrations (RUNNER_CACHE=off) and a model for every training (`models: all`);
- `sweeps/tiny.yaml`: 2 workers against 1, trials per minute of the whole command, and
  the default (`--workers auto`) against 1 worker for 1 and for 4 trials;
- on 60k images (the offline sample tiled, written as an MNIST folder): the runner's
  `sweeps/lr.yaml` against `benchmarks/peer_torch_sweep.py` (Optuna + PyTorch eager +
  MLflow, one process, the same sampler, pruner, budget and data), seconds per trained
  epoch of the whole command.

Every case of a round runs before the next round starts, so a slow spell of the machine
lands on all of them. The main job's results are checked equal across its cases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

from benchmarks import bench_common as C
from benchmarks.bench_sweeps import run_sweep

ROOT = Path(__file__).resolve().parent.parent


def _sweep(folder: Path, sweep: dict, *flags: str, env: dict | None = None) -> tuple[float, list]:
    """Run `runner.py sweep` in a fresh folder: (wall s, the study's trials)."""
    wall, _, trials = run_sweep(folder, sweep, *flags, env=env)
    return wall, trials


def _answer(trials: list) -> list:
    return sorted((t.number, t.state.name, t.value, tuple(sorted(t.params.items())))
                  for t in trials)


def main_job(quick: bool) -> list[dict]:
    sweep = yaml.safe_load((ROOT / "sweeps" / "lr.yaml").read_text())
    sweep["fixed"]["data.download"] = False
    cases = {"default": ({}, ()), "--workers 1": ({}, ("--workers", "1")),
             "store by migrations": ({"RUNNER_CACHE": "off"}, ()),
             "models: all": ({}, ())}
    walls: dict[str, list[float]] = defaultdict(list)
    answers = {}
    cache = tempfile.mkdtemp(prefix="bench-cache-")
    for _ in range(1 if quick else 3):
        for label, (env, flags) in cases.items():
            run = {**sweep, "models": "all"} if label == "models: all" else sweep
            with tempfile.TemporaryDirectory() as tmp:
                wall, trials = _sweep(Path(tmp), run, *flags,
                                      env={"RUNNER_CACHE": cache, **env})
            walls[label].append(wall)
            answers.setdefault(label, _answer(trials))
    same = all(a == answers["--workers 1"] for a in answers.values())
    load = C.workload(C.OFFLINE, batch=64, epochs=3, trials=12,
                      other="sweeps/lr.yaml (tpe, median pruner), whole command, fresh folder")
    note = ("the same 12 trials, states, values and params in every case" if same else
            "RESULTS DIFFER between cases")
    rows = [C.row("main job, whole command, default (--workers auto, 2 here)", load, "s",
                  walls["default"], "--workers 1", walls["--workers 1"], style="speed",
                  readme=True, note=note)]
    for label, what in (("store by migrations", "a new store from the cached template"),
                        ("models: all", "models of the top 3 trials (models: all before)")):
        rows.append(C.row(f"main job, lever: {what}", load, "s", walls["default"],
                          label, walls[label], style="speed", note=note))
    return rows


def tiny(quick: bool) -> list[dict]:
    sweep = yaml.safe_load((ROOT / "sweeps" / "tiny.yaml").read_text())
    cases = {"2 workers": ("--workers", "2"), "1 worker": ("--workers", "1"),
             "auto, 1 trial": ("--n-trials", "1"), "1 worker, 1 trial": ("--n-trials", "1",
                                                                      "--workers", "1")}
    walls: dict[str, list[float]] = defaultdict(list)
    for _ in range(1 if quick else 3):
        for label, flags in cases.items():
            with tempfile.TemporaryDirectory() as tmp:
                walls[label].append(_sweep(Path(tmp), sweep, *flags)[0])
    n = sweep["n_trials"]
    rate = {k: [n / w * 60 for w in v] for k, v in walls.items()}
    load = C.workload(C.OFFLINE, batch=128, epochs=2, trials=n,
                      other="sweeps/tiny.yaml (random), whole command")
    return [
        C.row("tiny sweep, whole command (trials/min), 2 workers", load, "trials/min",
              rate["2 workers"], "1 worker", rate["1 worker"], readme=True),
        C.row("tiny sweep cut to 1 trial, whole command, default (auto)",
              C.workload(C.OFFLINE, batch=128, epochs=2, trials=1), "s",
              walls["auto, 1 trial"], "--workers 1", walls["1 worker, 1 trial"],
              style="speed", note="auto starts no more workers than trials left"),
    ]


def peer_60k(quick: bool) -> list[dict]:
    from experiments.core.data import SPLITS, write_idx

    mnist = C.tiled()
    sweep = yaml.safe_load((ROOT / "sweeps" / "lr.yaml").read_text())
    if quick:
        sweep["n_trials"] = 4
    per_epoch: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as data:
        for split, x, y in (("train", mnist.train_images, mnist.train_labels),
                            ("test", mnist.test_images, mnist.test_labels)):
            Path(data, split).mkdir()
            write_idx(Path(data, split, SPLITS[split][0]), x)
            write_idx(Path(data, split, SPLITS[split][1]), y)
        ours = {**sweep, "fixed": {**sweep["fixed"], "data.path": data,
                                   "data.download": False}}
        for _ in range(1 if quick else 2):
            for label, sweep_file in (("runner", ours), ("unordered", {**ours, "ordered": False})):
                with tempfile.TemporaryDirectory() as tmp:
                    wall, trials = _sweep(Path(tmp), sweep_file)
                per_epoch[label].append(wall / sum(len(t.intermediate_values) for t in trials))
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "sweep.yaml").write_text(yaml.safe_dump(sweep))
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.peer_torch_sweep",
                     str(Path(tmp) / "sweep.yaml"), data, tmp], cwd=ROOT, check=True,
                    capture_output=True, text=True).stdout
            peer = json.loads(out.strip().splitlines()[-1])
            per_epoch["peer"].append(peer["wall_s"] / peer["epochs"])
    load = C.workload(C.TILED, batch=64, epochs=3, trials=sweep["n_trials"],
                      other="sweeps/lr.yaml, whole command, default flags")
    peer = "Optuna + PyTorch eager + MLflow, one process"
    return [C.row("sweep seconds per trained epoch, runner vs PyTorch peer sweep script", load,
                  "s/epoch", per_epoch["runner"], peer, per_epoch["peer"], style="speed",
                  readme=True),
            C.row("sweep seconds per trained epoch, runner with `ordered: false`", load,
                  "s/epoch", per_epoch["unordered"], peer, per_epoch["peer"], style="speed",
                  readme=True, note="each trial decides on the trials done at that moment")]


def speed(quick: bool) -> list[dict]:
    try:
        import torch  # noqa: F401
        peer = peer_60k(quick)
    except ImportError:
        peer = []
    return main_job(quick) + tiny(quick) + peer
