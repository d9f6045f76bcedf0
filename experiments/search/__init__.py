"""Sweeps, as rooms read bottom-up (import-linter keeps the order, see pyproject.toml):

- `spec/`     what was asked: the sweep file and the command's flags (no Optuna, no MLflow)
- `study/`    the Optuna study: storage, question, samplers and pruner, liveness
- `trials/`   the budgeted trial loop, what a trial trains, warm starts
- `runs/`     what MLflow shows of a sweep: trial runs, the parent run and its story
- `execution` where a session's trials run: here, or in worker processes
- `session`   one process's sweep, top-down
- the commands: `sweep`, `dryrun`, `status`, `compare` (with `noise`), `predict`
"""
