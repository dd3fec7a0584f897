"""Packed training: K jobs in one step equal each job trained alone (float64 to 1e-10 after 100 steps), pruned
weights stay 0, a job's results do not depend on its pack, resume is bit-identical, bad packs are refused."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lottery.config import load_config
from lottery.data import load_dataset
from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.pruning.prune import prune_fraction
from lottery.training.device import FastPath
from lottery.training.loop import TrainJob, train
from lottery.training.packed import PackError, choose_pack_size, train_packed
from lottery.training.packed.size import bytes_per_model
from tests.helpers import tiny_config, tiny_dataset

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


def _config(name="lenet_32", width=0, **train):
    return tiny_config(**{"model.name": name, "model.width": width, "train.milestones": ["60it"],
                          "train.warmup": "5it", **{f"train.{key}": value for key, value in train.items()}})


def _float64(dataset):
    """The dataset's batches in float64, for float64 models (train and evaluation alike)."""
    normalize = dataset.normalize
    dataset.normalize = lambda raw: normalize(raw).double()
    return dataset


def _models(config, dataset, count, dtype=torch.float64):
    return [build_model(config.model, dataset.input_shape, dataset.num_classes, seed).to(dtype)
            for seed in range(count)]


def _random_mask(model, density, seed):
    generator = torch.Generator().manual_seed(seed)
    return Mask({name: torch.rand(kept.shape, generator=generator) < density for name, kept in Mask.ones(model).items()})


def _jobs(config, dataset, models, seeds, masks=None, steps=100, **extra):
    masks = masks or [None] * len(models)
    return [TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=seed, start_step=0, end_step=steps,
                     mask=mask, fast=CPU, desc=f"job {index}", **extra)
            for index, (model, seed, mask) in enumerate(zip(models, seeds, masks))]


