"""MaskedAdam: torch's Adam/AdamW arithmetic, with pruned weights held at exactly 0 by the step itself."""
import copy

import pytest
import torch
from torch import nn

from lottery.config import TrainConfig
from lottery.pruning.mask import Mask
from lottery.pruning.masked_adam import MaskedAdam, masked_adam
from lottery.training.loop import build_optimizer, mask_enforcer
from tests.test_pruning_mask import half_mask, small_net

SETTINGS = {
    "adam": ({"lr": 1e-2, "weight_decay": 1e-2}, torch.optim.Adam, False),
    "adamw": ({"lr": 1e-2, "weight_decay": 1e-1}, torch.optim.AdamW, True),
}


def batches(count: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator))
            for _ in range(count)]


def run(model: nn.Module, optimizer: torch.optim.Optimizer, data, after_step=None) -> None:
    model.train()
    for inputs, targets in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        if after_step is not None:
            after_step()


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_with_nothing_pruned_it_is_bit_identical_to_torch(kind):
    settings, stock_class, decoupled = SETTINGS[kind]
    stock_model, our_model = small_net(), small_net()
    mask = Mask.ones(our_model)
    data = batches(40)
    run(stock_model, stock_class(stock_model.parameters(), foreach=True, **settings), data)
    ours = masked_adam(our_model, mask, list(our_model.parameters()), decoupled_weight_decay=decoupled, **settings)
    run(our_model, ours, data)
    for (name, stock), ours_parameter in zip(stock_model.named_parameters(), our_model.parameters()):
        assert torch.equal(stock, ours_parameter), name


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_masked_equals_torch_plus_zeroing_and_pruned_weights_stay_exactly_zero(kind):
    settings, stock_class, decoupled = SETTINGS[kind]
    stock_model = small_net()
    mask = half_mask(stock_model)
    mask.apply(stock_model)
    our_model = copy.deepcopy(stock_model)
    data = batches(60)
    run(stock_model, stock_class(stock_model.parameters(), foreach=True, **settings), data,
        after_step=mask.enforcer(stock_model))
    start = {name: p.detach().clone() for name, p in our_model.named_parameters()}
    ours = masked_adam(our_model, mask, list(our_model.parameters()), decoupled_weight_decay=decoupled, **settings)
    worst = 0.0
    for batch in data:
        run(our_model, ours, [batch])
        worst = max(worst, max(float(p.detach()[~mask[n]].abs().max())
                               for n, p in our_model.named_parameters() if n in mask))
    assert worst == 0.0
    for (name, stock), ours_parameter in zip(stock_model.named_parameters(), our_model.parameters()):
        assert torch.equal(stock, ours_parameter), name
    assert any(not torch.equal(p[mask[n]], start[n][mask[n]]) for n, p in our_model.named_parameters() if n in mask)
    # The first moment is exactly 0 where pruned: that is what keeps the update at 0.
    for name, parameter in zip(mask.names, mask.parameters_of(our_model)):
        assert torch.count_nonzero(ours.state[parameter]["exp_avg"][~mask[name]]) == 0


def test_state_from_an_unmasked_optimizer_is_made_consistent_on_the_first_step():
    model = small_net()
    stock = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=True)
    run(model, stock, batches(5))  # moments nonzero everywhere, weights too
    mask = half_mask(model)
    ours = masked_adam(model, mask, list(model.parameters()), lr=1e-2)
    ours.load_state_dict(stock.state_dict())
    run(model, ours, batches(3, seed=2))
    for name, parameter in zip(mask.names, mask.parameters_of(model)):
        assert torch.count_nonzero(parameter.detach()[~mask[name]]) == 0


def test_unsupported_variants_are_refused():
    model = small_net()
    optimizer = MaskedAdam(model.parameters(), {}, lr=1e-2)
    optimizer.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        run(model, optimizer, batches(1))


@pytest.mark.parametrize("name, masked_class, enforcer", [
    ("adam", MaskedAdam, False), ("adamw", MaskedAdam, False), ("sgd", torch.optim.SGD, True)])
def test_training_uses_the_in_step_mask_for_adam_and_the_enforcer_for_sgd(name, masked_class, enforcer):
    model = small_net()
    mask = half_mask(model)
    config = TrainConfig(optimizer=name, lr=0.01, momentum=0.9, weight_decay=1e-3)
    optimizer = build_optimizer(model, config, mask)
    assert type(optimizer) is masked_class
    assert (mask_enforcer(optimizer, mask, model) is not None) == enforcer
    if name == "adamw":
        assert optimizer.param_groups[0]["decoupled_weight_decay"]
    assert type(build_optimizer(model, config)) is {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                                                    "sgd": torch.optim.SGD}[name]
    assert mask_enforcer(build_optimizer(model, config), None, model) is None


def test_channels_last_weights_keep_their_layout_and_results():
    stock_model = small_net().to(memory_format=torch.channels_last)
    mask = half_mask(stock_model)
    mask.apply(stock_model)
    our_model = copy.deepcopy(stock_model)
    data = [(inputs.to(memory_format=torch.channels_last), targets) for inputs, targets in batches(10)]
    run(stock_model, torch.optim.Adam(stock_model.parameters(), lr=1e-2, foreach=True), data,
        after_step=mask.enforcer(stock_model))
    ours = masked_adam(our_model, mask, list(our_model.parameters()), lr=1e-2)
    run(our_model, ours, data)
    conv_weight = our_model[0].weight
    assert ours._lerp_weights[conv_weight].is_contiguous(memory_format=torch.channels_last)
    for stock, ours_parameter in zip(stock_model.parameters(), our_model.parameters()):
        assert torch.equal(stock, ours_parameter)
