"""SynFlow: conservation of synaptic flow, float64 on deep nets, the float32 overflow it avoids."""
import copy as copying

import pytest
import torch
from torch import nn

from lottery.pruning.mask import Mask
from lottery.pruning.prune import PruneSpec, prune
from lottery.pruning.scores import SynFlow, synflow


def bias_free_mlp(bias=False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20, bias=bias), nn.ReLU(), nn.Linear(20, 15, bias=bias), nn.ReLU(),
                         nn.Linear(15, 4, bias=bias))


def conv_chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 2 * 2, 5, bias=False))


def independent_flow(model, input_shape) -> float:
    """R = Σ f(1) for the network with |θ|, computed on a plain float64 copy."""
    copy = copying.deepcopy(model).double()
    with torch.no_grad():
        for parameter in copy.parameters():
            parameter.abs_()
        return float(copy(torch.ones((1, *input_shape), dtype=torch.float64)).sum())


def layer_sums(scores):
    return torch.tensor([float(score.sum()) for score in scores.values()], dtype=torch.float64)


@pytest.mark.parametrize("build, shape", [(bias_free_mlp, (10,)), (conv_chain, (3, 8, 8))])
def test_conservation_per_layer_sums_equal_the_flow(build, shape):
    model = build()
    sums = layer_sums(synflow(model, Mask.ones(model), input_shape=shape))
    flow = independent_flow(model, shape)
    torch.testing.assert_close(sums, torch.full_like(sums, flow), rtol=1e-6, atol=0)


def test_conservation_holds_for_a_masked_network_too():
    model = bias_free_mlp()
    generator = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(f.shape, generator=generator) < 0.6 for n, f in Mask.ones(model).items()})
    sums = layer_sums(synflow(model, mask, input_shape=(10,)))
    torch.testing.assert_close(sums, torch.full_like(sums, float(sums[0])), rtol=1e-6, atol=0)
    assert all(float(score[~mask[n]].abs().max()) == 0 for n, score in synflow(model, mask, input_shape=(10,)).items())


def test_biases_break_conservation():
    """The property test has teeth: with biases the flow entering and leaving layers differs."""
    model = bias_free_mlp(bias=True)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.bias.fill_(0.5)
    sums = layer_sums(synflow(model, Mask.ones(model), input_shape=(10,)))
    assert float((sums.max() - sums.min()) / sums.max()) > 1e-3


def test_batchnorm_is_in_eval_mode_with_absolute_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([4.0, 9.0, 16.0]))
        model[1].running_mean.copy_(torch.tensor([-1.0, 0.0, 1.0]))
        model[1].weight.copy_(torch.tensor([-1.0, 2.0, 1.0]))
    model.train()
    scores = synflow(model, Mask.ones(model), input_shape=(4,))
    # By hand: h = |W1| 1; BN eval: (h - |mean|) / sqrt(|var| + eps) * |γ| + |β|; R = Σ |W2| bn.
    w1, w2 = model[0].weight.detach().abs().double(), model[2].weight.detach().abs().double()
    scale = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / torch.sqrt(torch.tensor([4.0, 9.0, 16.0]) + 1e-5)
    expected_w2 = w2 * ((w1.sum(1) - torch.tensor([1.0, 0.0, 1.0])) * scale).unsqueeze(0)
    torch.testing.assert_close(scores["2.weight"], expected_w2.abs())
    assert model.training and model[1].training


def _build(name):
    from lottery.config import ModelConfig
    from lottery.models import build_model

    return build_model(ModelConfig(name=name), (3, 32, 32), 10, seed=0)


@pytest.mark.parametrize("name", ["resnet110", "vgg19"])
def test_float64_synflow_is_finite_on_deep_nets(name):
    model = _build(name)
    scorer = SynFlow(model, (3, 32, 32))
    flow = scorer.objective({})
    scores = scorer(Mask.ones(model))
    assert torch.isfinite(flow) and float(flow) > 0
    assert all(bool(torch.isfinite(score).all()) for score in scores.values())
    assert all(float(score.sum()) > 0 for score in scores.values())


def test_float32_synflow_overflows_on_resnet110():
    model = _build("resnet110")
    flow64 = SynFlow(model, (3, 32, 32)).objective({})
    assert float(flow64) > 3.5e38  # beyond float32's largest finite value
    scorer32 = SynFlow(model, (3, 32, 32), dtype=torch.float32)
    assert not torch.isfinite(scorer32.objective({}))
    scores32 = scorer32(Mask.ones(model))
    assert any(not bool(torch.isfinite(score).all()) for score in scores32.values())


def test_iterative_synflow_hits_the_exact_density_and_keeps_the_model():
    model = conv_chain()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = prune(model, PruneSpec("synflow", rounds=20), compression=1.0, input_shape=(3, 8, 8))
    kept, total = result.mask.counts()
    assert kept == round(total / 10)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_synflow_defaults_to_100_exponential_rounds(monkeypatch):
    densities = []
    original = SynFlow.__call__

    def counting(self, mask, *args, **kwargs):
        densities.append(mask.density())  # the density each round scores from
        return original(self, mask, *args, **kwargs)

    monkeypatch.setattr(SynFlow, "__call__", counting)
    result = prune(conv_chain(), PruneSpec("synflow"), compression=2.0, input_shape=(3, 8, 8))
    assert len(densities) == 100
    assert densities[0] == 1.0
    for step in (25, 50, 75):  # round k+1 starts from density 10^(-2k/100)
        assert densities[step] == pytest.approx(10 ** (-2 * step / 100), rel=0.02)
    kept, total = result.mask.counts()
    assert kept == round(total / 100)
