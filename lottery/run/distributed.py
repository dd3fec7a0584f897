"""torchrun / DistributedDataParallel support. Rank 0 computes masks, writes files and tracks."""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from lottery.training.device import select_device

logger = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device_setting: str = "auto") -> None:
    """Join the process group torchrun describes (nccl on CUDA, gloo elsewhere)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    device = select_device(device_setting)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    logger.info("rank %d of %d joined (%s)", dist.get_rank(), dist.get_world_size(), dist.get_backend())


def shutdown(synchronize: bool = False) -> None:
    """Leave the process group. After a clean run, wait for every rank first: a rank tearing gloo down
    while a peer is still finishing its run has aborted at exit ("terminate called ...")."""
    if not dist.is_initialized():
        return
    if synchronize:
        dist.barrier()
    dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def device_for(config) -> torch.device:
    device = select_device(config.train.device)
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_mask(mask):
    """Every rank ends with rank 0's mask."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return mask
    from lottery.pruning.mask import Mask

    payload = [dict(mask.items()) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    return Mask({name: tensor.cpu() for name, tensor in payload[0].items()})


def broadcast_object(value):
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    payload = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def check_replicas_agree(model, mask) -> None:
    """Fail loudly if ranks drifted apart: compare a checksum of weights and mask on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    checksum = torch.zeros(2, dtype=torch.float64)
    for tensor in model.state_dict().values():
        if tensor.is_floating_point():
            checksum[0] += tensor.detach().double().abs().sum().cpu()
    checksum[1] = float(sum(int(keep.sum()) for _, keep in mask.items()))
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    if any(not torch.equal(other, gathered[0]) for other in gathered):
        raise RuntimeError(f"ranks disagree on weights or mask after a level: {[g.tolist() for g in gathered]}")
