"""Shared tests over every registry: a new pruning method, model family, branch or benchmark gets them for free."""
from __future__ import annotations

import importlib

import pytest
import torch

from lottery.benchmarks.registry import BENCHMARKS
from lottery.config import BaselineConfig, ModelConfig
from lottery.models import MODELS, build_model
from lottery.pruning.mask import Mask, prunable_parameters
from lottery.run.layout import RunLayout, StageRef
from lottery.pruning.methods import METHODS
from lottery.pruning.prune import PruneSpec, prune
from lottery.training.loop import TrainJob, train
from lottery.workflows.branches import BRANCHES
from tests.helpers import tiny_config, tiny_dataset, tiny_model

SCORED = [name for name, method in METHODS.items() if method.make_scorer is not None]
DYNAMIC = [name for name, method in METHODS.items() if method.dynamic]
STRUCTURED = [name for name, method in METHODS.items() if method.structured]


def _batches(dataset):
    inputs, labels = dataset.class_balanced(2, 0)
    return [(inputs, labels)]


def _snapshot(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}, model.training


@pytest.mark.parametrize("method", SCORED)
@pytest.mark.parametrize("density", [0.5, 0.07])
def test_every_method_hits_its_density_exactly_and_leaves_the_model_alone(method, density):
    config = tiny_config()
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    before, mode = _snapshot(model)
    result = prune(model, PruneSpec(method, rounds=3 if METHODS[method].default_rounds > 1 else None),
                   density=density, batches=_batches(dataset), input_shape=dataset.input_shape)
    kept, total = result.mask.counts()
    assert kept == int(density * total + 0.5)
    assert result.density == kept / total
    after, mode_after = _snapshot(model)
    assert mode_after == mode and after.keys() == before.keys()
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert all(parameter.grad is None for parameter in model.parameters())


@pytest.mark.parametrize("method", SCORED)
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_exactly_zero_while_training(method, optimizer):
    config = tiny_config(**{"train.optimizer": optimizer, "train.weight_decay": 0.01, "train.momentum": 0.0
                            if optimizer != "sgd" else 0.9, "train.lr": 0.01})
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    mask = prune(model, PruneSpec(method, rounds=2 if METHODS[method].default_rounds > 1 else None), density=0.2,
                 batches=_batches(dataset), input_shape=dataset.input_shape).mask
    parameters = dict(model.named_parameters())

    def check(step: int) -> None:
        for name, keep in mask.items():
            assert torch.count_nonzero(parameters[name].detach()[~keep]) == 0, (method, optimizer, step, name)

    train(TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=0, start_step=0, end_step=15,
                   mask=mask, hooks=(check,)))


@pytest.mark.parametrize("method", STRUCTURED)
def test_every_structured_method_trains_a_smaller_network_at_its_density(method, tmp_path):
    from lottery.workflows.baselines import run_baselines

    config = tiny_config(tmp_path, **{"model.name": "lenet_64_32", "train.steps": "10it"})
    row = run_baselines(config, [method], [0.5])[0]
    assert row["method"] == method and 0.3 < row["density"] < 0.7
    assert row["final_test_acc"] is not None


@pytest.mark.parametrize("method", DYNAMIC)
def test_every_dynamic_method_trains_at_exactly_its_density(method, tmp_path):
    from lottery.workflows.baselines import run_baselines

    config = tiny_config(tmp_path, **{"train.steps": "12it", "baseline.update_every": "4it"})
    row = run_baselines(config, [method], [0.3])[0]
    kept, total = Mask.load(RunLayout.of(config).directory(StageRef.from_key(row["stage"])) / "final_mask.pt").counts()
    assert row["density"] == kept / total and kept == int(0.3 * total + 0.5)


def test_every_method_is_exactly_one_kind():
    for method in METHODS.values():
        assert [method.make_scorer is not None, method.dynamic, method.structured].count(True) == 1, method.name


@pytest.mark.parametrize("family", MODELS, ids=[family.example for family in MODELS])
def test_every_model_family_builds_its_example_deterministically(family):
    config = ModelConfig(name=family.example)
    first = build_model(config, family.example_shape, 3, seed=1)
    again = build_model(config, family.example_shape, 3, seed=1)
    other = build_model(config, family.example_shape, 3, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))
    assert prunable_parameters(first)
    output = first.eval()(torch.zeros(2, *family.example_shape))
    assert output.shape == (2, 3)


@pytest.mark.parametrize("branch", sorted(BRANCHES))
def test_every_branch_has_a_description_and_keeps_the_level_counts(branch, tmp_path):
    from lottery.workflows.branches import run_branch
    from lottery.workflows.ticket import run_ticket

    config = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "10it"})
    run_ticket(config)
    row = run_branch(config, branch, [1])[0]
    ticket_row = [r for r in run_ticket(config).rows if r["level"] == 1][0]
    assert BRANCHES[branch].description
    assert row["layers"] == ticket_row["layers"] or branch == "invert"
    assert row["density"] == ticket_row["density"]


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_every_benchmark_module_has_a_run_function(name):
    module = importlib.import_module(BENCHMARKS[name])
    assert callable(module.run)
    assert module.__doc__, f"{BENCHMARKS[name]} needs a docstring saying what it measures"


def test_every_method_says_what_it_scores():
    for method in METHODS.values():
        assert method.description and len(method.description.split()) >= 2, method.name
        assert set(method.settings) <= set(BaselineConfig.__dataclass_fields__), method.name  # keys it reads exist
