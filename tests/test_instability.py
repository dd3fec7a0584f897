
import pytest
import torch
import yaml

from lottery.cli import main
from lottery.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig, set_dotted, to_dict
from lottery.data import load_dataset
from lottery.training.device import resolve_fast_path
from tests.helpers import run_dir_of
from lottery.workflows.instability import (InstabilityOptions, error_barrier, interpolate, parse_rewind_steps,
                                 run_instability)
from lottery.run.files import read_json, torch_load
from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.workflows.ticket import run_ticket
from lottery.training.loop import TrainJob, evaluate, train


def digits_config(tmp_path, **overrides) -> Config:
    """A tiny MLP on sklearn digits: 1437 training images, 23 iterations per epoch at batch 64."""
    config = Config(
        exp="instability", model=ModelConfig(name="lenet_32", init="kaiming_normal"),
        data=DataConfig(name="digits"),
        train=TrainConfig(steps="30it", batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9,
                          eval_every="30it", device="cpu", progress="off"),
    )
    config.track.enabled = False
    config.run.root = str(tmp_path / "runs")
    config.ticket.levels = 1
    for key, value in overrides.items():
        set_dotted(config, key, value)
    return config


def _test_error(config, state) -> float:
    dataset = load_dataset(config.data, seed=config.seed, device="cpu")
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed)
    model.load_state_dict(state)
    fast = resolve_fast_path(config.train, model)
    return 1.0 - evaluate(model, dataset.eval_batches("test", config.train.eval_batch_size), fast)[1]


def test_parse_rewind_steps_converts_sorts_and_rejects_bad_input():
    assert parse_rewind_steps("0,100it,2ep,1ep", 50, 1000) == [0, 50, 100]
    assert parse_rewind_steps("7, 7it", 50, 1000) == [7]
    with pytest.raises(ConfigError, match="--rewind-steps.*beyond"):
        parse_rewind_steps("0,2000it", 50, 1000)
    with pytest.raises(ConfigError, match="--rewind-steps"):
        parse_rewind_steps("soon", 50, 1000)
    with pytest.raises(ConfigError, match="--rewind-steps"):
        parse_rewind_steps(" , ", 50, 1000)


