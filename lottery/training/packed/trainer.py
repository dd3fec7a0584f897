"""train_packed: K training segments of one architecture and one schedule, one forward and backward per step.

Equivalent to [train(job) for job in jobs] (loop.py): each job keeps its own starting weights, mask, data
order (its seed), optimizer state, BatchNorm statistics, evaluations, hooks, on_eval callback and
checkpoint file, in the solo loop's format. Jobs with one seed share each batch, gathered once. The
learning rate, the evaluation steps and the checkpoint rule are the solo loop's.

Resume: each job resumes from its own checkpoint. A kill can land between the K checkpoint writes of
one step, so jobs may resume at different steps: the pack then starts at the earliest, and a job whose
checkpoint is further on joins at its step, loading it into its slice (until then its slice computes
nothing that is kept). The pack keeps its size and order throughout, so every model runs the same
kernels as in an uninterrupted run and resumes bit for bit.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from lottery.run.files import atomic_torch_save
from lottery.training.device import FastPath, cpu_threads, resolve_fast_path
from lottery.training.loop import (TrainJob, TrainResult, _progress, autocast_for, checkpoint_payload, evaluate_all,
                                   read_checkpoint, set_rng_state)
from lottery.training.packed.checks import check_fast_path, check_packable
from lottery.training.packed.layers import PackError, packed_logits
from lottery.training.packed.network import Stack, check_packed_forward, pack_inputs, packed_network
from lottery.training.packed.optimizer import PackOptimizer
from lottery.training.plan import StepPlan

logger = logging.getLogger(__name__)


def train_packed(jobs: Sequence[TrainJob]) -> list[TrainResult]:
    """Train the jobs as one pack; the results equal [train(job) for job in jobs]. PackError when they cannot pack."""
    jobs = list(jobs)
    check_packable(jobs)
    first = jobs[0]
    fast = first.fast or resolve_fast_path(first.train_cfg, first.model, sample_shape=first.dataset.input_shape)
    check_fast_path(fast)
    # CPU threads by the solo rule for one model: the same for every pack size, so a model's arithmetic (and its
    # results, bit for bit) does not depend on what it is packed with; see docs/packing.md for the measurements.
    with cpu_threads(fast.cpu_threads):
        return _train_packed(jobs, fast)


@dataclass
class _Slot:
    """One job's progress inside the pack."""

    job: TrainJob
    result: TrainResult = field(default_factory=TrainResult)
    joins_at: int = 0
    checkpoint: Optional[dict] = None  # loaded when the pack reaches joins_at
    active: bool = False
    loss_steps: int = 0
    started: float = 0.0


class _Batches:
    """Each step's inputs and labels for the pack: one gather for all models, once when they share a seed."""

    def __init__(self, jobs: Sequence[TrainJob], shared_input_works: bool, channels_last: bool):
        cfg, dataset = jobs[0].train_cfg, jobs[0].dataset
        self.size = len(jobs)
        self.seeds = [job.seed for job in jobs]
        self.shared = len(set(self.seeds)) == 1
        self.orders = [dataset.train_batches(cfg.batch_size, seed) for seed in self.seeds[:1 if self.shared else None]]
        self.iterations_per_epoch = self.orders[0].iterations_per_epoch
        self.shared_input_works, self.channels_last = shared_input_works, channels_last

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared:
            inputs, labels = self.orders[0].batch(step)
            labels = labels.expand(self.size, -1).contiguous()
            if not self.shared_input_works:
                inputs = pack_inputs([inputs] * self.size)
        else:
            inputs, labels = type(self.orders[0]).joined(self.orders, step)  # one gather (TrainBatches)
            per_model = inputs.view(self.size, -1, *inputs.shape[1:])  # (K, B, C, ...) -> channels layout (B, K·C, ...)
            inputs = per_model.transpose(0, 1).reshape(per_model.shape[1], -1, *inputs.shape[2:])
            labels = labels.view(self.size, -1)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, labels


