"""Command line of the sweep runner: where data, training, tracking and Optuna meet.

Bad input ends with one line on stderr and exit code 2, before anything is written.
Heavy imports (MindSpore, MLflow, Optuna) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Callable

from experiments import interrupts
from experiments.config import ConfigError, one_line

EXIT_INCOMPLETE = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130
STORAGE_PREFIXES = ("postgresql://", "postgresql+psycopg2://", "mysql://", "sqlite:///",
                    "journal:")


FALLBACK_ENV = "RUNNER_DATA_FALLBACK"  # set for sweep workers once the parent fell back


def load_data(path: str, download: bool):
    from experiments import data
    from experiments.progress import say

    def warn(message: str) -> None:
        say(f"WARNING: {message}")

    if os.environ.get(FALLBACK_ENV) and not os.path.exists(path):
        return data.load_offline_sample(reason=os.environ[FALLBACK_ENV])
    mnist = data.resolve(path, download, warn)
    if mnist.fallback_reason:
        say(f"data: offline sample {mnist.source} ({len(mnist.train_labels)} train / "
            f"{len(mnist.test_labels)} test), digest {mnist.digest}")
    return mnist


def cmd_train(args: argparse.Namespace) -> int:
    from experiments import config as cfg

    config = cfg.build(cfg.parse_overrides(args.set))
    experiment = args.experiment.strip()
    if not experiment or not experiment.isprintable() or len(experiment) > 500:
        raise ConfigError(f"--experiment: expected a name of 1-500 printable characters, got "
                          f"{args.experiment!r}")
    mnist = load_data(config.data.path, config.data.download)

    from experiments import progress, tracking
    from experiments.run import tracked_fit
    from experiments.train import Prepared, Trainer

    client = tracking.client()
    outcome = tracked_fit(config, mnist, Prepared.from_mnist(mnist), Trainer(config.grad_mode),
                          client, experiment, args.run_name or f"train-{config.grad_mode}",
                          callbacks=progress.epoch_bars(config.epochs))
    progress.say(f"run {outcome.run_id} in experiment '{experiment}' ({tracking.tracking_uri()})")
    if outcome.diverged:
        progress.say(f"error: training diverged: {outcome.diverged}; run marked FAILED")
        return EXIT_DIVERGED
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from experiments import config as cfg
    from experiments import sweepfile

    spec = sweepfile.load(args.sweep, cfg.parse_overrides(args.set))
    if args.n_trials is not None:
        if args.n_trials < 1:
            raise ConfigError(f"--n-trials: expected an integer >= 1, got {args.n_trials}")
        spec = dataclasses.replace(spec, n_trials=args.n_trials)
    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers: expected an integer from 1 to 64, got {args.workers}")
    if args.storage and not args.storage.startswith(STORAGE_PREFIXES):
        raise ConfigError(f"--storage: expected a URL starting with {', '.join(STORAGE_PREFIXES)}"
                          f", got {args.storage!r}")
    if args.dry_run:
        from experiments.dryrun import describe

        print(describe(spec))
        return 0
    from experiments import study
    from experiments.tracking import MLRUNS

    store_url = args.storage or f"journal:{(MLRUNS / 'optuna' / 'journal.log').resolve()}"
    recovery = study.Recovery()
    # A study of this name that asks another question is refused before anything is written.
    store = study.storage(store_url, MLRUNS, recovery, create=False)
    changed = study.check(spec, store, args.allow_change) if store is not None else []
    config = cfg.build(spec.fixed)
    mnist = load_data(config.data.path, config.data.download)

    from experiments import progress, sweep, tracking
    from experiments.train import Prepared

    client = tracking.client()
    recovery.close_runs = sweep.close_runs(client)
    store = store or study.storage(store_url, MLRUNS, recovery)
    optuna_study = study.open_study(spec, store)
    deadline = time.time() + spec.timeout_s if spec.timeout_s else None
    worker = args.parent_run is not None
    if worker:
        parent = args.parent_run
        if args.pin_cpu is not None:
            os.sched_setaffinity(0, {args.pin_cpu})
    else:
        recovered = study.recover(optuna_study, recovery)
        if recovered:
            progress.say(f"{recovered} trial(s) left RUNNING by a dead process: marked FAIL, "
                         "their MLflow runs KILLED, their params queued for one retry")
        orphans = sweep.close_orphans(client, optuna_study)
        if orphans:
            progress.say(f"{orphans} MLflow run(s) of finished trials left RUNNING by a process "
                         "that is gone: closed as KILLED")
        parent = sweep.parent_run(client, spec, sweep.sweep_text(args.sweep), changed)
    bar = progress.trial_bar(study.budget(spec), len(study.finished(optuna_study)),
                             enabled=not worker)

    def done(t) -> None:
        sweep.tag_trial_runs(client, t)
        bar.update(1)
        progress.say(sweep.trial_line(t, spec.metric))

    end = "failed"
    try:
        if args.workers > 1 and not worker:
            died = run_workers(args, parent, store_url, mnist.fallback_reason,
                               lambda: study.recover(optuna_study, recovery))
            # Workers stop at the budget or the deadline; a shortfall without a deadline
            # means some died (the others may have made up for them).
            end = ("budget" if len(study.finished(optuna_study)) >= study.budget(spec)
                   else "workers died" if died else "timeout" if deadline else "failed")
        else:
            ctx = sweep.Worker(spec, client, mnist, Prepared.from_mnist(mnist), parent,
                               lambda prefix, epochs: progress.epoch_bars(
                                   epochs, prefix, enabled=not worker))
            end = study.work(optuna_study, spec, ctx.objective, done, recovery, deadline)
    except KeyboardInterrupt:
        end = "interrupted"
        raise
    finally:
        bar.close()
        if not worker:
            with interrupts.shielded():
                sweep.finalize(client, parent, optuna_study, spec, end)
    if not worker:
        print(sweep.summary(optuna_study, spec, parent, end))
    if end == "workers died":
        raise sweepfile.SweepIncomplete(
            "worker processes died before the budget was met; their trials are marked FAIL "
            "and queued for a retry: rerun the same command to resume")
    return 0


def run_workers(args: argparse.Namespace, parent: str, store_url: str, fallback: str,
                recover: Callable[[], int]) -> int:
    """Start N worker processes on the same study, pinned one per core where cores allow.

    Returns how many died (exited other than 0); the trials of a worker that died are
    recovered at once, so that the others retry them.
    """
    import subprocess
    import time

    cpus = sorted(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    if fallback:
        env[FALLBACK_ENV] = fallback
    procs = []
    for i in range(args.workers):
        cmd = [sys.executable, os.path.abspath(__file__), "sweep", args.sweep, "--storage",
               store_url, "--parent-run", parent]
        # One core each measured fastest on 2 cores (benchmarks/bench.py, section 4).
        if args.workers <= len(cpus) and os.environ.get("RUNNER_PIN_WORKERS", "1") != "0":
            cmd += ["--pin-cpu", str(cpus[i])]
        if args.n_trials is not None:
            cmd += ["--n-trials", str(args.n_trials)]
        for item in args.set or []:
            cmd += ["--set", item]
        # A process group of their own: a terminal's Ctrl-C reaches the parent only, which
        # forwards one SIGTERM. Signalled twice (by the terminal and by the parent), a
        # worker would stop inside the code that closes its runs.
        procs.append(subprocess.Popen(cmd, env=env, process_group=0))
    died: set[int] = set()
    while True:
        if interrupts.requested():
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            raise KeyboardInterrupt
        for i, p in enumerate(procs):
            if p.poll() not in (None, 0) and i not in died:
                died.add(i)
                recover()
        if all(p.poll() is not None for p in procs):
            return len(died)
        time.sleep(0.2)


def cmd_compare(args: argparse.Namespace) -> int:
    target = args.experiment or args.sweep
    if not target:
        raise ConfigError("compare: give a sweep file or --experiment NAME")
    if args.top < 1:
        raise ConfigError(f"--top: expected an integer >= 1, got {args.top}")
    for option, path in (("--csv", args.csv), ("--history", args.history)):
        if path and not path.endswith((".csv", ".parquet")):
            raise ConfigError(f"{option}: expected a path ending in .csv or .parquet, got {path}")
    import pandas as pd

    from experiments import compare, tracking

    client = tracking.client()
    frame = compare.runs(target, client)
    name = compare.experiment_name(target)
    metric, _ = compare.sweep_metric(name, client)
    shown = [c for c in ("trial", "state", "grad_mode") if c in frame]
    shown += [c for c in frame.columns if c in ("epochs", "batch_size", "learning_rate")]
    shown += [c for c in (f"final_{metric}", "best_epoch", f"best_{metric}", "duration_s",
                          "run_id") if c in frame]
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(frame[shown].head(args.top).to_string(index=False) if len(frame) else
              f"no runs in experiment '{name}'")
    if args.csv:
        compare.write(frame, args.csv)
        print(f"wrote {len(frame)} runs to {args.csv}")
    if args.history:
        hist = compare.history(name, client)
        compare.write(hist, args.history)
        print(f"wrote {len(hist)} points to {args.history}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from experiments import tracking

    tracking.client()  # create the store once, under the lock, before the server opens it
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", *tracking.server_args(
        args.host, args.port)])
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from experiments.predict import as_digits, resolve_model

    digits = as_digits(args.images)
    from experiments import tracking

    client = tracking.client()
    run_id = resolve_model(client, args.model)
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking.tracking_uri())
    with warnings.catch_warnings():  # MLflow's advice on type hints; see pyfunc_model.py
        warnings.simplefilter("ignore", UserWarning)
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    result = model.predict(digits)
    width = max(len(p) for p in args.images)
    for path, (_, row) in zip(args.images, result.iterrows(), strict=True):
        print(f"{path:<{width}}  digit {int(row['digit'])}  probability {row['probability']:.4f}")
    return 0


def cmd_autodiff(args: argparse.Namespace) -> int:
    from experiments import autodiff

    grads, x = autodiff.gradients(args.seed)
    results = autodiff.checks(grads, x)
    print(autodiff.report(grads, results))
    return 0 if all(c.ok for c in results) else 1


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
    s.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL (postgresql://... for several machines); "
                        "default: a journal file in mlruns/optuna/")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    s.add_argument("--allow-change", action="store_true",
                   help="continue a study whose sweep file changed (not its metric); the "
                        "change and the new file are recorded on the parent run")
    s.add_argument("--dry-run", action="store_true",
                   help="validate, show the space and sample configs, write nothing")
    s.add_argument("--parent-run", default=None, help=argparse.SUPPRESS)
    s.add_argument("--pin-cpu", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("compare", help="compare a sweep's runs as a table, CSV or Parquet")
    c.add_argument("sweep", nargs="?", help="sweep YAML file (or use --experiment)")
    c.add_argument("--experiment", default=None, help="MLflow experiment name")
    c.add_argument("--top", type=int, default=10, help="rows to print")
    c.add_argument("--csv", default=None, help="write all runs to .csv or .parquet")
    c.add_argument("--history", default=None, help="write per-epoch history (long form)")
    c.set_defaults(func=cmd_compare)

    u = sub.add_parser("ui", help="the MLflow UI on the project's store")
    u.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    u.add_argument("--port", type=int, default=5000)
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
    # SIGTERM ends like Ctrl-C: runs and trials closed as interrupted, then exit 130.
    interrupts.install()
    from experiments.compare import CompareError
    from experiments.data import DataError
    from experiments.predict import PredictError
    from experiments.sweepfile import SweepError, SweepIncomplete

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, DataError, SweepError, CompareError, PredictError) as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SweepIncomplete as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_INCOMPLETE
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's INFO/WARNING chatter hides progress
    sys.exit(main())
