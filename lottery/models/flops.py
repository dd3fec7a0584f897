"""The one FLOP counter: torch's FlopCounterMode over one forward pass (a multiply-add counts as 2 FLOPs)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, sample_shape: tuple[int, ...], batch_size: int = 1) -> float:
    """Forward FLOPs for `batch_size` examples, counted on one all-zero example (eval, no grad, mode restored)."""
    was_training = model.training
    parameter = next(model.parameters(), None)
    sample = torch.zeros((1, *sample_shape), device=parameter.device if parameter is not None else "cpu",
                         dtype=parameter.dtype if parameter is not None else torch.float32)
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(sample)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops()) * batch_size
