"""RigL and SET: the initial distributions, the schedule, the drop/grow update, exactness under every optimizer,
resume, and `lottery baselines --methods rigl,set,small_dense` end to end."""
import math

import pytest
import torch
from torch import nn

from lottery.cli import main
from lottery.pruning.dynamic import (MaskUpdater, UpdateSchedule, erk_densities, initial_mask, layer_counts, rigl,
                                     sparse_evolutionary_training)
from lottery.pruning.mask import Mask
from lottery.pruning.methods import get_method
from lottery.pruning.prune import PruneSpec, prune
from lottery.run.files import read_json, torch_load
from lottery.run.layout import RunLayout, StageRef
from lottery.training.loop import TrainJob, train
from lottery.workflows.baselines import method_folder, ticket_densities
from tests.helpers import tiny_config, tiny_dataset, tiny_model


# -- the initial mask -------------------------------------------------------------------------------

def test_erk_counts_follow_the_formula_with_a_layer_made_dense():
    # ratios Σdims/Πdims: a 0.2, b 0.02, c 0.7. Unconstrained ε = 1000/227 gives c a density of 3.1, so c is
    # dense and a, b share 990 weights: ε = 990 / (0.2·100 + 0.02·10000) = 4.5, densities 0.9 and 0.09.
    shapes = {"a": (10, 10), "b": (100, 100), "c": (2, 5)}
    densities = erk_densities(shapes, 1000)
    assert densities == pytest.approx({"a": 0.9, "b": 0.09, "c": 1.0})
    assert layer_counts(shapes, 1000, "erk") == {"a": 90, "b": 900, "c": 10}


def test_erk_and_uniform_counts_are_exact_for_conv_and_linear_layers():
    shapes = {"conv1": (16, 3, 3, 3), "conv2": (32, 16, 3, 3), "fc": (64, 512), "out": (10, 64)}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    for kept in (1, 777, 12345, sum(sizes.values()) - 1):
        erk = layer_counts(shapes, kept, "erk")
        assert sum(erk.values()) == kept and all(0 <= erk[n] <= sizes[n] for n in shapes)
        densities = erk_densities(shapes, kept)
        for name in shapes:  # the largest-remainder rounding moves no layer by a whole weight
            assert abs(erk[name] - densities[name] * sizes[name]) < 1
        sparse = [name for name in shapes if densities[name] < 1]
        scale = densities[sparse[0]] * sizes[sparse[0]] / sum(shapes[sparse[0]])
        for name in sparse:  # one ε for every layer that is not dense
            assert densities[name] == pytest.approx(scale * sum(shapes[name]) / sizes[name])
        uniform = layer_counts(shapes, kept, "uniform")
        assert sum(uniform.values()) == kept
        assert all(abs(uniform[n] - kept * sizes[n] / sum(sizes.values())) < 1 for n in shapes)


def test_initial_mask_is_exact_seeded_and_shared_by_rigl_and_set():
    config = tiny_config(**{"model.name": "lenet_32_16"})
    model = tiny_model(config, tiny_dataset(config))
    template = Mask.ones(model)
    mask = initial_mask(template, 0.3, "erk", seed=4)
    kept, total = mask.counts()
    assert kept == math.floor(0.3 * total + 0.5)
    counts = layer_counts({n: tuple(f.shape) for n, f in template.items()}, kept, "erk")
    assert {name: info["kept"] for name, info in mask.layer_report().items()} == counts
    assert mask.equals(initial_mask(template, 0.3, "erk", seed=4))
    assert not mask.equals(initial_mask(template, 0.3, "erk", seed=5))


def test_the_pruning_api_refuses_dynamic_methods_and_lottery_prune_reports_the_initial_mask(capsys):
    config = tiny_config()
    model = tiny_model(config, tiny_dataset(config))
    with pytest.raises(ValueError, match="dynamic sparse training"):
        prune(model, PruneSpec("rigl"), density=0.5)
    assert get_method("rigl").dynamic and get_method("rigl").make_scorer is None
    assert main(["prune", "--exp", "digits", "--method", "set", "--density", "0.25", "--json"]) == 0
    assert '"density": 0.25' in capsys.readouterr().out
    assert main(["prune", "--exp", "digits", "--method", "rigl", "--critical"]) == 2
    assert "no critical compression" in capsys.readouterr().err


# -- the schedule ----------------------------------------------------------------------------------

def test_cosine_decay_and_the_stop_point():
    schedule = UpdateSchedule.for_training(total_steps=1000, every=100, until=0.75, drop_fraction=0.3)
    assert schedule.stop == 750
    assert [step for step in range(1000) if schedule.due(step)] == [0, 100, 200, 300, 400, 500, 600, 700]
    assert schedule.fraction(0) == pytest.approx(0.3)
    assert schedule.fraction(375) == pytest.approx(0.15)
    assert schedule.fraction(700) == pytest.approx(0.15 * (1 + math.cos(math.pi * 700 / 750)))
    with pytest.raises(ValueError):
        UpdateSchedule.for_training(1000, 0, 0.75, 0.3)


