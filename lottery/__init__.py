"""lottery: lottery tickets and pruning at initialisation, tracked in MLflow and searched with Optuna."""

__version__ = "0.1.0"
