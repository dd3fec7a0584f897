"""Packed training: K jobs in one step equal each job trained alone (float64 to 1e-10 after 100 steps), pruned
weights stay 0, a job's results do not depend on its pack, bad packs are refused (resume: test_packed_resume.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lottery.config import load_config
from lottery.data import load_dataset
from lottery.models import build_model
from lottery.models.flops import forward_flops
from lottery.pruning.mask import Mask
from lottery.pruning.prune import prune_fraction
from lottery.training.device import SMALL_STEP_FLOPS, FastPath, resolve_fast_path
from lottery.training.loop import TrainJob, train
from lottery.training.packed import PackError, choose_pack_size, train_packed
from lottery.training.packed.size import bytes_per_model
from tests.helpers import tiny_dataset
from tests.packed_helpers import (ARCHITECTURES, as_float64, assert_histories_match, assert_identical, make_config,
                                  make_jobs, make_models, random_mask, worst_relative_difference)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_float64_packed_models_equal_their_solo_runs_after_100_steps(architecture):
    name, width, settings = ARCHITECTURES[architecture]
    config = make_config(name, width, **settings)
    dataset = as_float64(tiny_dataset(config))
    count = 2 if architecture == "resnet" else 3
    models = make_models(config, dataset, count)
    masks = [None] + [random_mask(models[0], 0.5, seed) for seed in range(1, count)]  # a dense one among masked
    seeds = [11, 12, 13][:count]
    solo_models = copy.deepcopy(models)
    solo = [train(job) for job in make_jobs(config, dataset, solo_models, seeds, masks)]
    packed = train_packed(make_jobs(config, dataset, models, seeds, masks))
    for ours, theirs, ours_result, their_result, mask in zip(models, solo_models, packed, solo, masks):
        assert worst_relative_difference(ours, theirs) < 1e-10
        assert_histories_match(ours_result, their_result, exact=False)
        assert ours_result.summary().keys() == their_result.summary().keys()
        assert ours_result.final_step == their_result.final_step == 100
        if mask is not None:
            for weight_name, kept in mask.items():
                assert torch.count_nonzero(ours.get_parameter(weight_name)[~kept]) == 0
    assert not torch.equal(models[0].state_dict()[next(iter(models[0].state_dict()))],
                           models[1].state_dict()[next(iter(models[1].state_dict()))])


def test_channels_last_and_augmented_own_batches_equal_solo_in_float64():
    name, width, settings = ARCHITECTURES["conv_bn"]
    config = make_config(name, width, **settings, **{"steps": "30it"})
    config.data.augment = True
    dataset = as_float64(tiny_dataset(config))
    fast = FastPath(torch.device("cpu"), None, True, False, False, 1)
    models = make_models(config, dataset, 2)
    solo_models = copy.deepcopy(models)
    solo = [train(job) for job in make_jobs(config, dataset, solo_models, [3, 4], steps=30, fast=fast)]
    packed = train_packed(make_jobs(config, dataset, models, [3, 4], steps=30, fast=fast))
    for ours, theirs, ours_result, their_result in zip(models, solo_models, packed, solo):
        assert worst_relative_difference(ours, theirs) < 1e-10
        assert_histories_match(ours_result, their_result, exact=False)
        conv = next(module for module in ours.modules() if isinstance(module, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # as the solo loop leaves it


def test_bf16_autocast_trains_a_pack_on_cpu():
    config = make_config("conv2", 8)
    dataset = tiny_dataset(config)
    fast = FastPath(torch.device("cpu"), torch.bfloat16, True, False, False, 1)
    models = make_models(config, dataset, 2, dtype=torch.float32)
    results = train_packed(make_jobs(config, dataset, models, [0, 1], steps=40, fast=fast))
    for model, result in zip(models, results):
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
        assert all(parameter.dtype == torch.float32 for parameter in model.parameters())


@pytest.mark.parametrize("optimizer, settings", [
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("adam", {"lr": 0.01, "weight_decay": 1e-3}),
    ("adamw", {"lr": 0.01, "weight_decay": 1e-2}),
])
def test_pruned_weights_stay_exactly_zero_after_every_step(optimizer, settings):
    config = make_config(optimizer=optimizer, **settings)
    dataset = tiny_dataset(config)
    models = make_models(config, dataset, 3, dtype=torch.float32)
    masks = [random_mask(models[0], density, seed) for seed, density in enumerate((0.2, 0.5, 0.8))]
    checked = []

    def zero_check(model, mask):
        def hook(step):
            for weight_name, kept in mask.items():
                assert torch.count_nonzero(model.get_parameter(weight_name)[~kept]) == 0, (step, weight_name)
            checked.append(step)
        return hook

    jobs = make_jobs(config, dataset, models, [0, 1, 2], masks, steps=40)
    for job, model, mask in zip(jobs, models, masks):
        job.hooks = (zero_check(model, mask),)
    train_packed(jobs)
    assert sorted(checked) == sorted(list(range(1, 41)) * 3)


def test_a_shared_data_order_is_gathered_once_per_step_and_equals_solo(monkeypatch):
    config = make_config(optimizer="adam", lr=0.01)
    dataset = as_float64(tiny_dataset(config))
    models = make_models(config, dataset, 3)
    solo_models = copy.deepcopy(models)
    solo = [train(job) for job in make_jobs(config, dataset, solo_models, [5, 5, 5])]
    gathers = []
    raw = dataset.raw
    monkeypatch.setattr(dataset, "raw", lambda split, indices: gathers.append(split) or raw(split, indices))
    packed = train_packed(make_jobs(config, dataset, models, [5, 5, 5]))
    assert gathers.count("train") == 100  # one gather per step for the whole pack
    for ours, theirs, ours_result, their_result in zip(models, solo_models, packed, solo):
        assert worst_relative_difference(ours, theirs) < 1e-10
        assert_histories_match(ours_result, their_result, exact=False)
    gathers.clear()
    train_packed(make_jobs(config, dataset, make_models(config, dataset, 3), [1, 2, 3], steps=10))
    assert gathers.count("train") == 10  # own data orders: still one gather per step, of all three batches


@pytest.mark.parametrize("architecture, dtype", [("mlp", torch.float64), ("conv_bn", torch.float64),
                                                 ("mlp", torch.float32)])
def test_a_jobs_results_do_not_depend_on_what_it_is_packed_with(architecture, dtype):
    """float64 for every architecture; float32 too for MLPs (batched products and elementwise steps), while grouped
    convolutions in float32 round differently with the number of groups, so a conv net's float32 bits do depend on
    its pack (docs/packing.md)."""
    name, width, settings = ARCHITECTURES[architecture]
    config = make_config(name, width, **settings)
    dataset = tiny_dataset(config)
    dataset = as_float64(dataset) if dtype == torch.float64 else dataset
    base = make_models(config, dataset, 4, dtype=dtype)
    masks = [random_mask(base[0], 0.5, seed) for seed in range(4)]
    steps = 100 if architecture == "mlp" else 30
    outcomes = []
    for pack in (1, 2, 4):
        order = list(range(1, pack)) + [0]  # the job under test sits last: position 0, 1, then 3
        models = [copy.deepcopy(base[index]) for index in order]
        results = train_packed(make_jobs(config, dataset, models, [20 + index for index in order],
                                     [masks[index] for index in order], steps=steps))
        outcomes.append((models[-1], results[-1]))
    (alone, alone_result), *others = outcomes
    for model, result in others:
        assert_identical(model, alone)
        assert result.history == alone_result.history


def test_results_hooks_and_callbacks_are_per_job_and_models_own_their_weights_afterwards():
    config = make_config()
    dataset = tiny_dataset(config)
    models = make_models(config, dataset, 2, dtype=torch.float32)
    seen = {0: [], 1: []}
    steps = {0: [], 1: []}
    jobs = make_jobs(config, dataset, models, [0, 1], steps=50)
    for index, job in enumerate(jobs):
        job.on_eval = lambda step, record, index=index: seen[index].append(record)
        job.hooks = (lambda step, index=index: steps[index].append(step),)
    results = train_packed(jobs)
    for index, result in enumerate(results):
        assert [row["step"] for row in result.history] == [20, 40, 50]
        assert seen[index] == result.history
        assert steps[index] == list(range(1, 51))
        assert result.summary()["final_step"] == 50 and result.final_test_acc is not None
    assert models[0].training and models[1].training
    first, second = models[0].fc1.weight, models[1].fc1.weight
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    assert first.untyped_storage().nbytes() == first.numel() * first.element_size()  # not a view of the stack
    before = second.detach().clone()
    with torch.no_grad():
        first.add_(1.0)
    assert torch.equal(second, before)


def test_a_zero_length_segment_is_evaluated_as_in_the_solo_loop():
    config = make_config()
    dataset = tiny_dataset(config)
    models = make_models(config, dataset, 2, dtype=torch.float32)
    solo = [train(job) for job in make_jobs(config, dataset, copy.deepcopy(models), [0, 1], steps=0)]
    packed = train_packed(make_jobs(config, dataset, models, [0, 1], steps=0))
    for ours, theirs in zip(packed, solo):
        assert ours.history == theirs.history and ours.final_step == 0


def _refused(jobs, match):
    with pytest.raises(PackError, match=match):
        train_packed(jobs)


def test_packs_of_different_architectures_schedules_or_segments_are_refused():
    config = make_config()
    dataset = tiny_dataset(config)
    lenet32, other32 = make_models(config, dataset, 2, dtype=torch.float32)
    lenet16 = build_model(make_config("lenet_16").model, dataset.input_shape, dataset.num_classes, 0)
    conv = build_model(make_config("conv2", 8).model, dataset.input_shape, dataset.num_classes, 0)
    _refused(make_jobs(config, dataset, [lenet32, lenet16], [0, 1]), r"job 1 \(job 1\) has other parameters.*fc1.weight")
    _refused(make_jobs(config, dataset, [lenet32, conv], [0, 1]), "is a ConvNet, job 0 .* a LeNet")
    _refused(make_jobs(config, dataset, [lenet32, lenet32], [0, 1]), "model object another job")
    jobs = make_jobs(config, dataset, [lenet32, other32], [0, 1])
    jobs[1].end_step = 50
    _refused(jobs, "trains steps 0..50")
    jobs = make_jobs(config, dataset, [lenet32, other32], [0, 1])
    jobs[1].train_cfg = make_config(lr=0.5).train
    _refused(jobs, "another train config")
    jobs = make_jobs(config, dataset, [lenet32, other32], [0, 1])
    jobs[1].dataset = tiny_dataset(config)
    _refused(jobs, "another Dataset object")
    jobs = make_jobs(config, dataset, [lenet32, other32], [0, 1])
    for job in jobs:
        job.fast = FastPath(torch.device("cpu"), torch.float16, False, False, False, 1)
    _refused(jobs, "fp16")
    _refused([], "at least one job")


class _MixesModels(nn.Module):
    """Centres the features across the whole hidden vector: in a pack that is across models."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        hidden = torch.relu(self.fc(x.flatten(1)))
        return self.out(hidden - hidden.mean(dim=(0, 1), keepdim=True))


