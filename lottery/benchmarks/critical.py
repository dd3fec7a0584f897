"""Critical compression of VGG-16 on CIFAR-shaped data, per method and BatchNorm mode, beside the SynFlow paper.

The SynFlow paper (Tanaka et al. 2020, Figure 1) reports the largest log10 compression before layer collapse
for VGG-16 on CIFAR-10: random 3.25, magnitude 2.75, SNIP 3.5, GraSP 3.5, SynFlow 6.0. This measures ours
with `lottery.pruning.prune.critical_compression`, the bisection `lottery prune --critical` runs: VGG-16 with
BatchNorm (convs without bias), kaiming-normal θ0 of seed 0, every conv and linear weight prunable (as in
Synaptic-Flow: prune.ignore=[]), global scope, SNIP and GraSP on one class-balanced batch of 10 random
CIFAR-shaped images per class, each in train and eval mode. Not a speed benchmark: it has no goal.

The SNIP and GraSP entries also record, at density 0.01, how many kept weights the two modes share, and at
density 0.001 which layers each mode collapses.
"""
from __future__ import annotations

import logging
import time

from lottery.benchmarks.data_pipeline import cifar_shaped_dataset
from lottery.benchmarks.result import BenchEntry
from lottery.config import ModelConfig
from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.pruning.methods import BN_MODES, get_method
from lottery.pruning.prune import PruneSpec, critical_compression, prune

logger = logging.getLogger(__name__)

PAPER = {"random": 3.25, "magnitude": 2.75, "snip": 3.5, "grasp": 3.5, "synflow": 6.0}  # SynFlow paper, Figure 1
SAMPLES_PER_CLASS = 10
NUM_CLASSES = 10  # CIFAR-10 shapes
TOLERANCE = 0.05
OVERLAP_DENSITY = 0.01
COLLAPSE_DENSITY = 0.001
SEED = 0


def kept_overlap(first: Mask, second: Mask) -> float:
    """The fraction of `first`'s kept weights that `second` keeps too."""
    shared = sum(int((first[name] & second[name]).sum()) for name in first.names)
    return shared / first.counts()[0]


def run(quick: bool = False) -> list[BenchEntry]:
    tolerance = 0.5 if quick else TOLERANCE
    dataset = cifar_shaped_dataset(SAMPLES_PER_CLASS * NUM_CLASSES * 2, augment=False)
    batches = [dataset.class_balanced(SAMPLES_PER_CLASS, SEED)]
    model = build_model(ModelConfig(name="vgg16"), dataset.input_shape, dataset.num_classes, SEED)
    entries = []
    for method in PAPER:
        modes = BN_MODES if get_method(method).bn_mode else (None,)
        masks = {}
        for mode in modes:
            spec = PruneSpec(method, seed=SEED, bn_mode=mode or "auto")
            data = batches if get_method(method).needs_data else None
            start = time.perf_counter()
            search = critical_compression(model, spec, data, dataset.input_shape, tol=tolerance)
            details = {
                "paper_figure_1": PAPER[method], "density": search.density, "precision": search.precision,
                "probes": search.probes, "seconds": time.perf_counter() - start,
                "bn_mode": mode or "none (the method does not run the network on data in a BatchNorm mode)",
                "default_bn_mode": get_method(method).bn_mode,
            }
            if mode is not None:
                masks[mode] = prune(model, spec, density=OVERLAP_DENSITY, batches=data).mask
                details[f"collapsed_at_density_{COLLAPSE_DENSITY:g}"] = prune(
                    model, spec, density=COLLAPSE_DENSITY, batches=data).collapsed
            name = f"critical.{method}" + (f".{mode}" if mode else "")
            logger.info("%s: 10^%.3f (paper 10^%.2f)", name, search.compression, PAPER[method])
            entries.append(BenchEntry(name, search.compression, "log10 compression", None, details))
        if len(masks) == 2:
            overlap = kept_overlap(masks["train"], masks["eval"])
            for entry in entries[-2:]:
                entry.details[f"kept_overlap_train_eval_at_density_{OVERLAP_DENSITY:g}"] = overlap
    return entries

