"""Adam and AdamW whose step itself keeps pruned weights at exactly 0: no extra pass over the weights.

Adam moves a weight by -lr·m̂/(√v̂+ε), where the first moment m is a lerp toward the gradient with
weight 1-β1. Here that weight is a tensor: 1-β1 where the mask keeps a weight, 0 where it prunes.
So m stays exactly 0 at pruned entries, their update is 0/(√v̂+ε) = 0, and a pruned weight stays 0:
weight decay keeps it there too (L2 only feeds m, through the zero weight; decoupled: 0·(1-lr·λ) = 0).

For kept entries the arithmetic is torch.optim.Adam's foreach path op for op, so a masked run is
bit-identical to stock Adam followed by zeroing the pruned weights (tested). The after-step multiply
(Mask.enforcer) costs ~6% of a LeNet-300-100 step on CPU; the lerp reads one more tensor inside a
pass Adam makes anyway. The first step after construction or load_state_dict also zeroes the pruned
entries of the weights and of m, so state from anywhere is made consistent once.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from lottery.pruning.mask import Mask


class MaskedAdam(torch.optim.Adam):
    """torch.optim.Adam (foreach, no amsgrad/maximize/capturable) with pruned weights held at 0.

    `decoupled_weight_decay=True` gives AdamW, exactly as in torch.optim.AdamW.
    """

    def __init__(self, params: Iterable[nn.Parameter], kept: dict[nn.Parameter, torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, foreach=True,
                         decoupled_weight_decay=decoupled_weight_decay)
        self.kept = dict(kept)  # parameter -> bool tensor, True where the weight is kept
        self._lerp_weights: dict[nn.Parameter, torch.Tensor] = {}
        self._synced = False

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._synced = False

    def set_kept(self, kept: dict[nn.Parameter, torch.Tensor]) -> None:
        """New flags (dynamic sparse training): the lerp weights are rebuilt, and the next step zeroes the newly
        pruned weights and their first moments before it updates."""
        self.kept = dict(kept)
        self._lerp_weights.clear()
        self._synced = False

    def _lerp_weight(self, parameter: nn.Parameter, beta1: float) -> torch.Tensor:
        """1-β1 where kept and 0 where pruned (a full tensor for unmasked parameters too: one foreach call)."""
        weight = self._lerp_weights.get(parameter)
        if weight is None:
            kept = self.kept.get(parameter)
            weight = torch.ones_like(parameter)  # same device, dtype and memory format (channels_last)
            if kept is not None:
                weight.copy_(kept)
            weight.mul_(1 - beta1)
            self._lerp_weights[parameter] = weight
        return weight

    def _sync(self, params: list[torch.Tensor], exp_avgs: list[torch.Tensor]) -> None:
        """Zero the pruned weights and their first moments, once: the invariant every later step keeps."""
        for parameter, exp_avg in zip(params, exp_avgs):
            kept = self.kept.get(parameter)
            if kept is not None:
                kept = kept.to(parameter.device)
                parameter.masked_fill_(~kept, 0)
                exp_avg.masked_fill_(~kept, 0)
        self._synced = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"]:
                raise ValueError("MaskedAdam supports plain Adam/AdamW only (no amsgrad, maximize, capturable)")
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, [], steps)
            if params:
                self._update(group, params, grads, exp_avgs, exp_avg_sqs, steps)
        self._synced = True
        return loss

    def _update(self, group, params, grads, exp_avgs, exp_avg_sqs, steps) -> None:
        """torch.optim.adam._multi_tensor_adam (non-capturable), with the masked lerp weight."""
        if not self._synced:
            self._sync(params, exp_avgs)
        beta1, beta2 = group["betas"]
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            else:
                grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, [self._lerp_weight(p, beta1) for p in params])
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        step_size = [(lr / (1 - beta1 ** step.item())) * -1 for step in steps]
        bias_correction2_sqrt = [(1 - beta2 ** step.item()) ** 0.5 for step in steps]
        denominator = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominator, bias_correction2_sqrt)
        torch._foreach_add_(denominator, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denominator, step_size)


def masked_adam(model: nn.Module, mask: Mask, params: list[nn.Parameter], **settings) -> MaskedAdam:
    """MaskedAdam over `params`, holding the mask's pruned weights of `model` at 0."""
    kept = dict(zip(mask.parameters_of(model), (mask[name] for name in mask.names)))
    return MaskedAdam(params, kept, **settings)
