"""Scorers: magnitude, random, SNIP against an independent computation, and no side effects for all."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lottery.pruning.mask import Mask
from lottery.pruning.methods import METHODS, ScoringContext
from lottery.pruning.prune import PruneSpec
from lottery.pruning.scores import magnitude, random, snip


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def batches(count=2, size=10, features=6, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=generator), torch.randint(0, classes, (size,), generator=generator))
            for _ in range(count)]


def random_mask(model, density=0.7, seed=1) -> Mask:
    generator = torch.Generator().manual_seed(seed)
    return Mask({name: torch.rand(flags.shape, generator=generator) < density
                 for name, flags in Mask.ones(model).items()})


def test_magnitude_is_absolute_weight():
    model = mlp()
    scores = magnitude(model, Mask.ones(model))
    assert torch.equal(scores["2.weight"], model[2].weight.detach().abs())


def test_random_is_seeded_uniform():
    model = mlp()
    mask = Mask.ones(model)
    first, again = random(model, mask, seed=4), random(model, mask, generator=torch.Generator().manual_seed(4))
    other = random(model, mask, seed=5)
    assert all(torch.equal(first[n], again[n]) for n in mask.names)
    assert not torch.equal(first["0.weight"], other["0.weight"])
    assert all(float(s.min()) >= 0 and float(s.max()) < 1 for s in first.values())


def test_snip_equals_independent_abs_gradient_times_weight():
    model, data = mlp(), batches()
    mask = random_mask(model)
    scores = snip(model, mask, data)

    # Independent: the forward written out by hand with masked weights, gradients summed over batches.
    weights = {i: (model[i].weight.detach() * mask[f"{i}.weight"]).requires_grad_(True) for i in (0, 2, 4)}
    biases = {i: model[i].bias.detach() for i in (0, 2, 4)}
    total = {i: torch.zeros_like(w) for i, w in weights.items()}
    for inputs, targets in data:
        hidden = torch.relu(inputs @ weights[0].t() + biases[0])
        hidden = torch.relu(hidden @ weights[2].t() + biases[2])
        loss = F.cross_entropy(hidden @ weights[4].t() + biases[4], targets)
        for i, grad in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
            total[i] += grad
    for i in weights:
        expected = (total[i] * model[i].weight.detach() * mask[f"{i}.weight"]).abs()
        torch.testing.assert_close(scores[f"{i}.weight"] * mask[f"{i}.weight"], expected, rtol=1e-6, atol=1e-9)
        assert float(expected.sum()) > 0


def test_snip_needs_data():
    model = mlp()
    with pytest.raises(ValueError, match="needs data"):
        snip(model, Mask.ones(model), None)


class Net(nn.Module):
    """Conv, BatchNorm, dropout, linear: every kind of state a scorer could disturb."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


def _snapshot(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "modes": [m.training for m in model.modules()],
        "dtypes": [p.dtype for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "rng": torch.get_rng_state(),
    }


def _assert_same(before, after):
    for key in ("params", "buffers"):
        assert before[key].keys() == after[key].keys()
        for name in before[key]:
            assert torch.equal(before[key][name], after[key][name]), (key, name)
    assert before["modes"] == after["modes"]
    assert before["dtypes"] == after["dtypes"] and before["requires_grad"] == after["requires_grad"]
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None), name
        assert grad is None or torch.equal(grad, other), name
    assert torch.equal(before["rng"], after["rng"])


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.make_scorer is not None])
@pytest.mark.parametrize("grads", ["none", "tensor"])
@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_scorers_have_no_side_effects(method, grads, bn_mode):
    torch.manual_seed(0)
    model = Net()
    model.train()
    model.drop.eval()  # a mixed state, which must come back exactly
    model.bn.running_mean.uniform_(-1, 1)
    model.fc.bias.requires_grad_(False)
    if grads == "tensor":
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
    generator = torch.Generator().manual_seed(2)
    data = [(torch.randn(12, 2, 4, 4, generator=generator), torch.randint(0, 3, (12,), generator=generator))]
    mask = random_mask(model, 0.6)
    before = _snapshot(model)
    scorer = METHODS[method].make_scorer(ScoringContext(model, data, (2, 4, 4), PruneSpec(method, bn_mode=bn_mode)))
    scores = scorer(mask)
    _assert_same(before, _snapshot(model))
    assert scores.keys() == set(mask.names)
    assert all(s.shape == mask[n].shape and bool(torch.isfinite(s).all()) for n, s in scores.items())