class _WithDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x.flatten(1)))


@pytest.mark.parametrize("module, match", [(_MixesModels, "mixes the models"), (_WithDropout, "dropout"),
                                           (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8)),
                                            "LayerNorm.*tensors of its own")])
def test_architectures_whose_forward_cannot_be_packed_are_refused(module, match):
    config = make_config()
    dataset = tiny_dataset(config)
    torch.manual_seed(0)
    _refused(make_jobs(config, dataset, [module(), module()], [0, 1], steps=5), match)


def test_float32_digits_accuracies_agree_within_one_test_example_and_masks_match():
    config = load_config("digits")
    config.train.device, config.train.progress = "cpu", "off"
    dataset = load_dataset(config.data, seed=config.seed, device="cpu")
    end = 40 * 20  # 40 epochs of 20 iterations
    models = make_models(config, dataset, 2, dtype=torch.float32)
    masks = [Mask.ones(model) for model in models]
    solo_models = copy.deepcopy(models)
    digit_jobs = lambda chosen: [TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=seed, start_step=0,  # noqa: E731
                                    end_step=end, mask=mask) for model, seed, mask in zip(chosen, [0, 1], masks)]
    solo = [train(job) for job in digit_jobs(solo_models)]
    packed = train_packed(digit_jobs(models))
    test_size = dataset.split_size("test")
    for ours, theirs, ours_result, their_result, mask in zip(models, solo_models, packed, solo, masks):
        assert abs(ours_result.final_test_acc - their_result.final_test_acc) * test_size <= 1 + 1e-9
        assert their_result.final_test_acc > 0.9
        chosen = [prune_fraction(model, mask, config.prune.fraction, scope=config.prune.scope,
                                 layer_rates=config.prune.layer_rates).mask for model in (ours, theirs)]
        assert chosen[0].equals(chosen[1])


