"""The pruning engine: the method registry, masks and their file format, saliency scores, exact selection,
schedules, layer collapse, ablations, approximate isometry, MaskedAdam, coreset neuron pruning, dynamic sparse
training (RigL, SET) and the small-dense control.

May import torch, numpy, lottery.errors and lottery.run.files (atomic writes); never the config, the
training loop or anything above (models only for widths and FLOPs). Importing this package registers every
method (scores.py, coreset.py, dynamic.py, small_dense.py), so `METHODS` is complete wherever it is read.
Modules inside the package import each other directly, never `lottery.pruning` itself.
"""
from lottery.pruning import scores  # noqa: F401,I001 - registration, in the order baselines run by default
from lottery.pruning import coreset  # noqa: F401,I001
from lottery.pruning import dynamic  # noqa: F401,I001
from lottery.pruning import small_dense  # noqa: F401,I001
from lottery.pruning.mask import Mask, MaskError, prunable_parameters
from lottery.pruning.methods import METHODS, Method, get_method, method_names, register_method
from lottery.pruning.prune import PruneResult, PruneSpec, critical_compression, prune, prune_fraction

__all__ = ["METHODS", "Mask", "MaskError", "Method", "PruneResult", "PruneSpec", "critical_compression",
           "get_method", "method_names", "prunable_parameters", "prune", "prune_fraction", "register_method"]
