import copy
import math

import numpy as np
import pytest
import torch

from lottery.config import Config, DataConfig, ModelConfig, TrainConfig
from lottery.data import load_dataset
from lottery.models import build_model
from lottery.models.flops import forward_flops
from lottery.pruning.coreset import (CoresetOptions, coreset_prune, count_parameters, count_weights,
                                     fraction_for_density, neuron_sites, prune_neurons, sample_neurons,
                                     sensitivity_bounds)
from lottery.pruning.mvee import MveeError, caratheodory, centered_mvee, khachiyan, mvee
from lottery.training.loop import TrainJob, train


def _rotation(angle: float) -> np.ndarray:
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


# -- the Löwner ellipsoid ------------------------------------------------------------------------

def test_mvee_of_points_on_a_circle_is_that_circle():
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    points = 2.0 * np.c_[np.cos(angles), np.sin(angles)] + np.array([3.0, -1.0])
    inside = np.random.default_rng(0).uniform(-1, 1, (100, 2)) + np.array([3.0, -1.0])
    ellipsoid = mvee(np.vstack([points, inside]))
    assert np.allclose(ellipsoid.center, [3.0, -1.0], atol=1e-4)
    assert np.allclose(ellipsoid.semi_axes(), [2.0, 2.0], atol=1e-4)
    assert np.allclose(ellipsoid.distances(points), 1.0, atol=1e-4)
    assert (ellipsoid.distances(inside) < 1).all()


def test_mvee_recovers_a_rotated_ellipse_and_encloses_every_point():
    rng = np.random.default_rng(1)
    angles = rng.uniform(0, 2 * np.pi, 60)
    transform = _rotation(0.6) @ np.diag([3.0, 0.5])
    boundary = np.c_[np.cos(angles), np.sin(angles)] @ transform.T + np.array([1.0, 2.0])
    inside = rng.uniform(-0.7, 0.7, (300, 2)) @ np.diag([1.0, 0.7]) @ transform.T + np.array([1.0, 2.0])
    ellipsoid = mvee(np.vstack([boundary, inside]), tol=1e-9)
    assert np.allclose(ellipsoid.semi_axes(), [3.0, 0.5], rtol=1e-4)
    assert np.allclose(ellipsoid.center, [1.0, 2.0], atol=1e-4)
    expected = np.linalg.inv(transform @ transform.T)
    assert np.allclose(ellipsoid.shape, expected, rtol=1e-3, atol=1e-4)
    assert ellipsoid.distances(np.vstack([boundary, inside])).max() <= 1 + 1e-12
    # Contact points are boundary points: interior points carry no weight.
    assert ellipsoid.weights[len(boundary):].max() < 1e-6


