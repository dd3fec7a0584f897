import pytest
import torch

from lottery.training.loop import StepPlan, TrainJob, _progress, build_optimizer, train
from tests.helpers import Interrupt, interrupt_at, tiny_config, tiny_dataset, tiny_model


def _job(config, dataset, model, **kwargs):
    return TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=config.seed,
                    start_step=kwargs.pop("start_step", 0), end_step=kwargs.pop("end_step", 60), **kwargs)


def test_dense_training_learns_synthetic_data():
    config = tiny_config(**{"train.steps": "200it"})
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    result = train(_job(config, dataset, model, end_step=200))
    assert result.final_step == 200
    assert result.final_test_acc > 0.9
    assert result.history[0]["test_loss"] > result.history[-1]["test_loss"]
    assert [row["step"] for row in result.history] == list(range(20, 201, 20))


@pytest.mark.parametrize("optimizer, extra", [
    ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {"lr": 0.01}), ("adamw", {"lr": 0.01}),
])
def test_every_optimizer_with_weight_decay_reduces_loss(optimizer, extra):
    config = tiny_config(**{"train.optimizer": optimizer, "train.weight_decay": 1e-4,
                            **{f"train.{k}": v for k, v in extra.items()}})
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    built = build_optimizer(model, config.train)
    assert built.param_groups[0]["weight_decay"] == 1e-4
    result = train(_job(config, dataset, model))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_resume_is_bit_identical(tmp_path):
    config = tiny_config(**{"train.milestones": ["30it"], "train.warmup": "5it"})
    dataset = tiny_dataset(config)
    reference_model = tiny_model(config, dataset)
    reference = train(_job(config, dataset, reference_model))

    checkpoint = tmp_path / "checkpoint.pt"
    model = tiny_model(config, dataset)
    with pytest.raises(Interrupt):
        train(_job(config, dataset, model, checkpoint_path=checkpoint, checkpoint_every=25,
                   checkpoint_tag="x", hooks=(interrupt_at(37),)))
    assert checkpoint.exists()
    fresh = tiny_model(config, dataset)
    resumed = train(_job(config, dataset, fresh, checkpoint_path=checkpoint, checkpoint_every=25, checkpoint_tag="x"))
    for name, tensor in reference_model.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[name]), name
    strip = lambda rows: [{k: v for k, v in row.items()} for row in rows]  # noqa: E731
    assert strip(resumed.history) == strip(reference.history)


def test_checkpoint_with_another_tag_is_ignored(tmp_path):
    config = tiny_config()
    dataset = tiny_dataset(config)
    checkpoint = tmp_path / "checkpoint.pt"
    model = tiny_model(config, dataset)
    with pytest.raises(Interrupt):
        train(_job(config, dataset, model, checkpoint_path=checkpoint, checkpoint_every=10,
                   checkpoint_tag="level_00", hooks=(interrupt_at(15),)))
    result = train(_job(config, dataset, tiny_model(config, dataset), checkpoint_path=checkpoint,
                        checkpoint_every=0, checkpoint_tag="level_01"))
    assert [row["step"] for row in result.history] == [20, 40, 60]


def test_segment_from_k_uses_the_same_lr_as_an_uninterrupted_run():
    config = tiny_config(**{"train.milestones": ["30it"], "train.eval_every": "10it"})
    dataset = tiny_dataset(config)
    full = train(_job(config, dataset, tiny_model(config, dataset)))
    tail = train(_job(config, dataset, tiny_model(config, dataset), start_step=20))
    lr_full = {row["step"]: row["lr"] for row in full.history}
    assert all(lr_full[row["step"]] == row["lr"] for row in tail.history)
    assert lr_full[30] == pytest.approx(0.05) and lr_full[40] == pytest.approx(0.005)


def test_validation_split_gives_the_early_stopping_step():
    config = tiny_config(**{"data.val_size": 64})
    dataset = tiny_dataset(config)
    result = train(_job(config, dataset, tiny_model(config, dataset)))
    assert all("val_loss" in row for row in result.history)
    best = min(result.history, key=lambda row: row["val_loss"])
    assert result.summary()["early_stop_step"] == best["step"]
    assert result.summary()["early_stop_test_acc"] == best["test_acc"]


def test_hooks_run_after_every_step():
    config = tiny_config()
    dataset = tiny_dataset(config)
    seen = []
    train(_job(config, dataset, tiny_model(config, dataset), start_step=10, end_step=25, hooks=(seen.append,)))
    assert seen == list(range(11, 26))


def test_bf16_autocast_and_channels_last_on_cpu():
    config = tiny_config(**{"model.name": "conv2", "train.amp": "bf16", "train.channels_last": "on",
                            "data.augment": True})
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    result = train(_job(config, dataset, model, end_step=20))
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_torch_compile_on_cpu_matches_eager():
    config = tiny_config()
    compiled_config = tiny_config(**{"train.compile": True})
    dataset = tiny_dataset(config)
    eager = train(_job(config, dataset, tiny_model(config, dataset), end_step=20))
    compiled = train(_job(compiled_config, dataset, tiny_model(config, dataset), end_step=20))
    assert compiled.history[-1]["test_acc"] == pytest.approx(eager.history[-1]["test_acc"], abs=0.05)


def test_progress_bar_is_off_when_not_a_terminal():
    assert _progress("auto", 10, "x").disable
    assert not _progress("on", 10, "x").disable


def test_step_plan_resolves_epochs():
    config = tiny_config(**{"train.steps": "2ep10it", "train.milestones": ["1ep"]})
    plan = StepPlan.from_config(config.train, 16)
    assert plan.total == 42 and plan.milestones == (16,) and plan.eval_every == 20


def test_fp16_autocast_with_grad_scaler_on_cpu():
    config = tiny_config(**{"train.amp": "fp16"})
    dataset = tiny_dataset(config)
    result = train(_job(config, dataset, tiny_model(config, dataset), end_step=20))
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))


def test_lottery_train_prints_accuracy_and_writes_a_run_directory(tmp_path, capsys):
    from lottery.cli import main

    assert main(["train", "--exp", "digits", f"run.root={tmp_path}", "track.enabled=false", "train.steps=2ep"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy: 0." in out
    run_dir = next(tmp_path.glob("digits/*/seed_0"))
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "dense" / "DONE").is_file() and (run_dir / "dense" / "final.pt").is_file()
    assert str(run_dir) in out


def test_small_models_train_on_one_cpu_thread_and_threads_are_restored(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = tiny_config()
    dataset = tiny_dataset(config)
    before, seen = torch.get_num_threads(), []
    train(_job(config, dataset, tiny_model(config, dataset), start_step=0, end_step=3,
               hooks=(lambda step: seen.append(torch.get_num_threads()),)))
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == before
