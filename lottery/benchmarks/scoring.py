"""Scoring time: wall seconds to prune at initialisation with SynFlow (100 rounds), SNIP and GraSP.

VGG-16 and ResNet-20 on CIFAR shapes (3, 32, 32), 10 classes, at density 0.01 (compression 2),
through lottery.pruning.prune exactly as `lottery baselines` calls it. SNIP and GraSP score one
class-balanced batch of 10 images per class (100 images); SynFlow uses no data and runs in
float64. Each method gets an untimed warm-up (SynFlow: one round), then timed repeats whose
median is reported; the methods are interleaved within every repeat. The process CPU time of
each repeat is recorded too: on a shared machine it shows how much of the wall time was ours.
"""
from __future__ import annotations

import logging
import statistics
import time

import torch

from lottery.benchmarks.data_pipeline import cifar_shaped_dataset
from lottery.benchmarks.result import BenchEntry, Goal
from lottery.config import ModelConfig
from lottery.models import build_model
from lottery.pruning.mask import prunable_parameters
from lottery.pruning.prune import PruneSpec, prune

logger = logging.getLogger(__name__)

DENSITY = 0.01
SAMPLES_PER_CLASS = 10
NUM_CLASSES = 10  # CIFAR-10 shapes
METHODS = ("synflow", "snip", "grasp")
MODELS = ("vgg16", "resnet20")
GOALS = {("synflow", "vgg16"): Goal("<=", 20.0)}  # DESIGN.md, "Performance targets"
SEED = 0


def _pruner(model, method: str, batches, input_shape, rounds: int | None = None, density: float = DENSITY):
    def run_once():
        return prune(model, PruneSpec(method, rounds=rounds, seed=SEED), density=density,
                     batches=batches if method != "synflow" else None, input_shape=input_shape)

    return run_once


def run(quick: bool = False) -> list[BenchEntry]:
    repeats = 1 if quick else 3
    dataset = cifar_shaped_dataset(SAMPLES_PER_CLASS * NUM_CLASSES * 2, augment=False)
    batches = [dataset.class_balanced(SAMPLES_PER_CLASS, SEED)]
    entries = []
    for model_name in MODELS:
        model = build_model(ModelConfig(name=model_name), dataset.input_shape, dataset.num_classes, SEED)
        prunable = sum(tensor.numel() for tensor in prunable_parameters(model).values())
        for method in METHODS:  # warm-up (allocator, kernels); a mild density, so no collapse warnings
            _pruner(model, method, batches, dataset.input_shape, rounds=1, density=0.9)()
        seconds: dict[str, list[float]] = {method: [] for method in METHODS}
        cpu_seconds: dict[str, list[float]] = {method: [] for method in METHODS}
        outcomes: dict[str, object] = {}
        for _ in range(repeats):
            for method in METHODS:
                start, cpu_start = time.perf_counter(), time.process_time()
                outcomes[method] = _pruner(model, method, batches, dataset.input_shape)()
                seconds[method].append(time.perf_counter() - start)
                cpu_seconds[method].append(time.process_time() - cpu_start)
        entries.extend(_entry(model_name, method, seconds[method], cpu_seconds[method], outcomes[method], prunable)
                       for method in METHODS)
    return entries


def _entry(model_name: str, method: str, seconds: list[float], cpu_seconds: list[float], outcome,
           prunable: int) -> BenchEntry:
    value = statistics.median(seconds)
    logger.info("scoring %s on %s: %.2f s", method, model_name, value)
    data = ("none (all-ones input, float64)" if method == "synflow"
            else f"{SAMPLES_PER_CLASS * NUM_CLASSES} images, {SAMPLES_PER_CLASS} per class")
    return BenchEntry(f"scoring.{method}.{model_name}", value, "s", GOALS.get((method, model_name)), {
        "model": model_name, "method": method, "rounds": 100 if method == "synflow" else 1, "data": data,
        "target_density": DENSITY, "achieved_density": outcome.density, "collapsed_layers": outcome.collapsed,
        "prunable_weights": prunable, "repeats_seconds": seconds,
        "repeats_cpu_seconds": cpu_seconds, "torch_threads": torch.get_num_threads(),
        "note": "wall seconds (median of the repeats); cpu seconds add up all threads and exclude time "
                "lost to other processes on a shared machine",
    })