def test_interpolation_endpoints_are_exact_and_barrier_is_max_minus_mean():
    a = {"w": torch.randn(3, 4), "n": torch.tensor(5)}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    assert torch.allclose(interpolate(a, b, 0.25)["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert interpolate(a, b, 0.5)["n"].item() == 5  # integer buffers are not interpolated
    assert error_barrier([0.1, 0.3, 0.2, 0.2]) == pytest.approx(0.15)
    assert error_barrier([0.2, 0.1, 0.2]) == pytest.approx(0.0)


def test_identical_copies_have_zero_barrier_and_a_flat_curve(tmp_path):
    config = digits_config(tmp_path)
    rows = run_instability(config, "0,10it", options=InstabilityOptions(seeds=(3, 3)))
    assert [row["rewind_step"] for row in rows] == [0, 10]
    for row in rows:
        assert len(row["alphas"]) == 30 and row["alphas"][0] == 0.0 and row["alphas"][-1] == 1.0
        assert len(row["test_error"]) == 30
        assert row["barrier"] == pytest.approx(0.0, abs=1e-12)
        assert max(row["test_error"]) - min(row["test_error"]) == pytest.approx(0.0, abs=1e-12)
    copy_dir = run_dir_of(config) / "instability" / "dense" / "k_0000010"
    copy_a, copy_b = torch_load(copy_dir / "copy_a.pt"), torch_load(copy_dir / "copy_b.pt")
    assert all(torch.equal(copy_a[name], copy_b[name]) for name in copy_a)


def test_different_data_orders_give_a_curve_with_true_endpoints_and_all_outputs(tmp_path):
    config = digits_config(tmp_path)
    rows = run_instability(config, "0,10it,1ep")
    run_dir = run_dir_of(config)
    out_dir = run_dir / "instability" / "dense"
    for row in rows:
        step_dir = out_dir / f"k_{row['rewind_step']:07d}"
        copy_a, copy_b = torch_load(step_dir / "copy_a.pt"), torch_load(step_dir / "copy_b.pt")
        assert not torch.equal(copy_a["fc1.weight"], copy_b["fc1.weight"]), "the data orders must differ"
        assert row["test_error"][0] == pytest.approx(_test_error(config, copy_a), abs=1e-12)
        assert row["test_error"][-1] == pytest.approx(_test_error(config, copy_b), abs=1e-12)
        assert row["barrier"] >= 0
        assert row["barrier"] == pytest.approx(max(row["test_error"]) - sum(row["endpoint_errors"]) / 2)
        assert row["seeds"] == [config.seed, config.seed + 1]
    for name in ("curves.json", "results.json", "results.md", "barrier_vs_rewind.png", "error_vs_alpha.png"):
        assert (out_dir / name).stat().st_size > 0, name
    table = read_json(out_dir / "results.json")["rows"]
    assert [row["rewind"] for row in table] == ["0it", "10it", "1ep"]
    assert "| 1ep | 23 |" in " ".join((out_dir / "results.md").read_text().split())


def test_rewind_snapshot_equals_training_straight_to_k(tmp_path):
    config = digits_config(tmp_path)
    run_instability(config, "7it,12it", options=InstabilityOptions(points=2))
    run_dir = run_dir_of(config)
    dataset = load_dataset(config.data, seed=config.seed, device="cpu")
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed)
    model.load_state_dict(torch_load(run_dir / "init.pt"))
    train(TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=config.seed, start_step=0, end_step=7))
    snapshot = torch_load(run_dir / "instability" / "rewind" / "step_0000007.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshot[name]), name


def test_level_mask_is_applied_and_reruns_reuse_outputs(tmp_path, monkeypatch):
    config = digits_config(tmp_path, **{"ticket.rewind_step": "5it"})
    run_ticket(config)
    run_dir = run_dir_of(config)
    rows = run_instability(config, "5it", level=1, options=InstabilityOptions(points=5))
    mask = Mask.load(run_dir / "level_01" / "mask.pt")
    assert rows[0]["density"] == pytest.approx(mask.density()) and rows[0]["density"] < 1
    step_dir = run_dir / "instability" / "level_01" / "k_0000005"
    for name in ("copy_a.pt", "copy_b.pt"):
        state = torch_load(step_dir / name)
        for layer, keep in mask.items():
            assert torch.count_nonzero(state[layer][~keep]) == 0, f"{name}: {layer} has pruned weights"
    # θk for the ticket's own rewind step is the ticket's rewind.pt, not a new snapshot.
    assert not (run_dir / "instability" / "rewind" / "step_0000005.pt").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("a rerun must not train again")

    monkeypatch.setattr("lottery.workflows.instability.train", refuse)
    again = run_instability(config, "5it", level=1, options=InstabilityOptions(points=5))
    assert again[0]["test_error"] == rows[0]["test_error"]


def test_level_without_a_ticket_run_names_the_missing_mask(tmp_path):
    config = digits_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="level_03.*mask.pt.*lottery ticket"):
        run_instability(config, "0", level=3)


def test_cli_runs_the_analysis(tmp_path, capsys):
    config = digits_config(tmp_path)
    path = tmp_path / "exp.yaml"
    values = to_dict(config)
    values.pop("exp", None)
    path.write_text(yaml.safe_dump(values))
    code = main(["instability", "--exp", str(path), "--rewind-steps", "0", "train.steps=10it",
                 "train.eval_every=10it"])
    assert code == 0
    out = capsys.readouterr().out
    assert "error barrier" in out and "instability" in out
    assert main(["instability", "--exp", str(path), "--rewind-steps", "99ep"]) == 2
