"""Every shipped experiment follows the recipe its comment cites (paper or reference code), or says where not."""
from pathlib import Path

import pytest

from lottery.config import load_config
from lottery.models import build_model
from lottery.pruning.mask import Mask

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"

OPENLTH_CIFAR = {"train.optimizer": "sgd", "train.lr": 0.1, "train.momentum": 0.9, "train.weight_decay": 1e-4,
                 "train.batch_size": 128, "train.steps": "160ep", "train.milestones": ["80ep", "120ep"],
                 "train.gamma": 0.1, "prune.fraction": 0.2, "prune.scope": "global", "model.init": "kaiming_normal",
                 "data.val_size": 0}  # OpenLTH trains on all 50K CIFAR images
LTH_CONV = {"train.optimizer": "adam", "train.batch_size": 60, "model.init": "glorot_normal", "data.val_size": 5000,
            "data.augment": False, "prune.fraction": 0.2, "prune.scope": "layerwise"}

# experiment -> (what its comment cites, expected keys, is the output layer pruned, its own rate if any)
RECIPES = {
    # OpenLTH models/cifar_vgg.py: pruning_layers_to_ignore='fc.weight'.
    "vgg16": ("OpenLTH", OPENLTH_CIFAR, False),
    "vgg19": ("OpenLTH", OPENLTH_CIFAR, False),
    # OpenLTH models/cifar_resnet.py: no layer ignored.
    "resnet20": ("OpenLTH", OPENLTH_CIFAR, True),
    "resnet56": ("OpenLTH", OPENLTH_CIFAR, True),
    # Frankle & Carbin 2019, Figure 2 and the appendix.
    "lenet300": ("Frankle & Carbin 2019", {"train.optimizer": "adam", "train.lr": 0.0012, "train.batch_size": 60,
                                           "train.steps": "50000it", "model.init": "glorot_normal",
                                           "data.val_size": 5000, "prune.fraction": 0.2, "prune.scope": "layerwise",
                                           "prune.layer_rates": {"output": 0.1}, "ticket.rewind_step": "0it"}, True),
    "conv2": ("Frankle & Carbin 2019", {**LTH_CONV, "train.lr": 0.0002, "train.steps": "20000it",
                                        "prune.layer_rates": {"conv*": 0.1, "output": 0.1}}, True),
    "conv4": ("Frankle & Carbin 2019", {**LTH_CONV, "train.lr": 0.0003, "train.steps": "25000it",
                                        "prune.layer_rates": {"conv*": 0.1, "output": 0.1}}, True),
    "conv6": ("Frankle & Carbin 2019", {**LTH_CONV, "train.lr": 0.0003, "train.steps": "30000it",
                                        "prune.layer_rates": {"conv*": 0.15, "output": 0.1}}, True),
    # Lee et al. 2019, Section 5: SGD 0.1 momentum 0.9, batch 100, wd 5e-4, x0.1 every 25K, 10% validation.
    "snip_lenet300": ("Lee et al. 2019", {"train.optimizer": "sgd", "train.lr": 0.1, "train.momentum": 0.9,
                                          "train.batch_size": 100, "train.weight_decay": 0.0005,
                                          "train.milestones": ["25000it", "50000it", "75000it"],
                                          "data.val_size": 6000, "baseline.method": "snip",
                                          "baseline.samples_per_class": 10, "prune.scope": "global"}, True),
}
OURS = {"digits"}  # hyperparameters of our own, said so in its comment
SHAPES = {"cifar10": ((3, 32, 32), 10), "mnist": ((1, 28, 28), 10)}


def value(config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def test_every_shipped_experiment_has_a_recipe_check():
    shipped = {path.stem for path in EXPERIMENTS.glob("*.yaml")}
    assert shipped == set(RECIPES) | OURS


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_experiment_follows_the_recipe_it_cites(name):
    cites, expected, output_pruned = RECIPES[name]
    comment = "".join(line for line in (EXPERIMENTS / f"{name}.yaml").read_text().splitlines(True)
                      if line.startswith("#"))
    assert cites in comment
    config = load_config(name)
    for key, wanted in expected.items():
        assert value(config, key) == wanted, key
    shape, classes = SHAPES[config.data.name]
    model = build_model(config.model, shape, classes, config.seed)
    every = Mask.ones(model)
    prunable = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
    output = every.names[-1]
    assert (output in prunable.names) == output_pruned
    assert set(every.names) - set(prunable.names) <= {output}  # nothing but the output layer is left out


def test_the_openlth_recipes_say_how_to_hold_out_a_validation_split():
    for name in ("vgg16", "vgg19", "resnet20", "resnet56"):
        assert "data.val_size=5000" in (EXPERIMENTS / f"{name}.yaml").read_text()
