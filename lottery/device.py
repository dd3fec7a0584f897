"""Device selection and the GPU fast-path switches (AMP, channels_last, cudnn.benchmark).

Each decision is a pure function of the setting and the device, so it is testable on CPU.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_amp(setting: str, device: torch.device, bf16_supported: Optional[bool] = None) -> Optional[torch.dtype]:
    """The autocast dtype, or None for full precision.

    "auto" turns on bf16 on CUDA devices that support it, and nothing elsewhere:
    CPU autocast is slower than float32 for these small nets.
    """
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else None


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(module, nn.modules.conv._ConvNd) for module in model.modules())


def resolve_channels_last(setting: str, device: torch.device, model: nn.Module) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.type == "cuda" and has_conv(model)


def resolve_cudnn_benchmark(setting: str, device: torch.device) -> bool:
    if setting == "on":
        return True
    if setting == "off":
        return False
    return device.type == "cuda"


@dataclass(frozen=True)
class FastPath:
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    cudnn_benchmark: bool
    compile: bool

    def as_params(self) -> dict[str, str]:
        return {
            "fast_path.device": str(self.device),
            "fast_path.amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "fast_path.channels_last": str(self.channels_last),
            "fast_path.cudnn_benchmark": str(self.cudnn_benchmark),
            "fast_path.compile": str(self.compile),
        }


def resolve_fast_path(train_cfg, model: nn.Module, device: Optional[torch.device] = None) -> FastPath:
    device = device or select_device(train_cfg.device)
    return FastPath(
        device=device,
        amp_dtype=resolve_amp(train_cfg.amp, device),
        channels_last=resolve_channels_last(train_cfg.channels_last, device, model),
        cudnn_benchmark=resolve_cudnn_benchmark(train_cfg.cudnn_benchmark, device),
        compile=bool(train_cfg.compile),
    )


def prepare_model(model: nn.Module, fast: FastPath) -> nn.Module:
    """Move to the device and memory format. Returns the module to call (compiled or not)."""
    model.to(fast.device)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    if fast.device.type == "cuda":
        torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    if fast.compile:
        return torch.compile(model)
    return model
