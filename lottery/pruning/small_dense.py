"""The small-dense control (Crowley et al. 2018): the same architecture, narrower, with as many weights as a
pruned network keeps, trained dense from scratch. A pruned network that cannot beat it gained nothing from
pruning.

The weights are counted as a mask counts them (the conv and linear weights, minus prune.ignore, plus
prune.include), so the control's density is on the same scale as every other baseline's: its counted
weights over the full network's. Biases and norms are not counted, as for every density here.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from lottery.models.scaling import ScaledWidths, meta_model, standard_widths, widths_for_weights
from lottery.pruning.mask import prunable_parameters
from lottery.pruning.methods import register_method
from lottery.pruning.selection import round_half_up

TOLERANCE = 0.02  # the bound on |weights - target| / target


def counted_weights(model: nn.Module, ignore: Iterable[str] = (), include: Iterable[str] = ()) -> int:
    return sum(parameter.numel() for parameter in prunable_parameters(model, ignore, include).values())


@register_method("small_dense", "the small-dense control (Crowley et al. 2018): the same architecture with its "
                 "widths scaled to the density's weight count (within 2%), trained dense from scratch",
                 structured=True)
def small_dense_widths(model_cfg, input_shape: tuple[int, ...], num_classes: int, density: float,
                       ignore: Iterable[str] = (), include: Iterable[str] = ()) -> ScaledWidths:
    """The widths whose counted weights match round(density · the full network's counted weights)."""
    ignore, include = list(ignore), list(include)
    full = counted_weights(meta_model(model_cfg, input_shape, num_classes, standard_widths(model_cfg)), ignore,
                           include)
    return widths_for_weights(model_cfg, input_shape, num_classes, round_half_up(density * full),
                              count=lambda model: counted_weights(model, ignore, include), tolerance=TOLERANCE)
