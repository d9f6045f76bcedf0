"""Sweeps: sweep files, the Optuna study, trials and workers, the command, comparison."""
