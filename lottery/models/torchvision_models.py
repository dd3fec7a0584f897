"""Torchvision classification models by name ('tv.resnet18'), always without weights."""
from __future__ import annotations

from torch import nn

from lottery.models.registry import refuse_width, register_model

PREFIX = "tv."


def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


@register_model(r"^tv\.(.+)$", f"{PREFIX}<torchvision classification model> (e.g. tv.resnet18)", "tv.resnet18",
                (3, 32, 32),
                accepts=lambda match: match.group(1) in torchvision_names())
def build_torchvision(cfg, match, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision.models.get_model(..., weights=None): random init, no downloads."""
    import torchvision

    name = cfg.name
    refuse_width(name, cfg.width)
    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(f"model {name!r} expects 3-channel images, but the dataset gives shape {tuple(input_shape)}")
    return torchvision.models.get_model(name[len(PREFIX):], weights=None, num_classes=num_classes)
