import json

import pytest
import torch

from lottery.baselines import default_densities, parse_floats, run_baselines, stage_name
from lottery.cli import main
from lottery.config import ConfigError
from lottery.io import torch_load
from lottery.pruning.mask import Mask
from lottery.ticket import run_ticket
from tests.helpers import tiny_config, tiny_dataset, tiny_model


def test_baselines_cover_every_method_at_the_ticket_densities(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 2, "train.steps": "30it", "data.val_size": 64})
    ticket = run_ticket(config)
    densities = default_densities(config, ticket.run_dir)
    assert densities == [row["density"] for row in ticket.rows[1:]]
    methods = ["synflow", "snip", "grasp", "magnitude", "random"]
    rows = run_baselines(config, methods)
    requested = [(m, d) for m in methods for d in densities]
    assert [row["method"] for row in rows] == [m for m, _ in requested]
    assert json.loads((ticket.run_dir / "baselines" / "results.json").read_text()) == rows
    model = tiny_model(config, tiny_dataset(config))
    total = sum(t.numel() for _, t in Mask.ones(model).items())
    for row, (method, density) in zip(rows, requested):
        assert set(ticket.rows[0]) - {"level"} <= set(row)
        assert abs(row["density"] - density) <= 1 / total  # exact counts, up to rounding
        stage = ticket.run_dir / "baselines" / "init" / stage_name(method, density)
        mask = Mask.load(stage / "mask.pt", model)
        final = torch_load(stage / "final.pt")
        for name, keep in mask.items():
            assert torch.count_nonzero(final[name][~keep]) == 0


def test_baselines_at_rewind_start_from_theta_k(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "30it", "ticket.rewind_step": "10it"})
    rows = run_baselines(config, ["magnitude"], [0.5], at="rewind")
    assert rows[0]["method"] == "magnitude" and rows[0]["at"] == "rewind"
    assert rows[0]["density"] == pytest.approx(0.5, abs=1e-3)


def test_bad_methods_and_densities_exit_2(tmp_path, capsys):
    assert main(["baselines", "--exp", "digits", "--methods", "snip,obd", f"run.root={tmp_path}"]) == 2
    assert "--methods" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        parse_floats("0.5,2", "--densities")
    assert parse_floats("0.5,0.25", "--densities") == [0.5, 0.25]
    assert list(tmp_path.iterdir()) == []


def test_coreset_baseline_trains_a_smaller_network(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": "30it", "model.name": "lenet_64_32"})
    rows = run_baselines(config, ["coreset"], [0.5])
    assert rows[0]["method"] == "coreset"
    assert 0.3 < rows[0]["density"] < 0.7
    assert run_baselines(config, ["coreset"], [0.5]) == rows  # resumed from its stored row
    assert rows[0]["final_test_acc"] > 0.25


def test_isometry_switch_lowers_the_isometry_error_and_keeps_the_mask(tmp_path):
    from lottery.baselines import prune_model
    from lottery.pruning.isometry import isometry_error

    plain, isometric = tiny_config(tmp_path), tiny_config(tmp_path, **{"prune.isometry": True})
    dataset = tiny_dataset(plain)
    results, errors = [], []
    for config in (plain, isometric):
        model = tiny_model(config, dataset)
        result = prune_model(config, dataset, model, "magnitude", density=0.3)
        result.mask.apply(model)  # a no-op after isometry: pruned entries are already 0
        results.append(result)
        errors.append(isometry_error(model, result.mask))
    assert results[0].mask.equals(results[1].mask)
    assert errors[1] < 0.5 * errors[0]
