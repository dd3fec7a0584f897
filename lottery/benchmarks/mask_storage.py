"""Mask storage: bits on disk per prunable weight, for Mask.save's bit-packed format.

Random masks are the hard case for compression (every bit is a fair coin at density 0.5), so
they bound what any real mask costs. The file includes its header (names, shapes, checksum).
Each file is read back and compared, so a small number cannot come from a broken file.
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

from lottery.benchmarks.masking import random_mask
from lottery.benchmarks.result import BenchEntry, Goal
from lottery.config import ModelConfig
from lottery.models import build_model
from lottery.pruning.mask import Mask

logger = logging.getLogger(__name__)

GOAL = Goal("<=", 1.01)
SEED = 0
MODELS = {"lenet_300_100": (1, 28, 28), "resnet20": (3, 32, 32), "vgg16": (3, 32, 32)}
QUICK_MODELS = ("lenet_300_100", "resnet20")
DENSITIES = (1.0, 0.5, 0.2, 0.05, 0.01)
QUICK_DENSITIES = (0.5, 0.2, 0.01)


def entropy_bits(density: float) -> float:
    """Shannon's bound for an i.i.d. mask: bits per weight that no coder can beat on average."""
    if density in (0.0, 1.0):
        return 0.0
    return -(density * math.log2(density) + (1 - density) * math.log2(1 - density))


def bits_per_weight(mask: Mask, folder: Path) -> float:
    path = folder / "mask.pt"
    mask.save(path)
    if not Mask.load(path).equals(mask):
        raise RuntimeError(f"mask_storage: {path} does not read back as the mask that was saved")
    return path.stat().st_size * 8 / mask.counts()[1]


def measure(model_name: str, densities, folder: Path) -> BenchEntry:
    model = build_model(ModelConfig(name=model_name), MODELS[model_name], 10, SEED)
    by_density = {}
    for density in densities:
        mask = random_mask(model, density, SEED)
        by_density[str(density)] = {"bits_per_weight": bits_per_weight(mask, folder),
                                    "achieved_density": mask.density(), "entropy_bound": entropy_bits(density)}
    worst = max(row["bits_per_weight"] for row in by_density.values())
    logger.info("mask storage %s: at most %.4f bits per prunable weight", model_name, worst)
    return BenchEntry(f"mask_storage.{model_name}", worst, "bits/weight", GOAL, {
        "prunable_weights": Mask.ones(model).counts()[1], "densities": by_density,
        "note": "random masks (the worst case for compression); value = the worst density; file size includes the header",
    })


def run(quick: bool = False) -> list[BenchEntry]:
    models = QUICK_MODELS if quick else tuple(MODELS)
    densities = QUICK_DENSITIES if quick else DENSITIES
    with tempfile.TemporaryDirectory(prefix="lottery-bench-masks-") as folder:
        return [measure(name, densities, Path(folder)) for name in models]
