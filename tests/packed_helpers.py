"""Builders shared by the packed-training tests: tiny configs, float64 data, models, masks, jobs, comparisons."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.training.device import FastPath
from lottery.training.loop import TrainJob
from tests.helpers import tiny_config

# One thread, as the solo loop picks for models this small: the same kernels whatever the machine.
CPU = FastPath(device=torch.device("cpu"), amp_dtype=None, channels_last=False, cudnn_benchmark=False,
               compile=False, cpu_threads=1)
ARCHITECTURES = {  # (model.name, model.width, optimizer settings)
    "mlp": ("lenet_32", 0, {"optimizer": "adam", "lr": 0.01, "weight_decay": 1e-4}),
    "conv_bn": ("vgg11", 4, {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True,
                             "weight_decay": 1e-4, "batch_size": 16}),
    "resnet": ("resnet20", 4, {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4,
                               "batch_size": 16}),
}


def make_config(name="lenet_32", width=0, **train):
    return tiny_config(**{"model.name": name, "model.width": width, "train.milestones": ["60it"],
                          "train.warmup": "5it", **{f"train.{key}": value for key, value in train.items()}})


def as_float64(dataset):
    """The dataset's batches in float64, for float64 models (train and evaluation alike)."""
    normalize = dataset.normalize
    dataset.normalize = lambda raw: normalize(raw).double()
    return dataset


def make_models(config, dataset, count, dtype=torch.float64):
    return [build_model(config.model, dataset.input_shape, dataset.num_classes, seed).to(dtype)
            for seed in range(count)]


def random_mask(model, density, seed):
    generator = torch.Generator().manual_seed(seed)
    return Mask({name: torch.rand(kept.shape, generator=generator) < density for name, kept in Mask.ones(model).items()})


def make_jobs(config, dataset, models, seeds, masks=None, steps=100, fast=CPU, **extra):
    masks = masks or [None] * len(models)
    return [TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=seed, start_step=0, end_step=steps,
                     mask=mask, fast=fast, desc=f"job {index}", **extra)
            for index, (model, seed, mask) in enumerate(zip(models, seeds, masks))]


def worst_relative_difference(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for (name, x), (other, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert name == other
        if x.is_floating_point():
            worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-300)))
        else:
            assert torch.equal(x, y), name  # num_batches_tracked
    return worst


def assert_identical(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def assert_histories_match(packed, solo, exact: bool) -> None:
    assert [row["step"] for row in packed.history] == [row["step"] for row in solo.history]
    for ours, theirs in zip(packed.history, solo.history):
        assert set(ours) == set(theirs)
        for key in theirs:
            if exact or key in ("step", "lr"):
                assert ours[key] == theirs[key], key
            else:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key
