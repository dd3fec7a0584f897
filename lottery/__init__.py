"""lottery: lottery tickets and pruning at initialisation, tracked in MLflow and searched with Optuna."""

import os

# Idle OpenMP threads spin by default; on a busy CPU that makes small steps 20-100x slower.
# Set before torch is first imported (an explicit user setting wins).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
