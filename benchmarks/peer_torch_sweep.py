"""The sweep a PyTorch user would write: Optuna + PyTorch eager + MLflow, one process.

The benchmark's peer for `runner.py sweep` (section 8): the same MLP (784-512-512-10),
SGD, batch size, epochs, data (an MNIST idx folder), search space, sampler (TPE, seeded),
median pruner (2 startup trials, the same warm-up) and budget, with a nested MLflow run
per trial logging params and per-epoch metrics under a parent run, in a fresh SQLite
store. It does what the optuna-examples' PyTorch + MLflow scripts do, nothing more: no
model artifact, no figures, no crash recovery. Prints one JSON line: wall seconds and
epochs trained.

    python -m benchmarks.peer_torch_sweep SWEEP.yaml DATA_FOLDER STORE_FOLDER
"""

from __future__ import annotations

import json
import sys
import time

START = time.perf_counter()

import mlflow  # noqa: E402 - timed from the start, as the runner's whole command is
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

MEAN, STD = 0.1307, 0.3081  # the runner's normalisation (experiments/core/data.py)


def _idx(path: str) -> np.ndarray:
    raw = open(path, "rb").read()  # noqa: SIM115 - read whole at once
    ndim = 3 if int.from_bytes(raw[:4], "big") == 2051 else 1
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _data(folder: str) -> tuple[torch.Tensor, ...]:
    def images(name: str) -> torch.Tensor:
        x = _idx(f"{folder}/{name}").reshape(-1, 784).astype(np.float32) / 255.0
        return torch.from_numpy((x - MEAN) / STD)

    return (images("train/train-images-idx3-ubyte"),
            torch.from_numpy(_idx(f"{folder}/train/train-labels-idx1-ubyte").astype(np.int64)),
            images("test/t10k-images-idx3-ubyte"),
            torch.from_numpy(_idx(f"{folder}/test/t10k-labels-idx1-ubyte").astype(np.int64)))


def main() -> int:
    sweep_path, folder, store = sys.argv[1:4]
    sweep = yaml.safe_load(open(sweep_path))  # noqa: SIM115
    fixed, lr_space = sweep["fixed"], sweep["parameters"]["learning_rate"]
    epochs, batch = fixed["epochs"], fixed["batch_size"]
    x, y, tx, ty = _data(folder)
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    mlflow.set_experiment(sweep["name"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=sweep.get("seed", 0)),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=2, n_warmup_steps=sweep["pruner"].get("warmup_epochs", 0)))
    epochs_run = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs_run
        lr = trial.suggest_float("learning_rate", lr_space["min"], lr_space["max"], log=True)
        torch.manual_seed(trial.number)
        model = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(),
                                    torch.nn.Linear(512, 512), torch.nn.ReLU(),
                                    torch.nn.Linear(512, 10))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params({"learning_rate": lr, "epochs": epochs, "batch_size": batch})
            accuracy = 0.0
            for epoch in range(1, epochs + 1):
                model.train()
                order = torch.randperm(len(x))
                total = 0.0
                for i in range(0, len(x), batch):
                    idx = order[i:i + batch]
                    opt.zero_grad()
                    loss = loss_fn(model(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                model.eval()
                with torch.no_grad():
                    logits = model(tx)
                    test_loss = loss_fn(logits, ty).item()
                    accuracy = (logits.argmax(1) == ty).float().mean().item()
                epochs_run += 1
                mlflow.log_metrics({"train_loss": total / len(x), "test_loss": test_loss,
                                    "test_accuracy": accuracy}, step=epoch)
                if not np.isfinite(total):
                    raise optuna.TrialPruned("diverged")
                trial.report(accuracy, epoch)
                if epoch < epochs and trial.should_prune():
                    raise optuna.TrialPruned()
        return accuracy

    with mlflow.start_run(run_name=sweep["name"]):
        study.optimize(objective, n_trials=sweep["n_trials"])
    print(json.dumps({"wall_s": time.perf_counter() - START, "epochs": epochs_run,
                      "best": study.best_value}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
