"""Command line of the sweep runner: parse, call one library function, render, exit.

Bad input ends with one line on stderr and exit code 2, before anything is written.
Each command imports its library function when it runs, so that `--help` and input
checks never pay for MindSpore, MLflow or Optuna.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable

from experiments.core.config import ConfigError, UserError, one_line
from experiments.runtime import infra, interrupts, progress, streams, workers
from experiments.search.spec.options import SweepIncomplete

# A sweep stopped short of its budget (workers died, the store or the network failed);
# autodiff checks that fail.
EXIT_INCOMPLETE = 1
EXIT_NOT_IDENTICAL = 1  # a replay whose metrics are not bit-identical to its run's
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = workers.EXIT_INTERRUPTED


def cmd_train(args: argparse.Namespace) -> int:
    from experiments.core import config as cfg

    config = cfg.build(cfg.parse_overrides(args.set))
    experiment = cfg.check_text(args.experiment.strip(), "--experiment")
    from experiments.tracking.store import tracking_uri
    from experiments.tracking.tracked_fit import train_once

    outcome = train_once(config, experiment, args.run_name or f"train-{config.grad_mode}",
                         progress.say, progress.EpochBars(config.epochs))
    progress.say(f"run {outcome.run_id} in experiment '{experiment}' ({tracking_uri()})")
    if outcome.diverged:
        progress.say(f"error: training diverged: {outcome.diverged}; run marked FAILED")
        return EXIT_DIVERGED
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from experiments.search.spec.options import SweepOptions, default_workers, parse_workers
    from experiments.search.sweep import run_sweep

    # A worker's terminal is its parent's: the parent alone prints lines and the bar.
    progress.be_quiet(args.quiet or args.parent_run is not None)
    # The flag, or else RUNNER_WORKERS (a default for scripts); --devices decides alone.
    workers = parse_workers(args.workers) if args.workers is not None else \
        None if args.devices or args.parent_run else default_workers()
    text = run_sweep(SweepOptions(
        path=args.sweep, sets=tuple(args.set or ()), n_trials=args.n_trials, workers=workers,
        storage=args.storage, dry_run=args.dry_run, allow_change=args.allow_change,
        parent_run=args.parent_run, pin_cpu=args.pin_cpu, quiet=args.quiet,
        devices=args.devices))
    if text:
        print(text)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from experiments.search.spec.options import SweepOptions
    from experiments.search.status import status

    print(status(SweepOptions(path=args.sweep, sets=tuple(args.set or ()),
                              n_trials=args.n_trials, storage=args.storage)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    target = args.experiment or args.sweep
    if not target:
        raise ConfigError("compare: give a sweep file or --experiment NAME")
    if args.top < 1:
        raise ConfigError(f"--top: expected an integer >= 1, got {args.top}")
    from experiments.search.spec.sweepfile import load
    from experiments.tracking.lookup import local_experiments, store_name

    # An unknown experiment is told before MLflow and pandas are imported (22 s before).
    name = load(target).experiment if target.endswith((".yaml", ".yml", ".json")) else target
    known = local_experiments()
    if known is not None and name not in known:
        raise ConfigError(f"no MLflow experiment named '{name}' in {store_name()}")
    from experiments.search.report import report
    from experiments.tracking.store import client

    print(report(target, client(create=False), args.top, args.csv, args.history))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from experiments.tracking.replay import replay

    report = replay(args.run_id, args.force, progress.say,
                    lambda epochs: progress.EpochBars(epochs, prefix="replay "))
    print(report.text())
    return 0 if report.identical else EXIT_NOT_IDENTICAL


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    from experiments.search.spec.options import check_proxy

    check_proxy(args.storage, args.port)
    from experiments.search.study.storage import serve_proxy

    serve_proxy(args.storage, args.host, args.port, progress.say)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from experiments.tracking import ui

    return ui.serve(args.host, args.port, args.verbose, progress.say)


def cmd_predict(args: argparse.Namespace) -> int:
    from experiments.search.predict import predict_files

    result = predict_files(args.model, args.images)
    width = max(len(p) for p in args.images)
    label = "class" if "class" in result.columns else "digit"  # a task's own data: classes
    for path, (_, row) in zip(args.images, result.iterrows(), strict=True):
        print(f"{path:<{width}}  " + ("blank: nothing drawn" if row["blank"] else
                                      f"{label} {int(row[label])}  probability "
                                      f"{row['probability']:.4f}"))
    return 0


def cmd_autodiff(args: argparse.Namespace) -> int:
    from experiments.core import autodiff

    text, ok = autodiff.run(args.seed)
    print(text)
    return 0 if ok else EXIT_INCOMPLETE


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one `error:` line and exit 2 like any bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="runner.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    set_help = "override a config key, e.g. --set learning_rate=0.1 --set data.path=DIR"

    t = sub.add_parser("train", help="train once and record one MLflow run")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    t.add_argument("--experiment", default="train", help="MLflow experiment name")
    t.add_argument("--run-name", default="", help="MLflow run name")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="run an Optuna study from a sweep file")
    s.add_argument("sweep", help="sweep YAML file, e.g. sweeps/lr.yaml")
    s.add_argument("--n-trials", type=int, default=None, help="override the global budget")
    s.add_argument("--workers", default=None, metavar="N|auto",
                   help="worker processes on this machine: a number, or auto (the default: "
                        "one per usable core, pinned; one per device with --devices; "
                        "RUNNER_WORKERS sets another default)")
    s.add_argument("--devices", default=None, metavar="IDS",
                   help="device ids, e.g. 0,1,2,3: one worker per device (with --set "
                        "device=GPU or Ascend; recorded as device_id)")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL (postgresql://... for several machines, "
                        "grpc://HOST:PORT through `storage-proxy`); default: a journal file "
                        "in mlruns/optuna/")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    s.add_argument("--allow-change", action="store_true",
                   help="continue a study whose sweep file changed (not its metric); the "
                        "change and the new file are recorded on the parent run")
    s.add_argument("--quiet", action="store_true", help="print only the summary")
    s.add_argument("--dry-run", action="store_true",
                   help="validate, show the space and the first configs, write nothing")
    s.add_argument("--parent-run", default=None, help=argparse.SUPPRESS)
    s.add_argument("--pin-cpu", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_sweep)

    st = sub.add_parser("status", help="where a sweep stands (read-only)")
    st.add_argument("sweep", help="sweep YAML file")
    st.add_argument("--storage", default=None, help="Optuna storage URL, as for sweep")
    st.add_argument("--n-trials", type=int, default=None,
                    help="the budget to count against (default: the one the sweep last ran "
                         "with)")
    st.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    st.set_defaults(func=cmd_status)

    c = sub.add_parser("compare", help="compare a sweep's runs as a table, CSV or Parquet")
    c.add_argument("sweep", nargs="?", help="sweep YAML file (or use --experiment)")
    c.add_argument("--experiment", default=None, help="MLflow experiment name")
    c.add_argument("--top", type=int, default=10, help="rows to print")
    c.add_argument("--csv", default=None, help="write all runs to .csv or .parquet")
    c.add_argument("--history", default=None, help="write per-epoch history (long form)")
    c.set_defaults(func=cmd_compare)

    rp = sub.add_parser("replay", help="train a recorded run again and check it is "
                                          "bit-identical")
    rp.add_argument("run_id", metavar="RUN_ID", help="the MLflow run id of a training")
    rp.add_argument("--force", action="store_true",
                    help="replay even where versions or data differ from the recorded ones; "
                         "each difference is tagged on the new run")
    rp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("storage-proxy", help="Optuna's gRPC storage proxy in front of a "
                                              "database, for many workers")
    sp.add_argument("--storage", required=True,
                    help="the study database, e.g. postgresql://user:pass@host/optuna")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    sp.add_argument("--port", type=int, default=13000)
    sp.set_defaults(func=cmd_storage_proxy)

    u = sub.add_parser("ui", help="the MLflow UI on the project's store")
    u.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--verbose", action="store_true", help="show MLflow's server log")
    u.set_defaults(func=cmd_ui)

    r = sub.add_parser("predict", help="predict digits from images with a logged model")
    r.add_argument("--model", required=True, help="RUN_ID, or best:SWEEP.yaml")
    r.add_argument("images", nargs="+", help="PNG/JPEG files, any size or mode")
    r.set_defaults(func=cmd_predict)

    a = sub.add_parser("autodiff", help="check the seed's has_aux / stop_gradient example")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=cmd_autodiff)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except ConfigError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    func: Callable[[argparse.Namespace], int] = args.func
    if func in (cmd_train, cmd_sweep, cmd_replay, cmd_ui):
        # SIGTERM ends like Ctrl-C: runs and trials closed as interrupted, then exit 130.
        # The other commands only read: Python's own Ctrl-C stops them at once. A worker's
        # parent says what an interrupted sweep waits for; the worker says nothing.
        interrupts.install(None if getattr(args, "parent_run", None) else streams.say_now)
    try:
        return func(args)
    except UserError as exc:
        for line in getattr(exc, "lines", (str(exc),)):  # a sweep file's every mistake
            print(f"error: {one_line(line)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (SweepIncomplete, infra.InfrastructureDown) as exc:
        if isinstance(exc, infra.InfrastructureDown) and getattr(args, "parent_run", None):
            return workers.stopped_by(exc.broke)
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except Exception as exc:
        broke = infra.what_broke(exc)
        if not broke:
            raise
        if getattr(args, "parent_run", None):
            return workers.stopped_by(broke)
        # The store, its disk or the network, not the input: one line, and a rerun resumes.
        print(f"error: {one_line(broke)}; nothing finished is lost: fix it, then rerun the "
              "same command", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        if func is cmd_sweep and not args.parent_run:
            print("interrupted: finished work is saved; rerun the same command to resume",
                  file=sys.stderr)
        elif func is cmd_train:
            print("interrupted: the run, if it started, is closed KILLED", file=sys.stderr)
        elif func is cmd_replay:
            print("interrupted: the replay's run, if it started, is closed KILLED; the "
                  "recorded run is untouched", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # A reader that stops early (`| head`) or a terminal that hangs up never stops the work.
    streams.guard()
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's INFO/WARNING chatter hides progress
    code = main()
    # The command is over and everything it wrote is closed (stores commit every write).
    # The runtimes' own shutdown (MindSpore's above all) took 1.7 s after the main job's
    # last line, 12% of it (measured), to free memory the OS frees at once: skipped. A
    # Ctrl-C in between must not turn a finished sweep into exit 130.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
