"""Ablations (shuffle, random at layer densities, inverted scores, reinit) and approximate isometry."""
import pytest
import torch
from torch import nn

from lottery.pruning.ablations import invert_scores, random_same_layerwise, reinitialize, shuffle_within_layers
from lottery.models import initialize
from lottery.pruning.isometry import approximate_isometry, isometry_error
from lottery.pruning.mask import Mask
from lottery.pruning.prune import PruneSpec, mask_from_scores, prune
from lottery.pruning.scores import magnitude


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.ReLU(), nn.Conv2d(8, 6, 3, bias=False), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 20), nn.ReLU(), nn.Linear(20, 5))


def pruned_mask(model, density=0.3) -> Mask:
    return prune(model, PruneSpec("magnitude"), density=density).mask


def _counts(mask):
    return {name: info["kept"] for name, info in mask.layer_report().items()}


@pytest.mark.parametrize("ablation", [shuffle_within_layers, random_same_layerwise])
def test_ablation_keeps_layer_counts_moves_positions_and_is_seeded(ablation):
    mask = pruned_mask(net())
    drawn = ablation(mask, seed=1)
    assert _counts(drawn) == _counts(mask)
    assert all(not torch.equal(drawn[n], mask[n]) for n in mask.names)
    assert drawn.equals(ablation(mask, seed=1))
    assert not drawn.equals(ablation(mask, seed=2))


def test_inverted_scores_keep_the_complement():
    model = net()
    dense = Mask.ones(model)
    scores = magnitude(model, dense)
    kept = mask_from_scores(scores, dense, 0.5)
    inverted = mask_from_scores(invert_scores(scores), dense, 0.5)
    assert all(torch.equal(inverted[n], ~kept[n]) for n in dense.names)


def test_reinitialize_draws_new_weights_and_keeps_the_mask():
    model = net()
    mask = pruned_mask(model)
    mask.apply(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    reinitialize(model, mask, lambda m: initialize(m, "kaiming_normal", 7))
    assert torch.equal(rng, torch.get_rng_state())
    for name, parameter in model.named_parameters():
        assert not torch.equal(parameter, before[name]), name
        if name in mask:
            assert torch.all(parameter[~mask[name]] == 0)
            assert torch.all(parameter[mask[name]] != 0)
    again = net()
    reinitialize(again, mask, lambda m: initialize(m, "kaiming_normal", 7))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))

    calls = []
    reinitialize(model, mask, lambda m: calls.append(m) or nn.init.ones_(m[0].weight))
    assert calls == [model] and torch.equal(model[0].weight.detach(), mask["0.weight"].float())


def test_isometry_error_matches_the_formula():
    model = net()
    mask = pruned_mask(model, 0.5)
    expected = 0.0
    for name, parameter in model.named_parameters():
        if name in mask:
            weight = parameter.detach() * mask[name]
            matrix = weight.reshape(weight.shape[0], -1).t()  # (k·k·c_in) × c_out
            expected += float(torch.linalg.norm(matrix.t() @ matrix - torch.eye(matrix.shape[1])))
    assert abs(isometry_error(model, mask) - expected) < 1e-4 * expected


def test_approximate_isometry_lowers_the_error_and_keeps_the_mask():
    model = net()
    mask = pruned_mask(model, 0.5)
    mask.apply(model)
    saved = mask.clone()
    before = isometry_error(model, mask)
    after = approximate_isometry(model, mask, steps=100, lr=1e-2)
    assert after < 0.7 * before
    assert abs(after - isometry_error(model, mask)) < 1e-6 * before
    assert mask.equals(saved)
    for name, parameter in model.named_parameters():
        if name in mask:
            assert torch.all(parameter[~mask[name]] == 0), name
