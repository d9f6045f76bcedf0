"""The training core: config, data, model, compiled steps, the loop, autodiff.

Pure: it imports neither MLflow nor Optuna and never prints; it reports through callbacks.
"""
