"""A sweep's runs in pandas and `runner.py compare`: one typed row per run, the
history in long form, the paired ablation; replays and other sweeps left out."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import runner
from experiments.search import compare, report
from helpers import REPEATS, mlflow_client, run_cli


@pytest.mark.slow
def test_train_runs_have_their_grad_mode_in_history(store):
    assert runner.main(["train", "--set", "epochs=1", "--set", "data.download=false",
                        "--set", "grad_mode=stop_gradient", "--set", "batch_size=1000",
                        "--experiment", "solo"]) == 0
    client = mlflow_client(store)
    hist = compare.history("solo", client)
    assert len(hist) and set(hist["grad_mode"]) == {"stop_gradient"}
    assert set(compare.runs("solo", client)["grad_mode"]) == {"stop_gradient"}


@pytest.mark.slow
def test_sweeps_sharing_a_project_are_compared_apart(store):
    """Two sweeps in one W&B project share an experiment and their trial numbers: the
    noise table and test group runs by (sweep, trial)."""
    for name, seed in (("pa", 3), ("pb", 5)):
        text = REPEATS.replace("name: seeds", f"name: {name}\nproject: shared").replace(
            "repeats: 3", "repeats: 2").replace("seed: 3", f"seed: {seed}")
        (store / f"{name}.yaml").write_text(text)
        assert runner.main(["sweep", f"{name}.yaml"]) == 0
    from experiments.search import compare
    client = mlflow_client(store)
    frame = compare.runs("shared", client)
    assert set(frame["sweep"]) == {"pa", "pb"} and (frame["seeds"] == 2).all()
    text = report.report("shared", client, 10)
    assert "(4 seeds)" not in text and " of pa" in text and " of pb" in text


def test_runs_frame_has_typed_rows(project):
    client = mlflow_client(project)
    frame = compare.runs(str(project / "look.yaml"), client)
    assert len(frame) == 6
    assert sorted(frame["grad_mode"]) == ["has_aux", "has_aux", "no_aux", "no_aux",
                                          "stop_gradient", "stop_gradient"]
    # Each run's result in words; stop_gradient trains bit for bit as has_aux does.
    assert set(frame.loc[frame["grad_mode"] == "stop_gradient", "same_bits_as"]) == {
        "has_aux"}
    assert frame.loc[frame["grad_mode"] == "no_aux", "diverged_at"].str.match(
        r"epoch \d+, step \d+").all()
    assert frame["trial"].dtype == "Int64" and set(frame["trial"]) == {0, 1}
    assert frame["learning_rate"].dtype == np.float64
    assert frame["epochs"].dtype == np.int64 and set(frame["epochs"]) == {3}
    assert pd.api.types.is_float_dtype(frame["final_test_accuracy"])
    objective = frame[frame["role"] == "objective"]
    assert objective["final_test_accuracy"].is_monotonic_decreasing
    assert (objective["best_epoch"].between(1, 3)).all()
    assert (objective["best_test_accuracy"] >= objective["final_test_accuracy"]).all()
    assert frame["run_id"].is_unique and (frame["duration_s"] > 0).all()


def test_history_is_long_and_complete(project):
    client = mlflow_client(project)
    hist = compare.history("look", client)
    # The swept params ride along: the top curves plot without a merge.
    assert list(hist.columns) == ["run_id", "trial", "grad_mode", "learning_rate", "epoch",
                                  "metric", "value"]
    assert set(hist["learning_rate"]) == {0.2, 0.01}
    assert hist["epoch"].dtype == np.int64 and hist["value"].dtype == np.float64
    has_aux = hist[hist["grad_mode"] == "has_aux"]
    # 2 trials x 3 epochs x 7 metrics, each point once.
    assert len(has_aux) == 42 and set(has_aux["metric"]) == set(compare.EPOCH_METRICS)
    assert not has_aux.duplicated(["run_id", "epoch", "metric"]).any()
    frame = compare.runs("look", client)
    for _, row in frame[frame["grad_mode"] == "has_aux"].iterrows():
        last = has_aux[(has_aux.run_id == row.run_id) & (has_aux.metric == "test_accuracy")]
        assert last.sort_values("epoch")["value"].iloc[-1] == row.final_test_accuracy


def test_paired_pivot_matches_runs(project):
    frame = compare.runs("look", mlflow_client(project))
    pairs = compare.paired(frame)
    assert len(pairs) == 2
    for _, row in pairs.iterrows():
        mine = frame[frame["trial"] == row["trial"]].set_index("grad_mode")
        for mode in ("has_aux", "no_aux"):
            got, want = row[f"final_test_accuracy[{mode}]"], mine.loc[mode, "final_test_accuracy"]
            assert (np.isnan(got) and np.isnan(want)) or got == want
        diff = row["final_test_accuracy[no_aux - has_aux]"]
        expected = mine.loc["no_aux", "final_test_accuracy"] - mine.loc[
            "has_aux", "final_test_accuracy"]
        assert (np.isnan(diff) and np.isnan(expected)) or diff == pytest.approx(expected)
        assert row["diverged[no_aux]"] == bool(mine.loc["no_aux", "diverged"])


@pytest.mark.slow
def test_compare_cli_writes_csv_and_parquet(project):
    result = run_cli("compare", "look.yaml", "--csv", "out/runs.csv", "--history",
                     "out/history.parquet", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "final_test_accuracy" in result.stdout
    assert len(pd.read_csv(project / "out" / "runs.csv")) == 6
    assert len(pd.read_parquet(project / "out" / "history.parquet")) > 0
    bad = run_cli("compare", "--experiment", "nope", cwd=project)
    assert bad.returncode == 2 and "no MLflow experiment named 'nope'" in bad.stderr


def test_paired_has_no_answer_for_a_mode_that_did_not_run():
    """A variant that never ran was reported as diverged (NaN cast to bool is True)."""
    frame = pd.DataFrame({
        "trial": pd.array([0, 0, 1], dtype="Int64"), "grad_mode": ["has_aux", "no_aux",
                                                                   "has_aux"],
        "role": ["objective", "ablation", "objective"], "fail_kind": ["", "", ""],
        "diverged": [False, True, False], "final_test_accuracy": [0.9, 0.1, 0.8],
        "final_test_loss": [0.3, 9.0, 0.4], "final_train_loss": [0.2, 9.0, 0.3]})
    pairs = compare.paired(frame).set_index("trial")
    assert pairs.loc[0, "diverged[no_aux]"] is True or pairs.loc[0, "diverged[no_aux]"]
    assert pd.isna(pairs.loc[1, "diverged[no_aux]"])
    assert not pairs.loc[1, "diverged[has_aux]"]
    assert pd.isna(pairs.loc[1, "final_test_accuracy[no_aux - has_aux]"])


@pytest.mark.slow
def test_compare_top_prints_that_many_rows(project):
    result = run_cli("compare", "look.yaml", "--top", "1", cwd=project)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # The ablation's verdict first (a heading and a line per grad mode), then a header and
    # one run, then what one seed per configuration can say of the noise.
    assert lines[0].startswith("ablation (") and len(lines) == 7, lines
    assert lines[2].startswith("  no_aux: 2 trials, diverged in 2 of 2 (at epoch 1, step")
    assert lines[3].startswith("  stop_gradient: 2 trials") and lines[3].endswith(
        "identical to has_aux to the bit in 2 of 2 paired trials")
    assert "final_test_accuracy" in lines[4]
    assert lines[6].startswith("noise: unknown, one seed per configuration")
    best = compare.runs("look", mlflow_client(project)).iloc[0]
    assert best.run_id in lines[5]


def test_each_trial_run_carries_its_pictures(project, mnist):
    from PIL import Image

    client = mlflow_client(project)
    frame = compare.runs("look", client)
    run = frame[(frame["grad_mode"] == "has_aux")].iloc[0]
    folder = Path(client.download_artifacts(run.run_id, "", str(project / "pictures")))
    confusion = Image.open(folder / "confusion_matrix.png")
    digits = Image.open(folder / "test_digits.png")
    curves = Image.open(folder / "learning_curves.png")
    assert confusion.size == (60 + 440 + 20, 56 + 440 + 44)  # ten 44-pixel cells a side
    assert digits.size == (8 * 100, 3 * 110)  # 24 digits, 8 a row, at 3x scale
    assert curves.size == (900, 360)
    # The confusion matrix is drawn from the run's own predictions: its diagonal (the dark
    # cells of correct digits) holds most of the ink when accuracy is high.
    pixels = np.asarray(confusion.convert("L"), dtype=float)
    diagonal = np.mean([pixels[56 + 44 * k + 22, 60 + 44 * k + 5] for k in range(10)])
    off = np.mean([pixels[56 + 44 * k + 22, 60 + 44 * ((k + 5) % 10) + 5] for k in range(10)])
    assert run.final_test_accuracy > 0.8 and diagonal < off


@pytest.mark.parametrize("option, path", [("--csv", "/proc/x.csv"), ("--csv", "folder.csv"),
                                          ("--history", "/proc/x.parquet")])
def test_compare_refuses_outputs_it_cannot_write(project, option, path, monkeypatch, capsys):
    (project / "folder.csv").mkdir(exist_ok=True)
    before = sorted(p.name for p in project.iterdir())
    monkeypatch.chdir(project)
    argv = ["compare", "look.yaml", "--csv", "ok.csv", option, path] if option == "--history" \
        else ["compare", "look.yaml", option, path]
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and "cannot write" in err[0]
    assert sorted(p.name for p in project.iterdir()) == before  # not even ok.csv



def test_pandas_from_a_folder_outside_the_repository(project, tmp_path):
    """The README's set-up installs the package: a notebook anywhere reads any store."""
    script = f"""
from experiments.search import compare
frame = compare.runs("look", store={str(project)!r})
hist = compare.history("look", store={str(project / "mlruns")!r})
print(len(frame), "|".join(sorted(set(frame["result"].str.split(",").str[0]))))
print(list(hist.columns))
print(compare.paired(frame).attrs["verdict"].splitlines()[0])
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",
                                                            "MLFLOW_TRACKING_URI")}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    counts, columns, verdict = result.stdout.strip().splitlines()
    assert re.fullmatch(r"6 complete\|diverged at epoch \d+(\|diverged at epoch \d+)?",
                        counts), counts
    assert columns == "['run_id', 'trial', 'grad_mode', 'learning_rate', 'epoch', 'metric', " \
        "'value']"
    assert verdict.startswith("ablation (same seed")
    assert not (tmp_path / "mlruns").exists()


def test_an_unknown_experiment_is_refused_before_mlflow_and_pandas_load(project):
    """It took 22 s to say no on a loaded machine: the store is asked with sqlite3 first."""
    script = ("import sys, runner; code = runner.main(['compare', '--experiment', 'nope']); "
              "print(code, 'mlflow' in sys.modules, 'pandas' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run([sys.executable, "-c", script], cwd=project, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False", "False"], result
    assert result.stderr.strip() == "error: no MLflow experiment named 'nope' in " \
        f"{project / 'mlruns' / 'mlflow.db'}"


@pytest.mark.parametrize("damage", ["not a database", "cut short"])
def test_a_damaged_store_is_one_line_and_nothing_is_written(project, tmp_path, damage):
    """A 75-line SQLAlchemy traceback and a new mlruns/.lock, before."""
    store = tmp_path / "mlruns" / "mlflow.db"
    store.parent.mkdir()
    good = (project / "mlruns" / "mlflow.db").read_bytes()
    store.write_bytes(b"garbage, not SQLite" if damage == "not a database" else good[:20000])
    for args in (["compare", "--experiment", "look"], ["ui", "--port", "1"]):
        result = run_cli(*args, cwd=tmp_path, timeout=60)
        assert result.returncode == 2, result
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: the MLflow store {store} cannot be read ("), line
    assert [p.name for p in store.parent.iterdir()] == ["mlflow.db"]


def test_a_store_uri_that_is_not_mlflows_is_refused_and_left_alone(tmp_path):
    import sqlite3

    from experiments.tracking.store import NoStore

    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as db:
        db.execute("create table t (x)")
    before = plain.read_bytes()
    for uri in (f"sqlite:///{plain}", f"sqlite:///{tmp_path / 'new.db'}"):
        with pytest.raises(NoStore, match="no MLflow store at"):
            compare.runs("x", store=uri)
    assert plain.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "plain.db"]
