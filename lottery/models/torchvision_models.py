"""Torchvision classification models by name ('tv.resnet18'), always without weights."""
from __future__ import annotations

from torch import nn

PREFIX = "tv."


def torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def is_torchvision_name(name: str) -> bool:
    return name.startswith(PREFIX) and name[len(PREFIX):] in torchvision_names()


def build_torchvision(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision.models.get_model(..., weights=None): random init, no downloads."""
    import torchvision

    if len(input_shape) != 3 or input_shape[0] != 3:
        raise ValueError(f"model {name!r} expects 3-channel images, but the dataset gives shape {tuple(input_shape)}")
    return torchvision.models.get_model(name[len(PREFIX):], weights=None, num_classes=num_classes)