def test_choose_pack_size_fits_free_memory_within_bounds():
    config = make_config(optimizer="adam")
    dataset = tiny_dataset(config)
    model = make_models(config, dataset, 1, dtype=torch.float32)[0]
    per_model = bytes_per_model(model, config.train, dataset.input_shape)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert per_model > 4 * weights  # weights, gradients, two Adam moments, and activations on top
    assert bytes_per_model(model, make_config(optimizer="sgd").train, dataset.input_shape) < per_model
    choose = lambda free, bound=16: choose_pack_size(model, config.train, dataset.input_shape, "cpu",  # noqa: E731
                                                     max_pack=bound, free_bytes=free)
    assert choose(per_model * 5) == 4  # 80% of the free memory holds four
    assert choose(per_model * 1000) == 16 and choose(per_model * 1000, bound=3) == 3
    assert choose(per_model // 10) == 1  # never less than one
    assert choose_pack_size(model, config.train, dataset.input_shape, "cpu", max_pack=16, free_bytes=per_model * 10,
                            jobs_per_device=2) == 4  # two packs share the device: 80% of half of it each
    assert 1 <= choose_pack_size(model, config.train, dataset.input_shape, "cpu") <= 8


def test_a_pack_trains_on_the_solo_loops_cpu_threads_whatever_its_size(monkeypatch):
    """Threads by one model's size (the solo rule), not the pack's: the same kernels for every pack size."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = make_config()
    dataset = tiny_dataset(config)
    base = make_models(config, dataset, 1, dtype=torch.float32)[0]
    pack = int(SMALL_STEP_FLOPS // forward_flops(base, dataset.input_shape, config.train.batch_size)) + 1
    assert resolve_fast_path(config.train, base, sample_shape=dataset.input_shape).cpu_threads == 1
    seen, before = [], torch.get_num_threads()
    jobs = make_jobs(config, dataset, [copy.deepcopy(base) for _ in range(pack)], list(range(pack)), steps=2,
                     fast=None)
    jobs[0].hooks = (lambda step: seen.append(torch.get_num_threads()),)
    train_packed(jobs)  # a step above the one-thread size, of models below it
    assert seen == [1, 1] and torch.get_num_threads() == before
