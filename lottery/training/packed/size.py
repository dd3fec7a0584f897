"""How many models to pack: as many as fit in the device's free memory, up to a bound.

One packed model costs its weights, gradients and optimizer state (Adam: two moments, SGD with momentum:
one buffer), the tensors autograd keeps for the backward pass of one batch (measured on a one-example
forward and scaled by the batch size; twice that, for the gradients flowing back through them), and its
batch. Free memory is torch.cuda.mem_get_info on CUDA and MemAvailable (/proc/meminfo) on CPU.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Beyond these, a pack of small models stops gaining: on CPU the step is compute-bound well before 8
# (see docs/packing.md), on a GPU 16 ResNet-20s fill the device's parallelism.
MAX_PACK = {"cuda": 16, "cpu": 8}
HEADROOM = 0.8  # the share of free memory a pack may plan to use


def optimizer_slots(train_cfg) -> int:
    """Weight-sized state tensors per weight: Adam's two moments, SGD's momentum buffer."""
    if train_cfg.optimizer in ("adam", "adamw"):
        return 2
    return 1 if train_cfg.momentum else 0


def activation_bytes_per_example(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes autograd saves for the backward pass of one example (a one-example forward in train mode;
    BatchNorm statistics are put back afterwards)."""
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    saved: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor):
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        saved[key] = tensor.numel() * tensor.element_size()
        return tensor

    buffers = {name: tensor.clone() for name, tensor in model.named_buffers()}
    was_training = model.training
    example = torch.zeros((2, *input_shape), device=device, dtype=dtype)  # 2: BatchNorm needs two values
    try:
        model.train()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(example)
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, tensor in model.named_buffers():
                tensor.copy_(buffers[name])
    return math.ceil(sum(saved.values()) / 2)


def bytes_per_model(model: nn.Module, train_cfg, input_shape: tuple[int, ...]) -> int:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    batch = train_cfg.batch_size
    activations = 2 * batch * activation_bytes_per_example(model, input_shape)
    inputs = batch * math.prod(input_shape) * 4
    return weights + trainable * (1 + optimizer_slots(train_cfg)) + activations + inputs


def free_memory_bytes(device: torch.device) -> Optional[int]:
    """Free memory on `device`, or None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        meminfo = Path("/proc/meminfo")
        if meminfo.exists():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def choose_pack_size(model: nn.Module, train_cfg, input_shape: tuple[int, ...], device: torch.device | str = "cpu",
                     max_pack: Optional[int] = None, free_bytes: Optional[int] = None, jobs_per_device: int = 1) -> int:
    """The number of models like `model` to pack on `device`: what fits in HEADROOM of its free memory shared
    by `jobs_per_device` packs, at least 1, at most `max_pack` (default MAX_PACK for the device type, 1 for
    others; free memory that cannot be read gives 1)."""
    device = torch.device(device)
    bound = max_pack if max_pack is not None else MAX_PACK.get(device.type, 1)
    if bound < 1 or jobs_per_device < 1:
        raise ValueError(f"max_pack and jobs_per_device must be >= 1, got {bound} and {jobs_per_device}")
    free = free_bytes if free_bytes is not None else free_memory_bytes(device)
    if free is None:
        return 1
    per_model = bytes_per_model(model, train_cfg, tuple(input_shape))
    fitting = int(free * HEADROOM / jobs_per_device // max(per_model, 1))
    chosen = max(1, min(bound, fitting))
    logger.info("pack size %d on %s: %.1f MiB per model, %.0f MiB free, at most %d", chosen, device,
                per_model / 2**20, free / 2**20, bound)
    return chosen
