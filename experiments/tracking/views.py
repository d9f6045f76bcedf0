"""What the MLflow UI shows first, told by the link: a shared view kept on the experiment.

MLflow 3.17's runs page takes few settings from its URL (the order, a filter) and none of
its columns. A link with `viewStateShareKey=KEY` loads the experiment tag
`mlflow.sharedViewState.KEY` instead: plain JSON with the page's search settings and its
UI state (columns, grouping, which runs the charts hide). Checked in headless Chromium
(tests/test_ui.py): the page then shows the chosen columns at once. The UI ignores the
shared state when the URL carries a search setting itself (`orderByKey`, say), so the
order goes into the state. The runs table renders the columns that fit the window,
metrics, then params, then tags: few columns, the answer's first.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
from typing import Any

PREFIX = "mlflow.sharedViewState."


def key(sweep: str, view: str) -> str:
    """A URL-safe key for one of a sweep's views (sweep names may hold any character)."""
    digest = hashlib.sha256(sweep.encode()).hexdigest()[:10]
    return f"runner-{view}-{digest}"


def link(base: str, experiment_id: str, view_key: str) -> str:
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?"
            f"workflowType=machine_learning&viewStateShareKey={urllib.parse.quote(view_key)}")


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def runs_view(metric: str, goal: str, params: list[str], sweep: str,
              group_by: str | None = None) -> dict[str, Any]:
    """The runs ordered by the metric, best first, with the metric, the searched params
    and each run's `result` (complete, pruned after epoch k, diverged ...) as columns;
    every run in the charts (the UI's default hides all but 10). With `group_by`, runs
    are grouped by that tag (the ablation's grad mode), each group's mean on its row."""
    columns = [_column("metrics", metric), *(_column("params", p) for p in params),
               _column("tags", "result")]
    # The trials' runs only (each has a role): the parent run would be a group of its own.
    # Always the sweep's own runs: another sweep may join its experiment later (a W&B
    # project), and a view written before that would show both.
    where = ["tags.role LIKE '%'", f"tags.sweep = '{sweep}'"]  # no quote in a name (NAME_RE)
    state: dict[str, Any] = {
        "orderByKey": _column("metrics", metric), "orderByAsc": goal == "minimize",
        "selectedColumns": columns, "runsHiddenMode": "SHOW_ALL",
        "searchFilter": " and ".join(where)}
    if group_by:
        state["groupBy"] = {"aggregateFunction": "average",
                            "groupByKeys": [{"mode": "tag", "groupByData": group_by}]}
        state["groupsExpanded"] = {}
    return state


def share(client: Any, experiment_id: str, view_key: str, state: dict[str, Any]) -> None:
    """Keep the view on the experiment; a no-op when it is there already. Two commands
    writing the same view at once may collide in the store: the same value, so a retry
    settles it."""
    tag, value = PREFIX + view_key, json.dumps(state, sort_keys=True)
    for attempt in range(3):
        if client.get_experiment(experiment_id).tags.get(tag) == value:
            return
        try:
            client.set_experiment_tag(experiment_id, tag, value)
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.2)
