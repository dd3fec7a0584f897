"""The one training loop: from a start step to an end step, with masks, eval, hooks and resume."""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lottery.errors import CorruptFileError
from lottery.pruning.mask import Mask
from lottery.run.files import atomic_torch_save, torch_load
from lottery.training.device import FastPath, cpu_threads, prepare_model, resolve_fast_path
from lottery.training.optimizers import build_optimizer, mask_enforcer
from lottery.training.plan import StepPlan

logger = logging.getLogger(__name__)

EvalCallback = Callable[[int, dict], None]
StepHook = Callable[[int], None]


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    final_step: int = 0
    wall_seconds: float = 0.0

    @property
    def final_test_acc(self) -> Optional[float]:
        return self.history[-1]["test_acc"] if self.history else None

    @property
    def best_test_acc(self) -> Optional[float]:
        """The maximum test accuracy over evaluations: optimistic (shown as "max acc"), never to select on."""
        return max((row["test_acc"] for row in self.history), default=None)

    @property
    def final_val_acc(self) -> Optional[float]:
        return self.history[-1].get("val_acc") if self.history else None

    @property
    def early_stop(self) -> Optional[dict]:
        """The evaluation with the lowest validation loss (the LTH early-stopping iteration)."""
        rows = [row for row in self.history if row.get("val_loss") is not None]
        return min(rows, key=lambda row: row["val_loss"]) if rows else None

    def summary(self) -> dict:
        early = self.early_stop
        return {
            "final_test_acc": self.final_test_acc,
            "best_test_acc": self.best_test_acc,
            "final_val_acc": self.final_val_acc,
            "early_stop_step": early["step"] if early else None,
            "early_stop_test_acc": early["test_acc"] if early else None,
            "final_step": self.final_step,
            "wall_seconds": self.wall_seconds,
        }


def autocast_for(fast: FastPath):
    if fast.amp_dtype is None:
        return torch.autocast(fast.device.type, enabled=False)
    return torch.autocast(fast.device.type, dtype=fast.amp_dtype)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, fast: FastPath) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over all batches."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=fast.device)
    correct = torch.zeros((), dtype=torch.int64, device=fast.device)
    count = 0
    for inputs, labels in batches:
        if fast.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast_for(fast):
            logits = model(inputs)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        correct += (logits.argmax(dim=1) == labels).sum()
        count += labels.numel()
    model.train(was_training)
    if count == 0:
        return math.nan, math.nan
    return loss_sum.item() / count, correct.item() / count


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _progress(enabled_setting: str, total: int, desc: str):
    from tqdm import tqdm

    enabled = enabled_setting == "on" or (enabled_setting == "auto" and sys.stderr.isatty())
    return tqdm(total=total, desc=desc, disable=not enabled, unit="it", dynamic_ncols=True, leave=False)


@dataclass
class TrainJob:
    """One training segment: [start_step, end_step) of a schedule, optionally masked and resumable."""

    model: nn.Module
    dataset: object
    train_cfg: object
    seed: int
    start_step: int
    end_step: int
    mask: Optional[Mask] = None
    checkpoint_path: Optional[Path] = None
    checkpoint_every: int = 0
    checkpoint_tag: str = ""
    on_eval: Optional[EvalCallback] = None
    hooks: tuple = ()
    fast: Optional[FastPath] = None
    desc: str = "train"
    rank: int = 0
    world_size: int = 1
    # Dynamic sparse training (lottery.pruning.dynamic.MaskUpdater): changes `mask` in place between steps.
    mask_updater: Optional[object] = None


def train(job: TrainJob) -> TrainResult:
    """Run a segment. Resumes from job.checkpoint_path when it holds a checkpoint with the same tag."""
    fast = job.fast or resolve_fast_path(job.train_cfg, job.model, sample_shape=job.dataset.input_shape)
    with cpu_threads(fast.cpu_threads):
        return _train(job, fast)


