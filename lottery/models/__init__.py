"""The model registry: names -> architectures, built and initialised from a seed.

Names: lenet_<w1>_<w2>... (fully connected), conv2/conv4/conv6 (LTH paper), resnet20..110
(CIFAR ResNets), vgg11..19 (CIFAR VGG), tv.<name> (any torchvision classification model).
"""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from torch import nn

from lottery.models.convnet import BLOCK_WIDTHS, ConvNet
from lottery.models.init import INITIALIZERS, initialize, is_weighted_layer, seeded_global_rng
from lottery.models.lenet import LeNet, parse_lenet_name
from lottery.models.resnet import DEFAULT_WIDTH, DEPTHS, CifarResNet
from lottery.models.torchvision_models import PREFIX as TORCHVISION_PREFIX
from lottery.models.torchvision_models import build_torchvision, is_torchvision_name
from lottery.models.vgg import CONFIGS as VGG_CONFIGS
from lottery.models.vgg import STANDARD_WIDTH as VGG_WIDTH
from lottery.models.vgg import CifarVGG

if TYPE_CHECKING:
    from lottery.config import ModelConfig

__all__ = [
    "INITIALIZERS", "build_model", "initialize", "is_model_name", "model_names",
    "output_layer_name", "weighted_layer_names", "LeNet", "ConvNet", "CifarResNet", "CifarVGG",
]

logger = logging.getLogger(__name__)

RESNET_PATTERN = re.compile(r"^resnet(\d+)$")
VGG_PATTERN = re.compile(r"^vgg(\d+)$")


def model_names() -> str:
    """A human-readable list of valid model names, for error messages."""
    resnets = ", ".join(f"resnet{depth}" for depth in DEPTHS)
    vggs = ", ".join(f"vgg{depth}" for depth in VGG_CONFIGS)
    convs = ", ".join(BLOCK_WIDTHS)
    return (f"lenet_<w1>_<w2>... (e.g. lenet_300_100), {convs}, {resnets}, {vggs}, "
            f"{TORCHVISION_PREFIX}<torchvision classification model> (e.g. tv.resnet18)")


def _depth(pattern: re.Pattern, name: str) -> int | None:
    match = pattern.match(name)
    return int(match.group(1)) if match else None


def is_model_name(name: str) -> bool:
    """Whether `name` names a model. Builds nothing."""
    if not isinstance(name, str):
        return False
    if name.startswith(TORCHVISION_PREFIX):
        return is_torchvision_name(name)
    return (parse_lenet_name(name) is not None or name in BLOCK_WIDTHS
            or _depth(RESNET_PATTERN, name) in DEPTHS or _depth(VGG_PATTERN, name) in VGG_CONFIGS)


def _check_image_shape(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs (channels, height, width), got shape {input_shape}")


def _refuse_width(name: str, width: int) -> None:
    if width != 0:
        raise ValueError(f"model.width={width} has no meaning for model {name!r}; leave it 0")


def _construct(cfg: "ModelConfig", input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    name = cfg.name
    if name.startswith(TORCHVISION_PREFIX) and is_torchvision_name(name):
        _refuse_width(name, cfg.width)
        return build_torchvision(name, input_shape, num_classes)
    hidden = parse_lenet_name(name)
    if hidden is not None:
        _refuse_width(name, cfg.width)
        return LeNet(input_shape, hidden, num_classes)
    _check_image_shape(name, input_shape)
    if name in BLOCK_WIDTHS:
        # model.width sets the first block's width; later blocks keep the 1:2:4 ratio.
        widths = [w * cfg.width // 64 for w in BLOCK_WIDTHS[name]] if cfg.width else BLOCK_WIDTHS[name]
        return ConvNet(input_shape, widths, num_classes)
    depth = _depth(RESNET_PATTERN, name)
    if depth in DEPTHS:
        return CifarResNet(input_shape, depth, num_classes, cfg.width or DEFAULT_WIDTH, cfg.batchnorm)
    depth = _depth(VGG_PATTERN, name)
    if depth in VGG_CONFIGS:
        return CifarVGG(input_shape, depth, num_classes, cfg.width or VGG_WIDTH, cfg.batchnorm)
    raise ValueError(f"unknown model {name!r}; valid: {model_names()}")


def build_model(cfg: "ModelConfig", input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Build the model `cfg.name` for this data and initialise it with `cfg.init` from `seed`.

    The same seed gives the same theta_0 bit for bit; the global RNG is left as it was.
    """
    input_shape = tuple(int(size) for size in input_shape)
    if cfg.init not in INITIALIZERS:
        raise ValueError(f"unknown model.init {cfg.init!r}; valid: {', '.join(INITIALIZERS)}")
    if num_classes < 1 or not input_shape or min(input_shape) < 1:
        raise ValueError(f"bad data shape for model {cfg.name!r}: input {input_shape}, {num_classes} classes")
    # Constructors draw their own default init from the global RNG: fork it so callers see no change.
    with seeded_global_rng(seed):
        model = _construct(cfg, input_shape, num_classes)
    initialize(model, cfg.init, seed)
    logger.info("built %s (%s, %d parameters) for input %s, %d classes", cfg.name, type(model).__name__,
                sum(p.numel() for p in model.parameters()), input_shape, num_classes)
    return model


def weighted_layer_names(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers, in module order."""
    return [name for name, module in model.named_modules() if is_weighted_layer(module)]


def output_layer_name(model: nn.Module) -> str:
    """The module name of the final classifier layer: the last Linear in module order."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear layer to call the output layer")
    return linears[-1]
