"""The pruning engine: masks, saliency scores, selection, schedules, layer collapse, ablations, isometry."""
from lottery.pruning.ablations import invert_scores, random_same_layerwise, reinitialize, shuffle_within_layers
from lottery.pruning.collapse import compression_of, critical_compression, density_of
from lottery.pruning.isometry import approximate_isometry, isometry_error
from lottery.pruning.mask import Mask, MaskError, prunable_parameters
from lottery.pruning.prune import (PruneResult, make_scorer, mask_from_scores, prune,
                                   prune_fraction, schedule_density)
from lottery.pruning.scores import SCORERS, SynFlow, grasp, hessian_gradient_product, magnitude, random, snip, synflow

__all__ = [
    "Mask", "MaskError", "prunable_parameters", "SCORERS", "SynFlow", "magnitude", "random", "snip", "grasp",
    "hessian_gradient_product", "synflow", "PruneResult", "mask_from_scores", "prune_fraction", "prune",
    "make_scorer", "schedule_density", "critical_compression", "compression_of", "density_of",
    "shuffle_within_layers", "random_same_layerwise", "invert_scores", "reinitialize",
    "isometry_error", "approximate_isometry",
]
