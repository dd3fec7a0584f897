"""The configured optimizer, and what keeps pruned weights at exactly zero after its step."""
from __future__ import annotations

import torch
from torch import nn

from lottery.pruning.mask import Mask
from lottery.pruning.masked_adam import MaskedAdam


def build_optimizer(model: nn.Module, train_cfg, mask: Mask | None = None) -> torch.optim.Optimizer:
    """The configured optimizer; with a mask, Adam and AdamW hold the pruned weights at 0 inside the step."""
    params = [p for p in model.parameters() if p.requires_grad]
    kept = None
    if mask is not None and train_cfg.optimizer in ("adam", "adamw"):
        kept = dict(zip(mask.parameters_of(model), (mask[name] for name in mask.names)))
    return optimizer_for(params, train_cfg, kept)


def optimizer_for(params: list[torch.Tensor], train_cfg,
                  kept: dict[torch.Tensor, torch.Tensor] | None = None) -> torch.optim.Optimizer:
    """The configured optimizer over `params`; `kept` (parameter -> bool tensor) makes Adam/AdamW a MaskedAdam."""
    # foreach: PyTorch picks it only on CUDA by default; on CPU it is ~6% faster per LeNet step.
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train_cfg.lr, momentum=train_cfg.momentum,
            nesterov=train_cfg.nesterov, weight_decay=train_cfg.weight_decay, foreach=True,
        )
    if train_cfg.optimizer not in ("adam", "adamw"):
        raise ValueError(f"train.optimizer: unknown optimizer {train_cfg.optimizer!r}")
    decoupled = train_cfg.optimizer == "adamw"
    if kept is not None:
        return MaskedAdam(params, kept, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay,
                          decoupled_weight_decay=decoupled)
    adam = torch.optim.AdamW if decoupled else torch.optim.Adam
    return adam(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, foreach=True)


def mask_enforcer(optimizer: torch.optim.Optimizer, mask: Mask | None, model: nn.Module):
    """What to call after each optimizer step to zero the pruned weights: nothing when the step does it."""
    if mask is None or isinstance(optimizer, MaskedAdam):
        return None
    return mask.enforcer(model)
