"""Packed training resumes bit for bit: after an interruption, after a kill between the K checkpoint writes of
one step, and across the solo and packed loops (one checkpoint format)."""
from __future__ import annotations

import copy

import pytest
import torch

from lottery.training.loop import train
from lottery.training.packed import train_packed
from tests.helpers import Interrupt, interrupt_at, tiny_dataset
from tests.packed_helpers import (as_float64, assert_histories_match, assert_identical, make_config, make_jobs,
                                  make_models, random_mask, worst_relative_difference)


def _checkpointed(jobs, folder, every=25):
    for index, job in enumerate(jobs):
        job.checkpoint_path, job.checkpoint_every, job.checkpoint_tag = folder / f"job{index}.pt", every, f"job{index}"
    return jobs


def _resume_case():
    config = make_config("vgg11", 4, optimizer="adam", lr=0.01, batch_size=16)
    dataset = tiny_dataset(config)
    base = make_models(config, dataset, 3, dtype=torch.float32)
    masks = [None, random_mask(base[0], 0.5, 1), random_mask(base[0], 0.3, 2)]
    return config, dataset, base, masks


def test_resume_after_an_interruption_is_bit_identical(tmp_path):
    config, dataset, base, masks = _resume_case()
    reference_models = copy.deepcopy(base)
    reference = train_packed(make_jobs(config, dataset, reference_models, [1, 2, 3], masks, steps=60))

    models = copy.deepcopy(base)
    jobs = _checkpointed(make_jobs(config, dataset, models, [1, 2, 3], masks, steps=60), tmp_path)
    jobs[2].hooks = (interrupt_at(37),)
    with pytest.raises(Interrupt):
        train_packed(jobs)
    assert all(job.checkpoint_path.exists() for job in jobs)
    fresh = copy.deepcopy(base)  # the starting weights again: everything else comes from the checkpoints
    resumed = train_packed(_checkpointed(make_jobs(config, dataset, fresh, [1, 2, 3], masks, steps=60), tmp_path))
    for ours, theirs, ours_result, their_result in zip(fresh, reference_models, resumed, reference):
        assert_identical(ours, theirs)
        assert ours_result.history == their_result.history


def test_resume_when_a_kill_fell_between_the_checkpoint_writes_of_one_step(tmp_path, monkeypatch):
    """Job 0's checkpoint is at step 50, jobs 1 and 2 still at 25: job 0 joins the pack when it reaches 50."""
    import lottery.training.packed.trainer as trainer

    config, dataset, base, masks = _resume_case()
    reference_models = copy.deepcopy(base)
    reference = train_packed(make_jobs(config, dataset, reference_models, [1, 2, 3], masks, steps=60))

    save = trainer.atomic_torch_save

    def killed_after_the_first_write(path, value, durable=True):
        if value["step"] == 50 and path.name == "job1.pt":
            raise Interrupt
        save(path, value, durable)

    monkeypatch.setattr(trainer, "atomic_torch_save", killed_after_the_first_write)
    models = copy.deepcopy(base)
    with pytest.raises(Interrupt):
        train_packed(_checkpointed(make_jobs(config, dataset, models, [1, 2, 3], masks, steps=60), tmp_path))
    monkeypatch.setattr(trainer, "atomic_torch_save", save)
    assert [torch.load(tmp_path / f"job{index}.pt", weights_only=False)["step"] for index in range(3)] == [50, 25, 25]
    fresh = copy.deepcopy(base)
    resumed = train_packed(_checkpointed(make_jobs(config, dataset, fresh, [1, 2, 3], masks, steps=60), tmp_path))
    for ours, theirs, ours_result, their_result in zip(fresh, reference_models, resumed, reference):
        assert_identical(ours, theirs)
        assert ours_result.history == their_result.history


def test_packed_and_solo_checkpoints_resume_in_each_other(tmp_path):
    config = make_config(optimizer="adam", lr=0.01)
    dataset = as_float64(tiny_dataset(config))
    base = make_models(config, dataset, 2)
    masks = [random_mask(base[0], 0.5, 1), None]
    solo_models = copy.deepcopy(base)
    solo = [train(job) for job in make_jobs(config, dataset, solo_models, [1, 2], masks)]

    packed_first = copy.deepcopy(base)
    jobs = _checkpointed(make_jobs(config, dataset, packed_first, [1, 2], masks), tmp_path / "a")
    jobs[0].hooks = (interrupt_at(60),)
    with pytest.raises(Interrupt):
        train_packed(jobs)
    resumed_solo = copy.deepcopy(base)
    results = [train(job) for job in _checkpointed(make_jobs(config, dataset, resumed_solo, [1, 2], masks), tmp_path / "a")]

    solo_first = copy.deepcopy(base)
    for job in _checkpointed(make_jobs(config, dataset, solo_first, [1, 2], masks), tmp_path / "b"):
        job.hooks = (interrupt_at(60),)
        with pytest.raises(Interrupt):
            train(job)
    resumed_packed = copy.deepcopy(base)
    results_packed = train_packed(_checkpointed(make_jobs(config, dataset, resumed_packed, [1, 2], masks), tmp_path / "b"))
    for index in range(2):
        for model, result in ((resumed_solo[index], results[index]), (resumed_packed[index], results_packed[index])):
            assert worst_relative_difference(model, solo_models[index]) < 1e-10
            assert_histories_match(result, solo[index], exact=False)