def _train_packed(jobs: list[TrainJob], fast: FastPath) -> list[TrainResult]:
    cfg, first = jobs[0].train_cfg, jobs[0]
    for job in jobs:
        job.model.to(fast.device)
        if job.mask is not None:
            job.mask.apply(job.model)
    if fast.device.type == "cuda":
        torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    stack = Stack([job.model for job in jobs], channels_last=fast.channels_last)
    bar = None
    try:
        network = packed_network(first.model, stack)
        shared_batch = len({job.seed for job in jobs}) == 1
        batches = _Batches(jobs, check_packed_forward(network, stack, first.dataset.input_shape, shared_batch),
                           fast.channels_last)
        plan = StepPlan.from_config(cfg, batches.iterations_per_epoch)
        schedule = plan.lr_schedule(cfg)
        optimizer = PackOptimizer(stack, cfg, [job.mask for job in jobs])
        scaler_state = torch.amp.GradScaler(fast.device.type, enabled=False).state_dict()
        slots = [_Slot(job) for job in jobs]
        loss_sums = torch.zeros(len(jobs), dtype=torch.float64, device=fast.device)
        step = _resume(slots, optimizer, loss_sums, fast)
        for slot in slots:
            slot.job.model.train()
        network.train()
        bar = _progress(cfg.progress, first.end_step - step, f"pack of {len(jobs)}: {first.desc}")
        while step < first.end_step:
            for index, slot in enumerate(slots):
                if not slot.active and slot.joins_at == step:
                    _join(index, slot, optimizer, loss_sums)
            lr = schedule(step)
            optimizer.set_lr(lr)
            inputs, labels = batches.batch(step)
            with autocast_for(fast):
                logits = packed_logits(network(inputs), len(jobs))
                losses = F.cross_entropy(logits, labels, reduction="none").mean(dim=1)
            optimizer.zero_grad()
            losses.sum().backward()  # model k's gradient is that of its own mean loss
            optimizer.step()
            step += 1
            loss_sums += losses.detach().double()
            for slot in slots:
                if slot.active:
                    slot.loss_steps += 1
                    for hook in slot.job.hooks:
                        hook(step)
            bar.update(1)
            if step % plan.eval_every == 0 or step == first.end_step:
                for index, slot in enumerate(slots):
                    if slot.active:
                        _evaluate(index, slot, fast, step, lr, loss_sums)
            for index, slot in enumerate(slots):
                job = slot.job
                if (slot.active and job.checkpoint_path is not None and job.checkpoint_every > 0
                        and step % job.checkpoint_every == 0 and step < job.end_step):
                    _save_checkpoint(index, slot, optimizer, scaler_state, step, loss_sums)
        for index, slot in enumerate(slots):
            if not slot.active:  # a checkpoint at or past the segment's end, as the solo loop would load it
                _join(index, slot, optimizer, loss_sums)
            if not slot.result.history or slot.result.history[-1]["step"] != step:
                # A zero-length segment (T = k) is still evaluated, so every stage reports accuracy.
                slot.result.history.append(evaluate_all(slot.job.model, slot.job, fast, step, schedule(step), math.nan))
            slot.result.final_step = step
            slot.result.wall_seconds = time.perf_counter() - slot.started
        return [slot.result for slot in slots]
    finally:
        if bar is not None:
            bar.close()
        stack.release()


def _resume(slots: list[_Slot], optimizer: PackOptimizer, loss_sums: torch.Tensor, fast: FastPath) -> int:
    """Read every job's checkpoint; load those at the earliest step now, the others when the pack gets there."""
    for slot in slots:
        state = read_checkpoint(slot.job, fast)
        if state is not None and state.get("tag") == slot.job.checkpoint_tag:
            slot.checkpoint, slot.joins_at = state, state["step"]
        else:
            slot.joins_at = slot.job.start_step
    start = min(slot.joins_at for slot in slots)
    now = time.perf_counter()
    starting = [slot for slot in slots if slot.joins_at == start]
    loaded = [slot for slot in starting if slot.checkpoint is not None]
    if loaded and len(loaded) != len(starting):
        names = ", ".join(slot.job.desc for slot in starting if slot.checkpoint is None)
        raise PackError(f"packed training: {names} start at step {start} without a checkpoint, while other jobs "
                        f"of the pack resume there from theirs; they cannot share one optimizer step count")
    if loaded:
        optimizer.load_all([slot.checkpoint["optimizer"] for slot in loaded] if len(loaded) == len(slots)
                           else _fill_missing(slots, start))
        set_rng_state(loaded[0].checkpoint["rng"])
    for index, slot in enumerate(slots):
        slot.started = now
        if slot.joins_at == start:
            if slot.checkpoint is not None:
                _load_checkpoint(index, slot, loss_sums)
            slot.active = True
    return start


def _fill_missing(slots: list[_Slot], start: int) -> list[dict]:
    """Optimizer states for load_all when only some jobs resume at `start`: the others borrow one (their slice
    is overwritten when they join)."""
    donor = next(slot.checkpoint["optimizer"] for slot in slots if slot.joins_at == start)
    return [slot.checkpoint["optimizer"] if slot.joins_at == start else donor for slot in slots]


def _load_checkpoint(index: int, slot: _Slot, loss_sums: torch.Tensor) -> None:
    state = slot.checkpoint
    slot.job.model.load_state_dict(state["model"])  # writes into the model's slice of the stack
    slot.result.history = state["history"]
    slot.result.wall_seconds = state["wall_seconds"]
    slot.started = time.perf_counter() - state["wall_seconds"]
    loss_sums[index] = state["pending_loss"][0]
    slot.loss_steps = state["pending_loss"][1]
    slot.checkpoint = None
    logger.info("resumed %s at step %d from %s", slot.job.desc, state["step"], slot.job.checkpoint_path)


def _join(index: int, slot: _Slot, optimizer: PackOptimizer, loss_sums: torch.Tensor) -> None:
    optimizer.load_slot(index, slot.checkpoint["optimizer"])
    _load_checkpoint(index, slot, loss_sums)
    slot.active = True


def _evaluate(index: int, slot: _Slot, fast: FastPath, step: int, lr: float, loss_sums: torch.Tensor) -> None:
    record = evaluate_all(slot.job.model, slot.job, fast, step, lr, loss_sums[index].item() / max(slot.loss_steps, 1))
    loss_sums[index] = 0.0
    slot.loss_steps = 0
    slot.result.history.append(record)
    if slot.job.on_eval is not None:
        slot.job.on_eval(step, record)


def _save_checkpoint(index: int, slot: _Slot, optimizer: PackOptimizer, scaler_state: dict, step: int,
                     loss_sums: torch.Tensor) -> None:
    job = slot.job
    model_state = {name: tensor.clone() for name, tensor in job.model.state_dict().items()}  # not the whole stack
    pending_loss = (loss_sums[index].item(), slot.loss_steps)
    atomic_torch_save(job.checkpoint_path, checkpoint_payload(
        job, model_state, optimizer.job_state(index), scaler_state, step, slot.result,
        time.perf_counter() - slot.started, pending_loss), durable=False)
