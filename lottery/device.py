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
from torch.utils.flop_counter import FlopCounterMode

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


# Below this many forward FLOPs per training batch one CPU thread beats several: every parallel op
# wakes the sleeping OpenMP workers, and on an otherwise idle (virtual) machine the wake-up costs
# more than the op. Measured on 2 cores: digits (2 MFLOPs) 0.54 s per level on one thread, 1.5 s on
# two; LeNet-300-100 at batch 60 (32 MFLOPs) and anything larger is faster on all cores.
SMALL_STEP_FLOPS = 1e7


def step_flops(model: nn.Module, sample_shape: tuple[int, ...], batch_size: int) -> float:
    """Forward FLOPs of one training batch, counted on one all-zero sample (eval, no grad, mode restored)."""
    was_training = model.training
    parameter = next(model.parameters(), None)
    sample = torch.zeros((1, *sample_shape), device=parameter.device if parameter is not None else "cpu")
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(sample)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops()) * batch_size


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
    flops = step_flops(model, sample_shape, train_cfg.batch_size) \
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