def test_mvee_of_a_three_dimensional_ellipsoid_and_the_symmetric_case():
    rng = np.random.default_rng(2)
    directions = rng.normal(size=(200, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    axes = np.array([4.0, 2.0, 1.0])
    ellipsoid = mvee(directions * axes)
    assert np.allclose(ellipsoid.semi_axes(), axes, rtol=1e-3)
    symmetric = centered_mvee(np.array([[5.0, 0.0], [0.0, 1.0], [1.0, 0.5]]))
    # The MVEE of the rhombus (±5, 0), (0, ±1) is the ellipse through its vertices; (1, 0.5) is inside.
    assert np.allclose(symmetric.semi_axes(), [5.0, 1.0], rtol=1e-6)
    assert symmetric.weights[2] == 0


def test_mvee_refuses_degenerate_points():
    with pytest.raises(MveeError):
        khachiyan(np.array([[1.0, 2.0], [2.0, 4.0], [-1.0, -2.0]]))
    with pytest.raises(MveeError):
        mvee(np.array([[0.0, 0.0], [1.0, 1.0]]))


def test_caratheodory_keeps_the_weighted_sum_on_at_most_d_plus_one_points():
    rng = np.random.default_rng(3)
    points, weights = rng.normal(size=(80, 5)), rng.uniform(size=80)
    reduced = caratheodory(points, weights)
    assert (reduced >= 0).all() and np.count_nonzero(reduced) <= 6
    assert np.allclose(reduced @ points, weights @ points)
    assert reduced.sum() == pytest.approx(weights.sum())


# -- sensitivities and sampling ------------------------------------------------------------------

def test_sensitivity_bounds_dominate_the_share_of_every_point_for_random_queries():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(60, 3)) * rng.uniform(0.1, 3.0, size=(60, 1))
    bounds = sensitivity_bounds(points, CoresetOptions(subspace_dim=3))  # no projection: the exact bound
    assert ((bounds > 0) & (bounds <= 1)).all()
    assert bounds.sum() < 0.6 * len(points), "the bound must be informative, not all ones"
    queries = rng.normal(size=(20000, 3))
    magnitudes = np.abs(queries @ points.T)
    shares = magnitudes / magnitudes.sum(axis=1, keepdims=True)
    assert (shares.max(axis=0) <= bounds + 1e-9).all()
    # Larger points get larger bounds on average.
    order = np.argsort(np.linalg.norm(points, axis=1))
    assert bounds[order[-15:]].mean() > 2 * bounds[order[:15]].mean()


def test_sampling_is_unbiased_and_keeps_exactly_the_requested_count():
    rng = np.random.default_rng(5)
    probabilities = rng.uniform(0.2, 1.0, size=40)
    probabilities /= probabilities.sum()
    values = rng.normal(size=40)
    estimates = []
    for _ in range(3000):
        kept, weights = sample_neurons(probabilities, 20, rng)
        assert len(kept) == 20 and len(set(kept.tolist())) == 20
        estimates.append(weights @ values[kept])
    spread = np.std(estimates) / math.sqrt(len(estimates))
    assert abs(np.mean(estimates) - values.sum()) < 4 * spread + 0.02 * np.abs(values).sum()
    dead = np.array([0.5, 0.5, 0.0, 0.0])
    kept, weights = sample_neurons(dead, 3, rng)
    assert kept.tolist() == [0, 1, 2] and weights.tolist() == [1.0, 1.0, 0.0]


# -- pruning a model -----------------------------------------------------------------------------

def _trained_lenet(steps: int = 150):
    """lenet_300_100 trained briefly on digits with L2 regularisation, so its neurons differ in importance."""
    config = Config(model=ModelConfig(name="lenet_300_100"), data=DataConfig(name="digits"),
                    train=TrainConfig(steps=f"{steps}it", batch_size=64, optimizer="adam", lr=0.003,
                                      weight_decay=0.02, eval_every=f"{steps}it", device="cpu", progress="off"))
    dataset = load_dataset(config.data, seed=0, device="cpu")
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, 0)
    result = train(TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=0, start_step=0,
                            end_step=steps))
    assert result.final_test_acc > 0.8
    return model, dataset


def test_coreset_beats_uniform_neuron_sampling_on_lenet_300_100():
    model, dataset = _trained_lenet()
    inputs = torch.randn(512, *dataset.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(inputs)

    def mean_relative_error(options: CoresetOptions) -> float:
        errors = []
        for seed in range(6):
            pruned = prune_neurons(model, 0.5, dataset.input_shape, seed=seed, options=options).model
            with torch.no_grad():
                errors.append(((pruned(inputs) - reference).norm(dim=1) / reference.norm(dim=1)).mean().item())
        return float(np.mean(errors))

    coreset, uniform = mean_relative_error(CoresetOptions()), mean_relative_error(CoresetOptions(sampling="uniform"))
    assert coreset < 0.9 * uniform, (coreset, uniform)


def test_parameters_and_flops_drop_as_the_layer_sizes_say():
    model = build_model(ModelConfig(name="lenet_300_100"), (1, 28, 28), 10, 0)
    before = model.state_dict()
    result = prune_neurons(model, 0.5, (1, 28, 28), seed=0)
    pruned = result.model
    assert (pruned.fc1.out_features, pruned.fc2.in_features, pruned.fc2.out_features, pruned.out.in_features) \
        == (150, 150, 50, 50)
    assert result.params_before == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == count_parameters(model)
    assert result.params_after == 784 * 150 + 150 + 150 * 50 + 50 + 50 * 10 + 10 == count_parameters(pruned)
    assert result.flops_before == 2 * (784 * 300 + 300 * 100 + 100 * 10)  # FLOPs: 2 per multiply-add
    assert result.flops_after == 2 * (784 * 150 + 150 * 50 + 50 * 10) == forward_flops(pruned, (1, 28, 28))
    assert all(torch.equal(value, model.state_dict()[name]) for name, value in before.items()), "input untouched"
    kept = result.kept["fc1"]
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[kept])
    expected = model.fc2.weight[:, kept] * torch.tensor(result.weights["fc1"], dtype=torch.float32)
    # fc2's columns are reweighted, then fc2's own rows are sampled.
    assert torch.equal(pruned.fc2.weight, expected[result.kept["fc2"]])
    assert torch.equal(pruned.out.weight, model.out.weight[:, result.kept["fc2"]]
                       * torch.tensor(result.weights["fc2"], dtype=torch.float32))


