"""Approximate isometry after pruning (Lee et al. 2020, "A signal propagation perspective for pruning
neural networks at initialization").

The error is Σ_l ||W_lᵀ W_l − I||_F over the masked weights, with a conv weight (c_out, c_in, k, k)
read as a (k·k·c_in) × c_out matrix and a linear weight (out, in) as in × out. Minimising it by
gradient descent over the unpruned entries only restores signal propagation before training;
pruned entries stay exactly 0.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from lottery.pruning.mask import Mask

logger = logging.getLogger(__name__)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(fan_in, fan_out): columns are the output units."""
    return weight.reshape(weight.shape[0], -1).t()


def layer_isometry_error(weight: torch.Tensor) -> torch.Tensor:
    matrix = as_matrix(weight)
    identity = torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    return torch.linalg.matrix_norm(matrix.t() @ matrix - identity)


def isometry_error(model: nn.Module, mask: Mask) -> float:
    """Σ_l ||W_lᵀ W_l − I||_F over the mask's layers, with the mask applied."""
    total = 0.0
    with torch.no_grad():
        for name, parameter in zip(mask.names, mask.parameters_of(model)):
            total += float(layer_isometry_error(parameter * mask[name].to(parameter.device)))
    return total


def approximate_isometry(model: nn.Module, mask: Mask, steps: int = 100, lr: float = 1e-2) -> float:
    """Minimise the isometry error with Adam over the unpruned entries; returns the final error.

    Each layer's term depends only on that layer, so layers are optimised one by one. Adam's
    step size does not depend on the weights' scale, which differs by orders of magnitude
    between layers. The best iterate is kept, so the error never goes up.
    """
    for name, parameter in zip(mask.names, mask.parameters_of(model)):
        keep = mask[name].to(parameter.device, parameter.dtype)
        weight = (parameter.detach() * keep).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([weight], lr=lr)
        best_error, best = float("inf"), weight.detach().clone()
        for step in range(steps + 1):
            error = layer_isometry_error(weight * keep)
            if float(error.detach()) < best_error:
                best_error, best = float(error.detach()), weight.detach().clone()
            if step == steps:
                break
            optimizer.zero_grad(set_to_none=True)
            error.backward()
            optimizer.step()
            with torch.no_grad():
                weight.mul_(keep)
        with torch.no_grad():
            parameter.copy_(best * keep)
    error = isometry_error(model, mask)
    logger.info("approximate isometry: error %.4g after %d steps per layer", error, steps)
    return error