# -- one update, by hand -----------------------------------------------------------------------------

def _layer(weights, kept, grads):
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights))
    layer.weight.grad = torch.tensor(grads)
    return layer, Mask({"weight": torch.tensor(kept, dtype=torch.bool)})


ONCE = UpdateSchedule(every=10, stop=10, drop_fraction=0.5)  # α_0 = 0.5: two of the four active weights


def test_rigl_drops_the_smallest_weights_and_grows_the_largest_dense_gradients():
    layer, mask = _layer([[0.9, 0.1, 0.0], [-0.5, 0.05, 0.0]], [[1, 1, 0], [1, 1, 0]],
                         [[9.0, 0.3, -0.7], [9.0, 0.2, 0.4]])
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    optimizer.state[layer.weight]["momentum_buffer"] = torch.full((2, 3), 5.0)
    record = rigl(mask, ONCE, seed=0).update(0, layer, optimizer)
    # Dropped: 0.1 and 0.05 (smallest |w|). Candidates: those two and the two inactive; largest |g|: -0.7, 0.4.
    assert torch.equal(mask["weight"], torch.tensor([[True, False, True], [True, False, True]]))
    assert torch.equal(layer.weight.detach(), torch.tensor([[0.9, 0.0, 0.0], [-0.5, 0.0, 0.0]]))
    buffer = optimizer.state[layer.weight]["momentum_buffer"]
    assert torch.equal(buffer, torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0]]))  # zero where grown
    assert record["layers"]["weight"] == {"dropped": 2, "grown": 2, "kept": 4}


def test_a_dropped_weight_grown_again_keeps_its_value_and_state_as_in_the_reference():
    layer, mask = _layer([[0.9, 0.1, 0.0], [-0.5, 0.05, 0.0]], [[1, 1, 0], [1, 1, 0]],
                         [[9.0, 0.8, -0.7], [9.0, 0.2, 0.4]])
    optimizer = torch.optim.Adam(layer.parameters())
    layer.weight.grad = layer.weight.grad.clone()
    optimizer.state[layer.weight].update(exp_avg=torch.ones(2, 3), exp_avg_sq=torch.ones(2, 3), step=torch.tensor(3.0))
    record = rigl(mask, ONCE, seed=0).update(0, layer, optimizer)
    # 0.1 is dropped, then regrown (|g| 0.8 is the largest candidate): it never left. Only 0.05 -> slot 2 moved.
    assert torch.equal(mask["weight"], torch.tensor([[True, True, True], [True, False, False]]))
    assert torch.equal(layer.weight.detach(), torch.tensor([[0.9, 0.1, 0.0], [-0.5, 0.0, 0.0]]))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizer.state[layer.weight][key], torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]))
    assert record["dropped"] == record["grown"] == 1


def test_set_grows_at_random_but_seeded():
    def grown(seed):
        big = nn.Linear(40, 50, bias=False)
        weights = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            big.weight.copy_(weights * (torch.rand(50, 40, generator=torch.Generator().manual_seed(1)) < 0.3))
        flags = big.weight.detach() != 0
        mask = Mask({"weight": flags.clone()})
        sparse_evolutionary_training(mask, ONCE, seed=seed).update(0, big, torch.optim.SGD(big.parameters(), lr=0.1))
        assert int(mask["weight"].sum()) == int(flags.sum())  # exact count
        assert torch.count_nonzero(big.weight.detach()[~mask["weight"]]) == 0
        return mask["weight"] & ~flags

    first, again, other = grown(3), grown(3), grown(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.any()


# -- in the training loop --------------------------------------------------------------------------

def _dynamic_job(config, dataset, model, method="rigl", density=0.3, **kwargs):
    mask = initial_mask(Mask.ones(model), density, "erk", config.seed)
    schedule = UpdateSchedule.for_training(60, 7, 0.75, 0.3)
    updater = get_method(method).make_updater(mask, schedule, config.seed)
    job = TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=config.seed, start_step=0,
                   end_step=60, mask=mask, mask_updater=updater, **kwargs)
    return job, mask, updater