def _worst_relative_difference(a: nn.Module, b: nn.Module) -> float:
    worst = 0.0
    for (name, x), (other, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert name == other
        if x.is_floating_point():
            worst = max(worst, float((x - y).abs().max() / x.abs().max().clamp_min(1e-300)))
        else:
            assert torch.equal(x, y), name  # num_batches_tracked
    return worst


def _assert_identical(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def _assert_histories_match(packed, solo, exact: bool) -> None:
    assert [row["step"] for row in packed.history] == [row["step"] for row in solo.history]
    for ours, theirs in zip(packed.history, solo.history):
        assert set(ours) == set(theirs)
        for key in theirs:
            if exact or key in ("step", "lr"):
                assert ours[key] == theirs[key], key
            else:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_float64_packed_models_equal_their_solo_runs_after_100_steps(architecture):
    name, width, settings = ARCHITECTURES[architecture]
    config = _config(name, width, **settings)
    dataset = _float64(tiny_dataset(config))
    count = 2 if architecture == "resnet" else 3
    models = _models(config, dataset, count)
    masks = [None] + [_random_mask(models[0], 0.5, seed) for seed in range(1, count)]  # a dense one among masked
    seeds = [11, 12, 13][:count]
    solo_models = copy.deepcopy(models)
    solo = [train(job) for job in _jobs(config, dataset, solo_models, seeds, masks)]
    packed = train_packed(_jobs(config, dataset, models, seeds, masks))
    for ours, theirs, ours_result, their_result, mask in zip(models, solo_models, packed, solo, masks):
        assert _worst_relative_difference(ours, theirs) < 1e-10
        _assert_histories_match(ours_result, their_result, exact=False)
        assert ours_result.summary().keys() == their_result.summary().keys()
        assert ours_result.final_step == their_result.final_step == 100
        if mask is not None:
            for weight_name, kept in mask.items():
                assert torch.count_nonzero(ours.get_parameter(weight_name)[~kept]) == 0
    assert not torch.equal(models[0].state_dict()[next(iter(models[0].state_dict()))],
                           models[1].state_dict()[next(iter(models[1].state_dict()))])


@pytest.mark.parametrize("optimizer, settings", [
    ("sgd", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("adam", {"lr": 0.01, "weight_decay": 1e-3}),
    ("adamw", {"lr": 0.01, "weight_decay": 1e-2}),
])
def test_pruned_weights_stay_exactly_zero_after_every_step(optimizer, settings):
    config = _config(optimizer=optimizer, **settings)
    dataset = tiny_dataset(config)
    models = _models(config, dataset, 3, dtype=torch.float32)
    masks = [_random_mask(models[0], density, seed) for seed, density in enumerate((0.2, 0.5, 0.8))]
    checked = []

    def zero_check(model, mask):
        def hook(step):
            for weight_name, kept in mask.items():
                assert torch.count_nonzero(model.get_parameter(weight_name)[~kept]) == 0, (step, weight_name)
            checked.append(step)
        return hook

    jobs = _jobs(config, dataset, models, [0, 1, 2], masks, steps=40)
    for job, model, mask in zip(jobs, models, masks):
        job.hooks = (zero_check(model, mask),)
    train_packed(jobs)
    assert sorted(checked) == sorted(list(range(1, 41)) * 3)


def test_a_shared_data_order_is_gathered_once_per_step_and_equals_solo(monkeypatch):
    config = _config(optimizer="adam", lr=0.01)
    dataset = _float64(tiny_dataset(config))
    models = _models(config, dataset, 3)
    solo_models = copy.deepcopy(models)
    solo = [train(job) for job in _jobs(config, dataset, solo_models, [5, 5, 5])]
    gathers = []
    raw = dataset.raw
    monkeypatch.setattr(dataset, "raw", lambda split, indices: gathers.append(split) or raw(split, indices))
    packed = train_packed(_jobs(config, dataset, models, [5, 5, 5]))
    assert gathers.count("train") == 100  # one gather per step for the whole pack
    for ours, theirs, ours_result, their_result in zip(models, solo_models, packed, solo):
        assert _worst_relative_difference(ours, theirs) < 1e-10
        _assert_histories_match(ours_result, their_result, exact=False)
    gathers.clear()
    train_packed(_jobs(config, dataset, _models(config, dataset, 3), [1, 2, 3], steps=10))
    assert gathers.count("train") == 10  # own data orders: still one gather per step, of all three batches


@pytest.mark.parametrize("architecture", ["mlp", "conv_bn"])
def test_a_jobs_results_do_not_depend_on_what_it_is_packed_with(architecture):
    name, width, settings = ARCHITECTURES[architecture]
    config = _config(name, width, **settings)
    dataset = _float64(tiny_dataset(config))
    base = _models(config, dataset, 4)
    masks = [_random_mask(base[0], 0.5, seed) for seed in range(4)]
    steps = 100 if architecture == "mlp" else 30
    outcomes = []
    for pack in (1, 2, 4):
        order = list(range(1, pack)) + [0]  # the job under test sits last: position 0, 1, then 3
        models = [copy.deepcopy(base[index]) for index in order]
        results = train_packed(_jobs(config, dataset, models, [20 + index for index in order],
                                     [masks[index] for index in order], steps=steps))
        outcomes.append((models[-1], results[-1]))
    (alone, alone_result), *others = outcomes
    for model, result in others:
        _assert_identical(model, alone)
        assert result.history == alone_result.history


class _Interrupt(Exception):
    pass


def _interrupt_at(step_to_fail):
    def hook(step):
        if step == step_to_fail:
            raise _Interrupt
    return hook


def _checkpointed(jobs, folder, every=25):
    for index, job in enumerate(jobs):
        job.checkpoint_path, job.checkpoint_every, job.checkpoint_tag = folder / f"job{index}.pt", every, f"job{index}"
    return jobs


def _resume_case():
    config = _config("vgg11", 4, optimizer="adam", lr=0.01, batch_size=16)
    dataset = tiny_dataset(config)
    base = _models(config, dataset, 3, dtype=torch.float32)
    masks = [None, _random_mask(base[0], 0.5, 1), _random_mask(base[0], 0.3, 2)]
    return config, dataset, base, masks


def test_resume_after_an_interruption_is_bit_identical(tmp_path):
    config, dataset, base, masks = _resume_case()
    reference_models = copy.deepcopy(base)
    reference = train_packed(_jobs(config, dataset, reference_models, [1, 2, 3], masks, steps=60))

    models = copy.deepcopy(base)
    jobs = _checkpointed(_jobs(config, dataset, models, [1, 2, 3], masks, steps=60), tmp_path)
    jobs[2].hooks = (_interrupt_at(37),)
    with pytest.raises(_Interrupt):
        train_packed(jobs)
    assert all(job.checkpoint_path.exists() for job in jobs)
    fresh = copy.deepcopy(base)  # the starting weights again: everything else comes from the checkpoints
    resumed = train_packed(_checkpointed(_jobs(config, dataset, fresh, [1, 2, 3], masks, steps=60), tmp_path))
    for ours, theirs, ours_result, their_result in zip(fresh, reference_models, resumed, reference):
        _assert_identical(ours, theirs)
        assert ours_result.history == their_result.history


def test_resume_when_a_kill_fell_between_the_checkpoint_writes_of_one_step(tmp_path, monkeypatch):
    """Job 0's checkpoint is at step 50, jobs 1 and 2 still at 25: job 0 joins the pack when it reaches 50."""
    import lottery.training.packed.trainer as trainer

    config, dataset, base, masks = _resume_case()
    reference_models = copy.deepcopy(base)
    reference = train_packed(_jobs(config, dataset, reference_models, [1, 2, 3], masks, steps=60))

    save = trainer.atomic_torch_save

    def killed_after_the_first_write(path, value, durable=True):
        if value["step"] == 50 and path.name == "job1.pt":
            raise _Interrupt
        save(path, value, durable)

    monkeypatch.setattr(trainer, "atomic_torch_save", killed_after_the_first_write)
    models = copy.deepcopy(base)
    with pytest.raises(_Interrupt):
        train_packed(_checkpointed(_jobs(config, dataset, models, [1, 2, 3], masks, steps=60), tmp_path))
    monkeypatch.setattr(trainer, "atomic_torch_save", save)
    assert [torch.load(tmp_path / f"job{index}.pt", weights_only=False)["step"] for index in range(3)] == [50, 25, 25]
    fresh = copy.deepcopy(base)
    resumed = train_packed(_checkpointed(_jobs(config, dataset, fresh, [1, 2, 3], masks, steps=60), tmp_path))
    for ours, theirs, ours_result, their_result in zip(fresh, reference_models, resumed, reference):
        _assert_identical(ours, theirs)
        assert ours_result.history == their_result.history


def test_packed_and_solo_checkpoints_resume_in_each_other(tmp_path):
    config = _config(optimizer="adam", lr=0.01)
    dataset = _float64(tiny_dataset(config))
    base = _models(config, dataset, 2)
    masks = [_random_mask(base[0], 0.5, 1), None]
    solo_models = copy.deepcopy(base)
    solo = [train(job) for job in _jobs(config, dataset, solo_models, [1, 2], masks)]

    packed_first = copy.deepcopy(base)
    jobs = _checkpointed(_jobs(config, dataset, packed_first, [1, 2], masks), tmp_path / "a")
    jobs[0].hooks = (_interrupt_at(60),)
    with pytest.raises(_Interrupt):
        train_packed(jobs)
    resumed_solo = copy.deepcopy(base)
    results = [train(job) for job in _checkpointed(_jobs(config, dataset, resumed_solo, [1, 2], masks), tmp_path / "a")]

    solo_first = copy.deepcopy(base)
    for job in _checkpointed(_jobs(config, dataset, solo_first, [1, 2], masks), tmp_path / "b"):
        job.hooks = (_interrupt_at(60),)
        with pytest.raises(_Interrupt):
            train(job)
    resumed_packed = copy.deepcopy(base)
    results_packed = train_packed(_checkpointed(_jobs(config, dataset, resumed_packed, [1, 2], masks), tmp_path / "b"))
    for index in range(2):
        for model, result in ((resumed_solo[index], results[index]), (resumed_packed[index], results_packed[index])):
            assert _worst_relative_difference(model, solo_models[index]) < 1e-10
            _assert_histories_match(result, solo[index], exact=False)


def test_results_hooks_and_callbacks_are_per_job_and_models_own_their_weights_afterwards():
    config = _config()
    dataset = tiny_dataset(config)
    models = _models(config, dataset, 2, dtype=torch.float32)
    seen = {0: [], 1: []}
    steps = {0: [], 1: []}
    jobs = _jobs(config, dataset, models, [0, 1], steps=50)
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
    config = _config()
    dataset = tiny_dataset(config)
    models = _models(config, dataset, 2, dtype=torch.float32)
    solo = [train(job) for job in _jobs(config, dataset, copy.deepcopy(models), [0, 1], steps=0)]
    packed = train_packed(_jobs(config, dataset, models, [0, 1], steps=0))
    for ours, theirs in zip(packed, solo):
        assert ours.history == theirs.history and ours.final_step == 0


def _refused(jobs, match):
    with pytest.raises(PackError, match=match):
        train_packed(jobs)


def test_packs_of_different_architectures_schedules_or_segments_are_refused():
    config = _config()
    dataset = tiny_dataset(config)
    lenet32, other32 = _models(config, dataset, 2, dtype=torch.float32)
    lenet16 = build_model(_config("lenet_16").model, dataset.input_shape, dataset.num_classes, 0)
    conv = build_model(_config("conv2", 8).model, dataset.input_shape, dataset.num_classes, 0)
    _refused(_jobs(config, dataset, [lenet32, lenet16], [0, 1]), r"job 1 \(job 1\) has other parameters.*fc1.weight")
    _refused(_jobs(config, dataset, [lenet32, conv], [0, 1]), "is a ConvNet, job 0 .* a LeNet")
    _refused(_jobs(config, dataset, [lenet32, lenet32], [0, 1]), "model object another job")
    jobs = _jobs(config, dataset, [lenet32, other32], [0, 1])
    jobs[1].end_step = 50
    _refused(jobs, "trains steps 0..50")
    jobs = _jobs(config, dataset, [lenet32, other32], [0, 1])
    jobs[1].train_cfg = _config(lr=0.5).train
    _refused(jobs, "another train config")
    jobs = _jobs(config, dataset, [lenet32, other32], [0, 1])
    jobs[1].dataset = tiny_dataset(config)
    _refused(jobs, "another Dataset object")
    jobs = _jobs(config, dataset, [lenet32, other32], [0, 1])
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
    config = _config()
    dataset = tiny_dataset(config)
    torch.manual_seed(0)
    _refused(_jobs(config, dataset, [module(), module()], [0, 1], steps=5), match)


def test_float32_digits_accuracies_agree_within_one_test_example_and_masks_match():
    config = load_config("digits")
    config.train.device, config.train.progress = "cpu", "off"
    dataset = load_dataset(config.data, seed=config.seed, device="cpu")
    end = 40 * 20  # 40 epochs of 20 iterations
    models = _models(config, dataset, 2, dtype=torch.float32)
    masks = [Mask.ones(model) for model in models]
    solo_models = copy.deepcopy(models)
    jobs = lambda chosen: [TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=seed, start_step=0,  # noqa: E731
                                    end_step=end, mask=mask) for model, seed, mask in zip(chosen, [0, 1], masks)]
    solo = [train(job) for job in jobs(solo_models)]
    packed = train_packed(jobs(models))
    test_size = dataset.split_size("test")
    for ours, theirs, ours_result, their_result, mask in zip(models, solo_models, packed, solo, masks):
        assert abs(ours_result.final_test_acc - their_result.final_test_acc) * test_size <= 1 + 1e-9
        assert their_result.final_test_acc > 0.9
        prune = lambda model: prune_fraction(model, mask, config.prune.fraction, scope=config.prune.scope,  # noqa: E731
                                             layer_rates=config.prune.layer_rates).mask
        assert prune(ours).equals(prune(theirs))


def test_choose_pack_size_fits_free_memory_within_bounds():
    config = _config(optimizer="adam")
    dataset = tiny_dataset(config)
    model = _models(config, dataset, 1, dtype=torch.float32)[0]
    per_model = bytes_per_model(model, config.train, dataset.input_shape)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert per_model > 4 * weights  # weights, gradients, two Adam moments, and activations on top
    assert bytes_per_model(model, _config(optimizer="sgd").train, dataset.input_shape) < per_model
    choose = lambda free, bound=16: choose_pack_size(model, config.train, dataset.input_shape, "cpu",  # noqa: E731
                                                     max_pack=bound, free_bytes=free)
    assert choose(per_model * 5) == 4  # 80% of the free memory holds four
    assert choose(per_model * 1000) == 16 and choose(per_model * 1000, bound=3) == 3
    assert choose(per_model // 10) == 1  # never less than one
    assert 1 <= choose_pack_size(model, config.train, dataset.input_shape, "cpu") <= 8
