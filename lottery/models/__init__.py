"""The model registry: names -> architectures, built and initialised from a seed.

Names: lenet_<w1>_<w2>... (fully connected), conv2/conv4/conv6 (LTH paper), resnet20..110 (CIFAR
ResNets), vgg11..19 (CIFAR VGG), tv.<name> (any torchvision classification model). Each family's module
registers itself (registry.py); `build_model` is the one entry point. scaling.py finds the narrower widths
whose weight count meets a budget (the small-dense control). May import torch and torchvision
only; the config reaches it as a duck-typed ModelConfig.
"""
from __future__ import annotations

import logging

from torch import nn

from lottery.models import convnet, lenet, resnet, torchvision_models, vgg  # noqa: F401 - registration
from lottery.models.convnet import ConvNet
from lottery.models.init import INITIALIZERS, initialize, seeded_global_rng
from lottery.models.lenet import LeNet
from lottery.models.registry import MODELS, find_family, model_names, register_model
from lottery.models.resnet import CifarResNet
from lottery.models.vgg import CifarVGG

__all__ = ["INITIALIZERS", "MODELS", "CifarResNet", "CifarVGG", "ConvNet", "LeNet", "build_model", "initialize",
           "is_model_name", "model_names", "register_model"]

logger = logging.getLogger(__name__)


def is_model_name(name) -> bool:
    """Whether `name` names a model. Builds nothing."""
    return find_family(name) is not None


def build_model(cfg, input_shape: tuple[int, ...], num_classes: int, seed: int,
                widths: list[int] | None = None) -> nn.Module:
    """Build the model `cfg.name` for this data and initialise it with `cfg.init` from `seed`.

    The same seed gives the same theta_0 bit for bit; the global RNG is left as it was. `widths` builds the
    same architecture narrower (see scaling.py; only for families that register widths).
    """
    input_shape = tuple(int(size) for size in input_shape)
    if cfg.init not in INITIALIZERS:
        raise ValueError(f"unknown model.init {cfg.init!r}; valid: {', '.join(INITIALIZERS)}")
    if num_classes < 1 or not input_shape or min(input_shape) < 1:
        raise ValueError(f"bad data shape for model {cfg.name!r}: input {input_shape}, {num_classes} classes")
    found = find_family(cfg.name)
    if found is None:
        raise ValueError(f"unknown model {cfg.name!r}; valid: {model_names()}")
    family, match = found
    if widths is not None and family.widths is None:
        raise ValueError(f"model {cfg.name!r} has no widths to scale")
    extra = {} if widths is None else {"widths": list(widths)}
    # Constructors draw their own default init from the global RNG: fork it so callers see no change.
    with seeded_global_rng(seed):
        model = family.build(cfg, match, input_shape, num_classes, **extra)
    initialize(model, cfg.init, seed)
    logger.debug("built %s (%s, %d parameters) for input %s, %d classes", cfg.name, type(model).__name__,
                sum(p.numel() for p in model.parameters()), input_shape, num_classes)
    return model