def _reweighted_original(model, result):
    """The original network with each dropped unit's outgoing columns zeroed and each kept one's
    scaled by its importance weight: what the physically smaller network must compute."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for site in neuron_sites(model):
            units = model.get_submodule(site.producer).weight.shape[0]
            scale = torch.zeros(units)
            scale[result.kept[site.producer]] = torch.tensor(result.weights[site.producer], dtype=torch.float32)
            weight = twin.get_submodule(site.consumer).weight
            weight.mul_(scale.repeat_interleave(site.spatial).reshape(1, -1, *([1] * (weight.dim() - 2))))
    return twin


@pytest.mark.parametrize("name, shape", [("conv4", (3, 8, 8)), ("vgg11", (3, 8, 8)), ("resnet20", (3, 8, 8)),
                                         ("lenet_64_32", (1, 8, 8))])
def test_the_smaller_network_computes_the_reweighted_original(name, shape):
    config = ModelConfig(name=name, width=0 if name.startswith("lenet") else 8)
    model = build_model(config, shape, 10, 0).eval()
    with torch.no_grad():
        for module in model.modules():  # give BatchNorm non-trivial statistics to fold
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    inputs = torch.randn(4, *shape)
    full = prune_neurons(model, 1.0, shape, seed=0).model.eval()
    half = prune_neurons(model, 0.5, shape, seed=0)
    with torch.no_grad():
        assert torch.equal(full(inputs), model(inputs))
        assert torch.allclose(half.model.eval()(inputs), _reweighted_original(model, half)(inputs), atol=1e-5)
    assert half.params_after < 0.6 * half.params_before
    assert half.flops_after < 0.6 * half.flops_before


def test_coreset_prune_hook_meets_a_weight_density(tmp_path):
    config = Config(model=ModelConfig(name="lenet_300_100"), data=DataConfig(name="synthetic", root="unused"))
    dataset = load_dataset(config.data, seed=0, device="cpu")
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, 0)
    smaller = coreset_prune(model, dataset.input_shape, 0, density=0.3)
    assert count_weights(smaller) / count_weights(model) == pytest.approx(0.3, abs=0.01)
    again = coreset_prune(model, dataset.input_shape, 0, density=0.3)
    assert all(torch.equal(a, b) for a, b in zip(smaller.state_dict().values(), again.state_dict().values()))
    assert fraction_for_density(model, 1.0) == pytest.approx(1.0)
    assert coreset_prune(model, dataset.input_shape, 0, keep_fraction=0.25).fc1.out_features == 75
    with pytest.raises(ValueError, match="exactly one"):
        coreset_prune(model, dataset.input_shape, 0)
    with pytest.raises(ValueError, match="keep_fraction"):
        prune_neurons(model, 1.5, dataset.input_shape)
    with pytest.raises(ValueError, match="layer structure of ResNet"):
        prune_neurons(build_model(ModelConfig(name="tv.resnet18"), (3, 32, 32), 10, 0), 0.5, (3, 32, 32))
