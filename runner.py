"""Command line of the sweep runner: where data, training, tracking and Optuna meet.

Bad input ends with one line on stderr and exit code 2, before anything is written.
Heavy imports (MindSpore, MLflow, Optuna) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable

from experiments.config import ConfigError

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 130


def _sigterm_as_interrupt() -> None:
    """SIGTERM ends like Ctrl-C: runs and trials are closed as interrupted, then exit 130."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def load_data(path: str, download: bool):  # noqa: ANN201
    from experiments import data
    from experiments.progress import say

    def warn(message: str) -> None:
        say(f"WARNING: {message}")

    mnist = data.resolve(path, download, warn)
    if mnist.fallback_reason:
        say(f"data: offline sample {mnist.source} ({len(mnist.train_labels)} train / "
            f"{len(mnist.test_labels)} test), digest {mnist.digest}")
    return mnist


def cmd_train(args: argparse.Namespace) -> int:
    from experiments import config as cfg

    config = cfg.build(cfg.parse_overrides(args.set))
    experiment = args.experiment.strip()
    if not experiment:
        raise ConfigError("--experiment: expected a non-empty experiment name")
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


def cmd_autodiff(args: argparse.Namespace) -> int:
    from experiments import autodiff

    grads, x = autodiff.gradients(args.seed)
    results = autodiff.checks(grads, x)
    print(autodiff.report(grads, results))
    return 0 if all(c.ok for c in results) else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runner.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    set_help = "override a config key, e.g. --set learning_rate=0.1 --set data.path=DIR"

    t = sub.add_parser("train", help="train once and record one MLflow run")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help=set_help)
    t.add_argument("--experiment", default="train", help="MLflow experiment name")
    t.add_argument("--run-name", default="", help="MLflow run name")
    t.set_defaults(func=cmd_train)

    a = sub.add_parser("autodiff", help="check the seed's has_aux / stop_gradient example")
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=cmd_autodiff)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _sigterm_as_interrupt()
    from experiments.data import DataError

    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    os.environ.setdefault("GLOG_v", "3")  # MindSpore's INFO/WARNING chatter hides progress
    sys.exit(main())
