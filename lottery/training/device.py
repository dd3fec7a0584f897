"""Device selection, the GPU fast-path switches (AMP, channels_last, cudnn.benchmark) and CPU threads.

Each decision is a pure function of the setting and the device, so it is testable on CPU.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
from torch import nn
from lottery.errors import ConfigError
from lottery.models.flops import forward_flops

logger = logging.getLogger(__name__)


def available_devices() -> list[str]:
    """The device names this machine can train on, for error messages."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)  # absent from some builds
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def select_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda, then mps, then cpu. Anything this machine lacks is a ConfigError naming train.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if "mps" in available_devices() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{name!r} is not a device; this machine has: auto, {', '.join(available_devices())}",
                          "train.device") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"{name!r}: no such CUDA device on this machine; it has: auto, "
                          f"{', '.join(available_devices())}", "train.device")
    if device.type == "mps" and "mps" not in available_devices():
        raise ConfigError(f"{name!r}: MPS is not available here; this machine has: auto, "
                          f"{', '.join(available_devices())}", "train.device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{name!r}: lottery trains on cpu, cuda and mps; this machine has: auto, "
                          f"{', '.join(available_devices())}", "train.device")
    return device


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


# Below this many forward FLOPs per training batch one CPU thread beats several: every parallel op
# wakes the sleeping OpenMP workers, and on an otherwise idle (virtual) machine the wake-up costs
# more than the op. Measured on 2 cores: digits (2 MFLOPs) 0.54 s per level on one thread, 1.5 s on
# two; LeNet-300-100 at batch 60 (32 MFLOPs) and anything larger is faster on all cores.
SMALL_STEP_FLOPS = 1e7


def resolve_cpu_threads(device: torch.device, flops: Optional[float],
                        environment: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Threads for training on CPU: 1 for small steps, else all of torch's; None leaves them alone
    (not on CPU, the size unknown, or OMP_NUM_THREADS set by the user or torchrun)."""
    environment = os.environ if environment is None else environment
    if device.type != "cpu" or flops is None or environment.get("OMP_NUM_THREADS"):
        return None
    return 1 if flops < SMALL_STEP_FLOPS else torch.get_num_threads()


@contextmanager
def cpu_threads(count: Optional[int]):
    """torch.set_num_threads(count) for the block, then back.

    Setting it explicitly, even to the current count, also turns off MKL's dynamic threading
    (mkl_set_dynamic(0) in torch), which otherwise rebuilds MKL's threads around GEMMs: a
    LeNet-300-100 Adam step on 2 cores took 2.9 ms without it and 1.3 ms with it.
    """
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class FastPath:
    device: torch.device
    amp_dtype: Optional[torch.dtype]
    channels_last: bool
    cudnn_benchmark: bool
    compile: bool
    cpu_threads: Optional[int] = None

    def as_params(self) -> dict[str, str]:
        return {
            "fast_path.device": str(self.device),
            "fast_path.amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "fast_path.channels_last": str(self.channels_last),
            "fast_path.cudnn_benchmark": str(self.cudnn_benchmark),
            "fast_path.compile": str(self.compile),
            "fast_path.cpu_threads": "unchanged" if self.cpu_threads is None else str(self.cpu_threads),
        }


def resolve_fast_path(train_cfg, model: nn.Module, device: Optional[torch.device] = None,
                      sample_shape: Optional[tuple[int, ...]] = None) -> FastPath:
    device = device or select_device(train_cfg.device)
    flops = forward_flops(model, sample_shape, train_cfg.batch_size) \
        if device.type == "cpu" and sample_shape is not None else None
    return FastPath(
        device=device,
        amp_dtype=resolve_amp(train_cfg.amp, device),
        channels_last=resolve_channels_last(train_cfg.channels_last, device, model),
        cudnn_benchmark=resolve_cudnn_benchmark(train_cfg.cudnn_benchmark, device),
        compile=bool(train_cfg.compile),
        cpu_threads=resolve_cpu_threads(device, flops),
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
