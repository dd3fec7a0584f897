"""ResNet-20 on CIFAR-10-shaped data on a CUDA GPU: packed training against one model at a time.

Contenders, timed round by round, interleaved (timing.py), each training a segment of the same number of
steps (batch 128, SGD with momentum 0.9 and weight decay 1e-4, as OpenLTH trains ResNet-20):
- plain:      the reference frameworks' loop: a torchvision DataLoader over PIL images with RandomCrop and
              RandomHorizontalFlip (data_pipeline.torchvision_loader, with worker processes), a float32 NCHW
              model, loss.backward(), optimizer.step(); no evaluation;
- unpacked:   lottery's solo loop, train(), one model, with the fast path on (bf16 autocast, channels_last,
              cudnn.benchmark) and the batches gathered and augmented on the device;
- packed_K:   train_packed() over K models (K = 1, 4, 8, 16), the same fast path.
Both of lottery's contenders start each call from θ0 and evaluate once at the segment's end.
value: model-epochs per minute (50,000 images an epoch); the ratios at the best K are per round
(K·steps / packed time over steps / baseline time), medians over rounds.

Without a CUDA device the benchmark reports one entry saying so. measure() takes the device and sizes, so
its logic runs on CPU with a tiny model (tests/test_bench_packing.py).
"""
from __future__ import annotations

import copy
import logging
import os
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lottery.benchmarks.data_pipeline import BATCH_SIZE, CIFAR, EndlessBatches, cifar_shaped_dataset, torchvision_loader
from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.timing import Timings, interleaved, load_average
from lottery.config import ModelConfig, TrainConfig
from lottery.data import Dataset
from lottery.models import build_model
from lottery.training.loop import TrainJob, train
from lottery.training.packed import train_packed

logger = logging.getLogger(__name__)

GOAL_VS_UNPACKED = Goal(">=", 4.0)
GOAL_VS_PLAIN = Goal(">=", 20.0)
CIFAR_TRAIN = 50_000
PACK_SIZES = (1, 4, 8, 16)


@dataclass(frozen=True)
class GpuCase:
    device: str
    width: int = 16
    pack_sizes: tuple[int, ...] = PACK_SIZES
    steps: int = 100  # per call, per model
    rounds: int = 3
    warmup_rounds: int = 1
    num_images: int = CIFAR_TRAIN
    workers: int = 8  # the plain loop's DataLoader worker processes
    batch_size: int = BATCH_SIZE


def train_config(case: GpuCase) -> TrainConfig:
    return TrainConfig(steps=f"{case.steps}it", batch_size=case.batch_size, optimizer="sgd", lr=0.1, momentum=0.9,
                       weight_decay=1e-4, eval_every=f"{case.steps}it", device=case.device, progress="off")


def on_device(dataset: Dataset, device: str) -> Dataset:
    """The same images and labels held on `device` (our pipeline gathers and augments there)."""
    splits = {split: dataset.raw(split, slice(None)) for split in ("train", "test")}
    return Dataset(dataset.name, splits, dataset.num_classes, CIFAR.mean, CIFAR.std, scale=1 / 255,
                   augment=dataset.augment, device=device)


class PlainLoop:
    """A hand-written PyTorch loop over a torchvision DataLoader: the model trains on across calls."""

    def __init__(self, model, cpu_dataset: Dataset, cfg: TrainConfig, steps: int, workers: int):
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.batches = EndlessBatches(torchvision_loader(cpu_dataset, workers, cfg.batch_size))
        self.steps = steps

    def __call__(self) -> None:
        for _ in range(self.steps):
            inputs, labels = self.batches()
            inputs = inputs.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(inputs), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def contenders(case: GpuCase) -> tuple[dict, dict[str, int]]:
    """The timed calls, and how many models each trains per call."""
    cfg = train_config(case)
    cpu_dataset = cifar_shaped_dataset(case.num_images)
    dataset = on_device(cpu_dataset, case.device)
    model_cfg = ModelConfig(name="resnet20", width=case.width)
    theta0 = [build_model(model_cfg, dataset.input_shape, dataset.num_classes, seed)
              for seed in range(max(case.pack_sizes))]

    def jobs(count: int) -> list[TrainJob]:
        return [TrainJob(model=copy.deepcopy(model), dataset=dataset, train_cfg=cfg, seed=seed, start_step=0,
                         end_step=case.steps, desc=f"resnet20 {seed}") for seed, model in enumerate(theta0[:count])]

    calls = {"plain": PlainLoop(copy.deepcopy(theta0[0]), cpu_dataset, cfg, case.steps, case.workers),
             "unpacked": lambda: train(jobs(1)[0])}
    models = {"plain": 1, "unpacked": 1}
    for count in case.pack_sizes:
        calls[f"packed_{count}"] = lambda count=count: train_packed(jobs(count))
        models[f"packed_{count}"] = count
    return calls, models


def speedups(timings: Timings, name: str, baseline: str, models: dict[str, int]) -> list[float]:
    """Per round: model-steps per second of `name` over those of `baseline`."""
    return [(models[name] / ours) / (models[baseline] / theirs)
            for ours, theirs in zip(timings.samples[name], timings.samples[baseline])]


def measure(case: GpuCase) -> list[BenchEntry]:
    calls, models = contenders(case)
    before = load_average()
    timings = interleaved(calls, case.rounds, case.warmup_rounds)
    epochs_per_minute = {name: 60 * models[name] * case.steps * case.batch_size / (timings.median(name) * CIFAR_TRAIN)
                         for name in calls}
    packed = [name for name in calls if name.startswith("packed_")]
    best = max(packed, key=epochs_per_minute.get)
    setup = {"device": case.device, "model": "resnet20", "width": case.width, "batch_size": case.batch_size,
             "steps_per_call": case.steps, "images": case.num_images, "plain_workers": case.workers,
             "load_average_before": before, "load_average_after": load_average(), **timings.summary()}
    entries = [BenchEntry(f"gpu.resnet20.{name}", epochs_per_minute[name], "model-epochs/min", None,
                          {**setup, "models_per_call": models[name]}) for name in calls]
    for baseline, goal in (("unpacked", GOAL_VS_UNPACKED), ("plain", GOAL_VS_PLAIN)):
        ratios = speedups(timings, best, baseline, models)
        entries.append(BenchEntry(f"gpu.resnet20.best_pack_vs_{baseline}", statistics.median(ratios),
                                  f"x {baseline}", goal, {
                                      **setup, "best": best, "per_round": ratios,
                                      "by_pack": {name: statistics.median(speedups(timings, name, baseline, models))
                                                  for name in packed}}))
    logger.info("gpu: %s", ", ".join(f"{name} {value:.1f}" for name, value in epochs_per_minute.items()))
    return entries


def run(quick: bool = False) -> list[BenchEntry]:
    if not torch.cuda.is_available():
        return [BenchEntry("gpu", float("nan"), "model-epochs/min", None,
                           {"skipped": "no CUDA device on this machine: the GPU benchmark needs one"})]
    workers = min(8, os.cpu_count() or 1)
    if quick:
        return measure(GpuCase("cuda", pack_sizes=(1, 4), steps=20, rounds=1, num_images=BATCH_SIZE * 40,
                               workers=workers))
    return measure(GpuCase("cuda", workers=workers))
