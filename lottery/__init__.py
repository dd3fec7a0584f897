"""lottery: lottery tickets and pruning at initialisation, tracked in MLflow and searched with Optuna.

Importing the package does nothing but define the version: no environment variable is changed and
nothing heavy is imported. The layout, and what may import what, is in docs/extending.md.
"""

__version__ = "0.1.0"