def _train(job: TrainJob, fast: FastPath) -> TrainResult:
    cfg = job.train_cfg
    net = prepare_model(job.model, fast)
    if job.world_size > 1:
        net = nn.parallel.DistributedDataParallel(net)
    batches = job.dataset.train_batches(cfg.batch_size, job.seed, job.rank, job.world_size)
    plan = StepPlan.from_config(cfg, batches.iterations_per_epoch)
    schedule = plan.lr_schedule(cfg)
    optimizer = build_optimizer(job.model, cfg, job.mask)
    scaler = torch.amp.GradScaler(fast.device.type, enabled=fast.amp_dtype == torch.float16)
    enforce_mask = mask_enforcer(optimizer, job.mask, job.model)
    if job.mask is not None:
        job.mask.apply(job.model)

    result, step = TrainResult(), job.start_step
    pending_loss = (0.0, 0)  # train-loss sum and count since the last eval, kept across resume
    state = read_checkpoint(job, fast)
    if state is not None:
        if state.get("tag") == job.checkpoint_tag:
            job.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
            result.history, step = state["history"], state["step"]
            result.wall_seconds = state["wall_seconds"]
            pending_loss = state["pending_loss"]
            if job.mask_updater is not None:
                job.mask_updater.load_state_dict(state["mask_updater"], job.model, optimizer)
                enforce_mask = mask_enforcer(optimizer, job.mask, job.model)
            logger.info("resumed %s at step %d from %s", job.desc, step, job.checkpoint_path)

    job.model.train()
    started = time.perf_counter() - result.wall_seconds
    loss_sum = torch.tensor(pending_loss[0], dtype=torch.float64, device=fast.device)
    loss_steps = pending_loss[1]
    bar = _progress(cfg.progress, job.end_step - job.start_step, job.desc)
    bar.update(step - job.start_step)
    while step < job.end_step:
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = batches.batch(step)
        if fast.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast_for(fast):
            loss = F.cross_entropy(net(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(_global_mean_weight(loss, labels, batches, step, job.world_size)).backward()
        updating = job.mask_updater is not None and job.mask_updater.due(step)
        if not (updating and job.mask_updater.replaces_step):
            scaler.step(optimizer)
            scaler.update()
            if enforce_mask is not None:
                enforce_mask()
        if updating:  # the step's gradients are still in .grad
            job.mask_updater.update(step, job.model, optimizer)
            enforce_mask = mask_enforcer(optimizer, job.mask, job.model)
        step += 1
        loss_sum += loss.detach().double()
        loss_steps += 1
        for hook in job.hooks:
            hook(step)
        bar.update(1)
        if step % plan.eval_every == 0 or step == job.end_step:
            record = evaluate_all(net, job, fast, step, lr, loss_sum.item() / max(loss_steps, 1))
            loss_sum.zero_()
            loss_steps = 0
            result.history.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['test_acc']:.4f}")
            if job.on_eval is not None:
                job.on_eval(step, record)
        if (job.checkpoint_path is not None and job.checkpoint_every > 0
                and step % job.checkpoint_every == 0 and step < job.end_step and job.rank == 0):
            pending_loss = (loss_sum.item(), loss_steps)
            _save_checkpoint(job, optimizer, scaler, step, result, time.perf_counter() - started, pending_loss)
    bar.close()
    if not result.history or result.history[-1]["step"] != step:
        # A zero-length segment (T = k) is still evaluated, so every stage reports accuracy.
        result.history.append(evaluate_all(net, job, fast, step, schedule(step), math.nan))
    result.final_step = step
    result.wall_seconds = time.perf_counter() - started
    return result


def _global_mean_weight(loss, labels, batches, step: int, world_size: int):
    """DDP averages gradients over ranks; shards may differ by one example, so weight each
    rank's mean by its share to get exactly the single-process batch mean."""
    if world_size == 1:
        return loss
    return loss * (labels.numel() * world_size / len(batches.global_indices(step)))


def evaluate_all(net, job: TrainJob, fast: FastPath, step: int, lr: float, train_loss: float) -> dict:
    batch_size = job.train_cfg.eval_batch_size
    test_loss, test_acc = evaluate(net, job.dataset.eval_batches("test", batch_size), fast)
    record = {"step": step, "lr": lr, "train_loss": train_loss, "test_loss": test_loss, "test_acc": test_acc}
    if job.dataset.has_val:
        record["val_loss"], record["val_acc"] = evaluate(net, job.dataset.eval_batches("val", batch_size), fast)
    return record


def read_checkpoint(job: TrainJob, fast: FastPath) -> Optional[dict]:
    """The segment's checkpoint, or None. A damaged one is a cache: warn, delete it and start the segment over."""
    if job.checkpoint_path is None or not Path(job.checkpoint_path).exists():
        return None
    try:
        return torch_load(job.checkpoint_path, map_location=fast.device, what="checkpoint")
    except CorruptFileError as error:
        logger.warning("%s; training %s from its start instead", error, job.desc)
        Path(job.checkpoint_path).unlink(missing_ok=True)
        return None


def _save_checkpoint(job: TrainJob, optimizer, scaler, step: int, result: TrainResult, wall: float,
                     pending_loss: tuple[float, int]) -> None:
    atomic_torch_save(job.checkpoint_path, checkpoint_payload(
        job, job.model.state_dict(), optimizer.state_dict(), scaler.state_dict(), step, result, wall, pending_loss,
    ), durable=False)


def checkpoint_payload(job: TrainJob, model_state: dict, optimizer_state: dict, scaler_state: dict, step: int,
                       result: TrainResult, wall: float, pending_loss: tuple[float, int]) -> dict:
    """What a segment's checkpoint holds; packed training writes the same, so either loop resumes the other's."""
    return {
        "tag": job.checkpoint_tag,
        "model": model_state,
        "optimizer": optimizer_state,
        "scaler": scaler_state,
        "rng": rng_state(),
        "history": result.history,
        "step": step,
        "wall_seconds": wall,
        "pending_loss": pending_loss,
        **({"mask_updater": job.mask_updater.state_dict()} if job.mask_updater is not None else {}),
    }
