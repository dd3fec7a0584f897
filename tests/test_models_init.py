"""Initialisers: seeded, reproducible, correctly scaled, and invisible to the global RNG."""
import math

import pytest
import torch
from torch import nn

from lottery.config import ModelConfig
from lottery.models import INITIALIZERS, build_model, initialize


def build(name="conv2", init="kaiming_normal", seed=0, shape=(3, 32, 32)):
    return build_model(ModelConfig(name=name, init=init), shape, 10, seed)


def states_equal(first, second):
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_all_required_initialisers_are_registered():
    assert set(INITIALIZERS) == {"kaiming_normal", "kaiming_uniform", "glorot_normal", "glorot_uniform",
                                 "orthogonal", "variance_scaling", "default"}


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
@pytest.mark.parametrize("name", ["lenet_300_100", "resnet20"])
def test_same_seed_gives_the_same_theta0_and_another_seed_does_not(name, init):
    assert states_equal(build(name, init, seed=3), build(name, init, seed=3))
    assert not states_equal(build(name, init, seed=3), build(name, init, seed=4))


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_building_and_initialising_leave_the_global_rng_untouched(init):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    model = build("resnet20", init, seed=7)
    initialize(model, init, seed=8)
    assert torch.equal(torch.get_rng_state(), before)


def test_initialize_reproduces_build_after_the_weights_changed():
    model = build("resnet20", "glorot_uniform", seed=5)
    reference = build("resnet20", "glorot_uniform", seed=5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model.bn.running_mean.fill_(3.0)
    initialize(model, "glorot_uniform", seed=5)
    assert states_equal(model, reference)


def layer_std(init, fan_in=400, fan_out=300):
    layer = nn.Linear(fan_in, fan_out)
    INITIALIZERS[init](layer, torch.Generator().manual_seed(0))
    return layer


@pytest.mark.parametrize("init,expected_std", [
    ("kaiming_normal", math.sqrt(2 / 400)),
    ("kaiming_uniform", math.sqrt(2 / 400)),
    ("glorot_normal", math.sqrt(2 / 700)),
    ("glorot_uniform", math.sqrt(2 / 700)),
])
def test_named_initialisers_have_their_published_scale_and_zero_bias(init, expected_std):
    layer = layer_std(init)
    assert layer.weight.std().item() == pytest.approx(expected_std, rel=0.03)
    assert torch.count_nonzero(layer.bias) == 0


def test_uniform_initialisers_stay_within_their_bounds():
    assert layer_std("kaiming_uniform").weight.abs().max() <= math.sqrt(6 / 400)
    assert layer_std("glorot_uniform").weight.abs().max() <= math.sqrt(6 / 700)


def test_orthogonal_rows_are_orthonormal():
    weight = layer_std("orthogonal", fan_in=400, fan_out=300).weight.detach()
    assert torch.allclose(weight @ weight.T, torch.eye(300), atol=1e-4)


def test_default_is_pytorchs_own_scheme():
    layer = layer_std("default")
    bound = 1 / math.sqrt(400)
    assert layer.weight.abs().max() <= bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert layer.bias.abs().max() <= bound and torch.count_nonzero(layer.bias) == 300


def test_conv_weights_use_the_receptive_field_in_their_fan():
    model = build("conv2", "kaiming_normal")
    assert model.conv2.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert torch.count_nonzero(model.conv2.bias) == 0


def test_batchnorm_starts_at_identity_scale_and_zero_shift():
    model = build("vgg11", "orthogonal")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(torch.all(n.weight == 1) and torch.all(n.bias == 0) for n in norms)


def test_torchvision_models_are_seeded_too():
    first, second = build("tv.resnet18", seed=1), build("tv.resnet18", seed=1)
    assert states_equal(first, second)
    assert torch.count_nonzero(first.fc.bias) == 0


def test_unknown_initialiser_is_a_clear_error():
    with pytest.raises(ValueError, match="glorot_normal"):
        initialize(nn.Linear(2, 2), "xavier", seed=0)


def test_variance_scaling_is_tensorflows_truncated_normal_with_std_one_over_fan_in():
    weight = layer_std("variance_scaling").weight.detach()
    assert weight.std().item() == pytest.approx(math.sqrt(1 / 400), rel=0.03)
    # Cut at two standard deviations of the underlying (pre-cut) normal.
    assert weight.abs().max().item() <= 2 * math.sqrt(1 / 400) / 0.87962566103423978
