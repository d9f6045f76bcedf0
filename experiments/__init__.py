"""The sweep runner, in four layers (each may import only those below it; checked by
import-linter, see pyproject.toml):

- `search/`   sweep files, the Optuna study, trials, workers, the sweep command, comparison
- `tracking/` everything MLflow: the store, the tracked run, figures, the pyfunc model
- `core/`     config, data, model, the compiled steps, the training loop, autodiff; pure
- `runtime/`  interrupts, fault points, retries, terminal rendering
"""
