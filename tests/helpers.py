"""Small builders shared by tests: synthetic data, tiny models and configs."""
from __future__ import annotations

from lottery.config import Config, DataConfig, ModelConfig, TrainConfig, set_dotted
from lottery.data import load_dataset
from lottery.models import build_model


def tiny_config(tmp_path=None, **overrides) -> Config:
    config = Config(
        exp="tiny",
        model=ModelConfig(name="lenet_32", init="kaiming_normal"),
        data=DataConfig(name="synthetic", root="unused"),
        train=TrainConfig(steps="60it", batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9,
                          eval_every="20it", device="cpu", progress="off"),
    )
    config.track.enabled = False
    if tmp_path is not None:
        config.run.root = str(tmp_path / "runs")
    for key, value in overrides.items():
        set_dotted(config, key.replace("__", "."), value)
    return config


def tiny_dataset(config: Config | None = None):
    config = config or tiny_config()
    return load_dataset(config.data, seed=config.seed, device="cpu")


def tiny_model(config: Config, dataset):
    return build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed)


def run_dir_of(config: Config):
    """The config's run directory, as the layout names it."""
    from lottery.run.layout import RunLayout

    return RunLayout.of(config).run_dir


class Interrupt(Exception):
    """Raised by interrupt_at's hook: a training run stopped mid-way, as a kill would stop it."""


def interrupt_at(step_to_fail: int):
    """A training hook that raises Interrupt once the run reaches `step_to_fail`."""
    def hook(step):
        if step == step_to_fail:
            raise Interrupt
    return hook
