"""Named weight initialisers, seeded by a local generator so the global RNG is untouched.

Conv and linear layers get the named initialiser (biases zero). Every other module with a
`reset_parameters` (BatchNorm -> weight 1 bias 0, LayerNorm, ...) is reset to PyTorch's own
initialisation. Random numbers are drawn on the CPU and copied, so theta_0 is the same on
every device.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)

WEIGHTED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def is_weighted_layer(module: nn.Module) -> bool:
    """Conv and linear layers: the layers whose weights are initialised, and pruned."""
    return isinstance(module, WEIGHTED_LAYERS)


def _draw(parameter: torch.Tensor, fill: Callable[[torch.Tensor], None]) -> None:
    """Fill a CPU tensor of the parameter's shape with `fill`, then copy it in."""
    values = torch.empty(parameter.shape, dtype=parameter.dtype)
    fill(values)
    with torch.no_grad():
        parameter.copy_(values)


def _named(weight_init: Callable) -> Callable[[nn.Module, torch.Generator], None]:
    """A layer initialiser: `weight_init` on the weight, zeros on the bias."""

    def init_layer(layer: nn.Module, generator: torch.Generator) -> None:
        _draw(layer.weight, lambda values: weight_init(values, generator=generator))
        if layer.bias is not None:
            with torch.no_grad():
                layer.bias.zero_()

    init_layer.__name__ = weight_init.__name__.rstrip("_")
    return init_layer


def pytorch_default(layer: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's own Conv/Linear reset_parameters, drawn from `generator`."""
    _draw(layer.weight, lambda values: nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator))
    if layer.bias is not None:
        fan_in = layer.weight[0].numel()
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        _draw(layer.bias, lambda values: values.uniform_(-bound, bound, generator=generator))


def variance_scaling_(values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """TensorFlow's VarianceScaling default (scale 1, fan_in, truncated normal): N(0, 1/fan_in) cut at 2σ, its std
    corrected for the cut (/0.8796...), as the SNIP paper's "variance scaling initialization"."""
    fan_in = values[0].numel()
    std = (1.0 / max(fan_in, 1)) ** 0.5 / 0.87962566103423978
    return nn.init.trunc_normal_(values, std=std, a=-2 * std, b=2 * std, generator=generator)


INITIALIZERS: dict[str, Callable[[nn.Module, torch.Generator], None]] = {
    "kaiming_normal": _named(nn.init.kaiming_normal_),
    "kaiming_uniform": _named(nn.init.kaiming_uniform_),
    "glorot_normal": _named(nn.init.xavier_normal_),
    "glorot_uniform": _named(nn.init.xavier_uniform_),
    "orthogonal": _named(nn.init.orthogonal_),
    "variance_scaling": _named(variance_scaling_),
    "default": pytorch_default,
}


@contextlib.contextmanager
def seeded_global_rng(seed: int, model: nn.Module | None = None):
    """Seed the global RNGs for a block, then restore them, so callers see no change."""
    cuda_devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}) if model else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        for index in cuda_devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def initialize(model: nn.Module, init_name: str, seed: int) -> None:
    """Re-initialise every parameter of `model` in place, deterministically from `seed`."""
    if init_name not in INITIALIZERS:
        raise ValueError(f"unknown model.init {init_name!r}; valid: {', '.join(INITIALIZERS)}")
    init_layer = INITIALIZERS[init_name]
    generator = torch.Generator().manual_seed(seed)
    # Other modules' reset_parameters use the global RNG: seed it, and restore it after.
    with seeded_global_rng(seed, model):
        for module in model.modules():
            if is_weighted_layer(module):
                init_layer(module, generator)
            elif callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
    logger.debug("initialised %s with %s (seed %d)", type(model).__name__, init_name, seed)
