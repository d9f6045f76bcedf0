"""`runner.py ui`: MLflow's UI on the project's store, opening on the runs, not on GenAI.

MLflow 3 opens an experiment in its GenAI view ("Overview": traces, tokens), where a sweep
shows nothing; `?workflowType=machine_learning` opens the model-training view with the
runs table, so every link printed here carries it. The server runs without MLflow's job
runner and task consumers (GenAI evaluation jobs a sweep never uses: measured 10 processes
and 2.4 GB resident with them, 2 and 0.5 GB without), and its request log goes to
`mlruns/ui.log` unless --verbose.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from experiments.core.config import UserError
from experiments.runtime import interrupts
from experiments.tracking import views
from experiments.tracking.lookup import local_experiments, store_name
from experiments.tracking.store import MLRUNS, client, server_args

LOG = MLRUNS / "ui.log"


def base_url() -> str:
    """Where the UI is: the tracking server the runs go to, or `runner.py ui`'s default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else \
        "http://127.0.0.1:5000"


def link(base: str, experiment_id: str, metric: str | None = None, goal: str = "maximize",
         sweep: str | None = None) -> str:
    """A UI link that opens the model-training view of an experiment's runs.

    With a metric, the runs table is ordered by it, best first. That also shows the
    trial runs as rows: the UI nests child runs under a collapsed parent only while
    the table is ordered by creation time (checked in Chromium, MLflow 3.17.2), so a
    newcomer would otherwise see one row, the parent, and none of the trials.
    """
    query = "workflowType=machine_learning"
    if metric:
        key = urllib.parse.quote(f"metrics.`{metric}`", safe=".")
        query += f"&orderByKey={key}&orderByAsc={'true' if goal == 'minimize' else 'false'}"
    if sweep:  # one sweep of several sharing an experiment (a W&B project): its runs only
        query += "&searchFilter=" + urllib.parse.quote(f"tags.sweep = '{sweep}'", safe="")
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def experiment_lines(c: Any, base: str) -> list[str]:
    """One line per experiment with runs, newest first; one per sweep where several sweeps
    share an experiment (W&B's `project`), each link showing that sweep's runs only."""
    lines = []
    for exp in c.search_experiments(order_by=["last_update_time DESC"]):
        if not c.search_runs([exp.experiment_id], max_results=1):
            continue
        parents = c.search_runs([exp.experiment_id], "tags.`sweep.parent` = 'true'",
                                max_results=1000)  # newest first
        if not parents:
            lines.append(f"{exp.name} (runs): {link(base, exp.experiment_id)}")
        names = {run.data.tags.get("sweep", exp.name) for run in parents}
        shown = set()
        for run in parents:
            name = run.data.tags.get("sweep", exp.name)
            if name in shown:
                continue
            shown.add(name)
            params = run.data.params
            if views.PREFIX + views.key(name, "runs") in exp.tags:  # the sweep's own view
                url = views.link(base, exp.experiment_id, views.key(name, "runs"))
            else:
                url = link(base, exp.experiment_id, metric=params.get("metric"),
                           goal=params.get("goal", "maximize"),
                           sweep=name if len(names) > 1 or name != exp.name else None)
            lines.append(f"{exp.name} (sweep '{name}'): {url}")
            if views.PREFIX + views.key(name, "ablation") in exp.tags:
                lines.append(f"{exp.name} (sweep '{name}', the ablation by grad mode): "
                             + views.link(base, exp.experiment_id, views.key(name, "ablation")))
    return lines


def serve(host: str, port: int, verbose: bool, say: Callable[[str], None]) -> int:
    """Run the server until Ctrl-C (exit 0) or until it stops by itself (its exit code)."""
    remote = os.environ.get("MLFLOW_TRACKING_URI", "")
    if remote.startswith(("http://", "https://")):
        return _point_at(remote.rstrip("/"), say)
    _check_port(host, port)
    # A UI on no runs is a UI started in the wrong folder: said at once, nothing created
    # (it used to create an empty store and say "no runs yet", naming no path).
    store, known = store_name(), local_experiments()
    if known is not None and not any(known.values()):  # told before MLflow loads or locks
        raise UserError(f"no runs in the MLflow store {store}: start `runner.py ui` in the "
                        "folder you ran `sweep` or `train` from, or run one here first")
    c = client(create=False)
    lines = experiment_lines(c, "")
    if not lines:
        raise UserError(f"no runs in the MLflow store {store}: start `runner.py ui` in the "
                        "folder you ran `sweep` or `train` from, or run one here first")
    interrupts.waiting_for("the MLflow server to stop")
    MLRUNS.mkdir(exist_ok=True)  # the log's folder, also when the store is elsewhere
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = None if verbose else open(LOG, "a")  # noqa: SIM115 - open while the server runs
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *server_args(host, port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True, preexec_fn=_die_with_parent)
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    try:
        if not _wait(f"{base}/health", proc):
            if interrupts.requested():
                return 0
            why = "did not answer in 120 s" if proc.poll() is None else \
                f"stopped (exit {proc.returncode})"
            say(f"error: mlflow server {why}; see " + ("its output above" if verbose else
                                                       str(LOG)))
            return proc.returncode or 1
        lines = experiment_lines(c, base)
        say(f"MLflow UI at {base} on the store {store} (Ctrl-C stops it)"
            + ("" if verbose else f"; its log: {LOG}"))
        for line in lines:
            say(f"  {line}")
        while proc.poll() is None and not interrupts.requested():
            time.sleep(0.3)
        return 0 if interrupts.requested() else proc.returncode
    except KeyboardInterrupt:  # a second Ctrl-C
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if out:
            out.close()


def _check_port(host: str, port: int) -> None:
    """A taken port is bad input: the server would die on it, and a UI already there
    (another `runner.py ui`, say) would answer our health check in its place."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: a port is 1-65535")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: {host}:{port} is in use (another server?); "
                            "choose another --port") from None
        raise UserError(f"--host {host}: cannot listen there ({exc.strerror or exc})") from None


def _die_with_parent() -> None:
    """In the server's process, before exec: Linux sends it SIGTERM when this process dies,
    however it dies (a closed terminal's SIGHUP, kill -9), so no server outlives its
    command; the server stops its own workers on SIGTERM. Its own session keeps a
    terminal's Ctrl-C to us, and we stop it once."""
    interrupts.die_with_parent()


def _point_at(server: str, say: Callable[[str], None]) -> int:
    """MLFLOW_TRACKING_URI is a tracking server: its UI is already there, nothing to start."""
    try:
        with urllib.request.urlopen(f"{server}/health", timeout=10):
            pass
    except (OSError, ValueError) as exc:
        raise UserError(f"MLFLOW_TRACKING_URI={server}: no MLflow server answers there "
                        f"({getattr(exc, 'reason', None) or exc})") from None
    say(f"MLflow UI at {server} (the tracking server of MLFLOW_TRACKING_URI; nothing to "
        "start here)")
    for line in experiment_lines(client(), server) or ["no runs yet"]:
        say(f"  {line}")
    return 0


def _wait(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
    """Whether the server answers; False if it stops, does not answer in time, or Ctrl-C."""
    end = time.time() + timeout_s
    while time.time() < end and proc.poll() is None and not interrupts.requested():
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except OSError:
            time.sleep(0.3)
    return False
