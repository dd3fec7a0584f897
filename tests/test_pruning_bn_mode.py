"""BatchNorm mode while scoring (baseline.bn_mode): honoured, defaulting per method to its reference code."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lottery.config import ConfigError, validate
from lottery.pruning.mask import Mask
from lottery.pruning.methods import METHODS
from lottery.pruning.prune import PruneSpec, prune
from lottery.pruning.scores import snip
from lottery.workflows.baselines import method_folder, prune_model, settings_of
from tests.helpers import tiny_config, tiny_dataset, tiny_model


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def data():
    generator = torch.Generator().manual_seed(1)
    # Far from the running statistics' mean 0 / variance 1, so the two modes normalise very differently.
    return [(3 + 2 * torch.randn(24, 2, 5, 5, generator=generator), torch.randint(0, 3, (24,), generator=generator))]


def test_each_method_defaults_to_its_reference_codes_mode():
    assert METHODS["snip"].bn_mode == "eval"  # original SNIP (is_train=False) and Synaptic-Flow's default
    assert METHODS["grasp"].bn_mode == "train"  # original GraSP (scores its network in train mode)
    for name in ("synflow", "magnitude", "random"):
        assert METHODS[name].bn_mode is None and "bn_mode" not in METHODS[name].settings
    assert "bn_mode" in METHODS["snip"].settings and "bn_mode" in METHODS["grasp"].settings
    assert PruneSpec("snip").effective_bn_mode == "eval" and PruneSpec("grasp").effective_bn_mode == "train"
    assert PruneSpec("snip", bn_mode="train").effective_bn_mode == "train"
    assert PruneSpec("synflow", bn_mode="train").effective_bn_mode is None


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_train_and_eval_mode_give_different_masks_and_auto_is_the_default(method):
    model, batches = ConvBN(), data()
    masks = {mode: prune(model, PruneSpec(method, bn_mode=mode), density=0.2, batches=batches).mask
             for mode in ("train", "eval", "auto")}
    assert not masks["train"].equals(masks["eval"])
    assert masks["auto"].equals(masks[METHODS[method].bn_mode])


def test_eval_mode_snip_equals_the_gradient_of_the_eval_mode_network():
    model, batches = ConvBN(), data()
    mask = Mask.ones(model)
    scores = snip(model, mask, batches, train_mode=False)
    model.eval()
    model.zero_grad()
    inputs, targets = batches[0]
    F.cross_entropy(model(inputs), targets).backward()
    for name, parameter in model.named_parameters():
        if name in mask:
            torch.testing.assert_close(scores[name], (parameter.grad * parameter.detach()).abs())


def test_bn_mode_reaches_the_scorer_from_the_config_and_names_the_folder(tmp_path):
    def config(**overrides):
        return tiny_config(tmp_path, **{"model.name": "resnet20", "model.width": 4, **overrides})

    base = config()
    dataset = tiny_dataset(base)
    masks = {}
    for mode in ("auto", "train", "eval"):
        chosen = config(**{"baseline.bn_mode": mode})
        masks[mode] = prune_model(chosen, dataset, tiny_model(chosen, dataset), "snip", density=0.1).mask
    assert masks["auto"].equals(masks["eval"]) and not masks["train"].equals(masks["eval"])
    # The default mode keeps the method's own folder; the other one gets a folder of its own.
    assert settings_of(base, "snip")["bn_mode"] == "eval"
    assert method_folder(config(**{"baseline.bn_mode": "eval"}), "snip") == "snip"
    assert method_folder(config(**{"baseline.bn_mode": "train"}), "snip").startswith("snip-")
    assert method_folder(config(**{"baseline.bn_mode": "train"}), "grasp") == "grasp"
    assert method_folder(config(**{"baseline.bn_mode": "train"}), "synflow") == "synflow"  # reads no mode


def test_an_unknown_bn_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="baseline.bn_mode"):
        validate(tiny_config(**{"baseline.bn_mode": "batch"}))