@pytest.mark.parametrize("optimizer, extra", [("sgd", {"momentum": 0.9, "weight_decay": 1e-3}),
                                              ("adam", {"lr": 0.01, "weight_decay": 1e-3}),
                                              ("adamw", {"lr": 0.01, "weight_decay": 1e-2})])
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_density_is_exact_and_pruned_weights_stay_zero_after_every_step(optimizer, extra, method):
    config = tiny_config(**{"model.name": "lenet_32_16", "train.optimizer": optimizer,
                            **{f"train.{k}": v for k, v in extra.items()}})
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    job, mask, updater = _dynamic_job(config, dataset, model, method)
    per_layer = {name: int(flags.sum()) for name, flags in mask.items()}
    kept = mask.counts()[0]

    def check(step):
        for name, parameter in zip(mask.names, mask.parameters_of(model)):
            assert torch.count_nonzero(parameter.detach()[~mask[name]]) == 0, (step, name)
            assert int(mask[name].sum()) == per_layer[name], (step, name)  # every layer keeps its count

    job.hooks = (check,)
    result = train(job)
    assert mask.counts()[0] == kept == math.floor(0.3 * mask.counts()[1] + 0.5)
    assert [record["step"] for record in updater.history] == [0, 7, 14, 21, 28, 35, 42]
    assert sum(record["grown"] for record in updater.history) > 0
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_rigl_replaces_the_step_it_updates_at_and_set_does_not():
    config = tiny_config(**{"model.name": "lenet_32_16"})
    dataset = tiny_dataset(config)
    unchanged = {}
    for method in ("rigl", "set"):
        model = tiny_model(config, dataset)
        start = model.fc1.weight.detach().clone()
        job, mask, _ = _dynamic_job(config, dataset, model, method)
        job.end_step = 1  # only step 0, an update step
        train(job)
        survived = mask["fc1.weight"] & (start != 0) & (model.fc1.weight.detach() != 0)
        unchanged[method] = torch.equal(model.fc1.weight.detach()[survived], start[survived])
    assert unchanged == {"rigl": True, "set": False}


def test_resume_restores_the_changed_mask_bit_for_bit(tmp_path):
    config = tiny_config(**{"model.name": "lenet_32_16", "train.optimizer": "adam", "train.lr": 0.01})
    dataset = tiny_dataset(config)
    reference = tiny_model(config, dataset)
    job, reference_mask, _ = _dynamic_job(config, dataset, reference)
    train(job)

    def interrupt(step):
        if step == 37:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "checkpoint.pt"
    model = tiny_model(config, dataset)
    job, _, _ = _dynamic_job(config, dataset, model, checkpoint_path=checkpoint, checkpoint_every=25,
                             checkpoint_tag="x", hooks=(interrupt,))
    with pytest.raises(KeyboardInterrupt):
        train(job)
    fresh = tiny_model(config, dataset)
    job, mask, updater = _dynamic_job(config, dataset, fresh, checkpoint_path=checkpoint, checkpoint_every=25,
                                      checkpoint_tag="x")
    train(job)
    assert mask.equals(reference_mask)
    assert [record["step"] for record in updater.history] == [0, 7, 14, 21, 28, 35, 42]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name


# -- the baselines command -------------------------------------------------------------------------

def test_lottery_baselines_runs_rigl_set_and_small_dense_end_to_end(tmp_path, capsys):
    overrides = [f"run.root={tmp_path}", "model.name=lenet_64_32", "data.name=synthetic", "train.steps=40it",
                 "train.eval_every=20it", "train.batch_size=32", "ticket.levels=2", "baseline.update_every=10it",
                 "track.enabled=false", "train.device=cpu", "train.progress=off"]
    assert main(["baselines", "--exp", "digits", "--methods", "rigl,set,small_dense", *overrides]) == 0
    printed = capsys.readouterr().out
    assert all(method in printed for method in ("rigl", "set", "small_dense"))
    from lottery.config import load_config

    config = load_config("digits", overrides)
    model = tiny_model(config, tiny_dataset(config))
    densities = ticket_densities(config, model)
    layout = RunLayout.of(config)
    rows = {row["stage"]: row for row in read_json(layout.results_file)["rows"]}
    for method in ("rigl", "set"):
        for density in densities:
            ref = StageRef.for_baseline(method_folder(config, method), density, "init")
            row, stage = rows[ref.key], layout.directory(ref)
            assert row["density"] == density
            final_mask = Mask.load(stage / "final_mask.pt", model)
            assert final_mask.density() == density and not final_mask.equals(Mask.load(stage / "mask.pt", model))
            weights = torch_load(stage / "final.pt")
            for name, keep in final_mask.items():
                assert torch.count_nonzero(weights[name][~keep]) == 0
            updates = read_json(stage / "metrics.json")["mask_updates"]
            assert [update["step"] for update in updates] == [0, 10, 20]
            assert set(updates[0]["layers"]) == set(final_mask.names)
    small = [row for row in rows.values() if row["method"] == "small_dense"]
    assert sorted(row["target_density"] for row in small) == sorted(densities)
    assert all(abs(row["density"] - row["target_density"]) <= 0.02 * row["target_density"] for row in small)
    assert main(["baselines", "--exp", "digits", "--methods", "small_dense", "--at", "rewind", *overrides]) == 2
    assert "trains from scratch" in capsys.readouterr().err


def test_the_dynamic_settings_are_validated(capsys):
    for override, key in (("baseline.distribution=gaussian", "baseline.distribution"),
                          ("baseline.drop_fraction=0", "baseline.drop_fraction"),
                          ("baseline.update_until=1.5", "baseline.update_until"),
                          ("baseline.update_every=0it", "baseline.update_every"),
                          ("baseline.update_every=often", "baseline.update_every")):
        assert main(["baselines", "--exp", "digits", "--methods", "rigl", override]) == 2, override
        assert key in capsys.readouterr().err


def test_updater_refuses_an_unknown_growth():
    with pytest.raises(ValueError):
        MaskUpdater("x", Mask({}), ONCE, "momentum", 0, replaces_step=False)
