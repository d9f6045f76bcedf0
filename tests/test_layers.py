"""The layers are contracts: import-linter checks them, and these tests make CI fail when
one breaks (and show that the check can fail)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def lint(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT)], cwd=folder, capture_output=True, text=True, timeout=120)


def test_import_contracts_are_kept():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "6 kept, 0 broken" in result.stdout


def test_an_upward_import_or_a_cycle_breaks_a_contract(tmp_path):
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    model = tmp_path / "experiments" / "core" / "model.py"
    text = model.read_text()
    # The training core reaching up into tracking (which imports MLflow)...
    model.write_text(text.replace("from mindspore import nn",
                                  "from mindspore import nn\n\nimport experiments.tracking.store"))
    # ...and two search modules importing each other, the lowest room reaching the top.
    compare = tmp_path / "experiments" / "search" / "spec" / "sweepfile.py"
    compare.write_text(compare.read_text() + "\nimport experiments.search.dryrun  # noqa\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    broken = re.findall(r"^(.+) BROKEN$", result.stdout, re.MULTILINE)
    assert set(broken) == {"Layers: search > tracking > core > runtime",
                           "Search rooms: commands > session > runs > trials > study > spec",
                           "The training core imports neither MLflow nor Optuna",
                           "No import cycles between sibling modules or packages"}, broken


def test_nothing_below_the_cli_imports_it():
    for path in (ROOT / "experiments").rglob("*.py"):
        assert not re.search(r"^\s*(import runner|from runner )", path.read_text(), re.M), path


def test_private_apis_of_dependencies_stay_behind_one_module():
    """Optuna's private API only in search/study/internals.py, MLflow's only in
    tracking/store.py."""
    private = {r"\._storage\b|\._trial_id\b|\._study_id\b|\._sampler\b":
               "experiments/search/study/internals.py",
               r"\._tracking_client\b": "experiments/tracking/store.py"}
    for path in (ROOT / "experiments").rglob("*.py"):
        for pattern, home in private.items():
            if re.search(pattern, path.read_text()):
                assert path == ROOT / home, (path, pattern)


def test_every_run_tag_is_written_by_the_batch_write():
    """MLflow's single-tag write collides when two processes set the same new tag at once
    (tests/test_two_commands.py); its batch write retries. One writer, MlflowRun."""
    for path in (ROOT / "experiments").rglob("*.py"):
        assert not re.search(r"\.set_tag\(", path.read_text()), path
