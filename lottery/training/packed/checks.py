"""What jobs must share to train as one pack; PackError naming the first job that differs, and how."""
from __future__ import annotations

from typing import Sequence

import torch

from lottery.training.device import FastPath
from lottery.training.loop import TrainJob
from lottery.training.packed.layers import PackError


def _signature(tensors) -> list[tuple]:
    return [(name, tuple(tensor.shape), tensor.dtype, getattr(tensor, "requires_grad", False))
            for name, tensor in tensors]


def _describe_difference(mine: list[tuple], theirs: list[tuple]) -> str:
    names, other_names = [entry[0] for entry in mine], [entry[0] for entry in theirs]
    if names != other_names:
        extra = [name for name in names if name not in other_names]
        missing = [name for name in other_names if name not in names]
        return f"extra {extra or 'none'}, missing {missing or 'none'}"
    for entry, other in zip(mine, theirs):
        if entry != other:
            return (f"{entry[0]} is {entry[1]} {entry[2]} (requires_grad={entry[3]}), "
                    f"not {other[1]} {other[2]} (requires_grad={other[3]})")
    return "none"


def check_packable(jobs: Sequence[TrainJob]) -> None:
    """Jobs of one pack share the architecture, the train config, the segment and the dataset, and nothing
    that one job writes (its model object, its checkpoint file)."""
    if not jobs:
        raise PackError("packed training needs at least one job")
    first = jobs[0]
    params = _signature(first.model.named_parameters())
    buffers = _signature(first.model.named_buffers())
    models, checkpoints = set(), set()
    for index, job in enumerate(jobs):
        who = f"packed training: job {index} ({job.desc})"
        if id(job.model) in models:
            raise PackError(f"{who} trains a model object another job of the pack trains too")
        models.add(id(job.model))
        if job.checkpoint_path is not None:
            if str(job.checkpoint_path) in checkpoints:
                raise PackError(f"{who} writes checkpoint {job.checkpoint_path}, as another job of the pack does")
            checkpoints.add(str(job.checkpoint_path))
        if job.world_size != 1 or job.rank != 0:
            raise PackError(f"{who} is rank {job.rank} of {job.world_size}: packs train in one process")
        if job.mask_updater is not None:
            raise PackError(f"{who} changes its mask while it trains (dynamic sparse training): it trains alone")
        if index == 0:
            continue
        if type(job.model) is not type(first.model):
            raise PackError(f"{who} is a {type(job.model).__name__}, job 0 ({first.desc}) a "
                            f"{type(first.model).__name__}: a pack holds one architecture")
        job_params = _signature(job.model.named_parameters())
        if job_params != params:
            raise PackError(f"{who} has other parameters than job 0 ({first.desc}): "
                            f"{_describe_difference(job_params, params)}; a pack holds one architecture")
        job_buffers = _signature(job.model.named_buffers())
        if job_buffers != buffers:
            raise PackError(f"{who} has other buffers than job 0 ({first.desc}): "
                            f"{_describe_difference(job_buffers, buffers)}; a pack holds one architecture")
        if job.train_cfg != first.train_cfg:
            raise PackError(f"{who} has another train config than job 0 ({first.desc}): a pack has one schedule")
        if (job.start_step, job.end_step) != (first.start_step, first.end_step):
            raise PackError(f"{who} trains steps {job.start_step}..{job.end_step}, job 0 ({first.desc}) "
                            f"{first.start_step}..{first.end_step}: a pack trains one segment")
        if job.dataset is not first.dataset:
            raise PackError(f"{who} has another Dataset object than job 0 ({first.desc}): a pack shares one")
        if job.fast != first.fast:
            raise PackError(f"{who} has another fast path than job 0 ({first.desc})")


def check_fast_path(fast: FastPath) -> None:
    if fast.amp_dtype == torch.float16:
        raise PackError("packed training: train.amp=fp16 needs a loss scaler per model; use bf16 or off")
    if fast.compile:
        raise PackError("packed training runs eagerly: set train.compile=false for packed runs")
