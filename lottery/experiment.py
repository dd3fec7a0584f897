"""What every command shares: the run directory, the dataset and the seeded model for a config."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lottery.config import Config, config_hash, from_yaml, to_yaml
from lottery.device import select_device
from lottery.io import atomic_write_text

logger = logging.getLogger(__name__)


def run_directory(config: Config) -> Path:
    """runs/<exp>/<hash8>/seed_<s>: named by what is computed, so a rerun finds its own outputs."""
    return Path(config.run.root) / config.exp / config_hash(config) / f"seed_{config.seed}"


def write_config(run_dir: Path, config: Config) -> None:
    """Save the resolved config first, so every run directory says what it is."""
    atomic_write_text(run_dir / "config.yaml", to_yaml(config))


def read_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?")
    return from_yaml(path.read_text(), str(path))


def load_data(config: Config, device: torch.device | None = None):
    from lottery.data import load_dataset

    device = device or select_device(config.train.device)
    return load_dataset(config.data, seed=config.seed, device=device)


def make_model(config: Config, dataset, seed: int | None = None) -> nn.Module:
    """The seeded θ0 for this config: the same seed gives the same weights, bit for bit."""
    from lottery.models import build_model

    return build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed if seed is None else seed)


@contextmanager
def open_run(config: Config, run_dir: Path, command: str):
    """Lock the run directory, write config.yaml, open tracking; close it FINISHED or FAILED.

    Yields (tracker, parent run). Under torchrun only rank 0 locks, writes and tracks.
    """
    from lottery import distributed
    from lottery.config import flatten
    from lottery.io import RunLock
    from lottery.tracker import Tracker, make_tracker, run_tags

    rank, _ = distributed.rank_and_world()
    with RunLock(run_dir) if rank == 0 else distributed.NoLock():
        tracker = Tracker()
        if rank == 0:
            write_config(run_dir, config)
            tracker = make_tracker(config, run_dir, command=command)
        parent = tracker.parent(config.exp, run_tags(config, command), flatten(config))
        status = "FAILED"
        try:
            yield tracker, parent
            if rank == 0:
                from lottery.report import publish

                publish(run_dir, tracker, parent)  # figures, masks and the report; never raises
            status = "FINISHED"
        finally:
            tracker.close(status)
