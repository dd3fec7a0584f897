import json

import pytest
import torch

from lottery.branches import parse_levels, run_branch
from lottery.config import ConfigError
from lottery.io import torch_load
from lottery.pruning.mask import Mask
from lottery.ticket import run_ticket
from tests.helpers import tiny_config, tiny_dataset, tiny_model

ROW_KEYS = {"level", "density", "compression", "layers", "final_test_acc", "best_test_acc", "early_stop_step",
            "wall_seconds", "collapsed"}


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
    config = tiny_config(tmp_path_factory.mktemp("branch"), **{"ticket.levels": 2, "train.steps": "40it",
                                                              "data.val_size": 64})
    return config, run_ticket(config)


def test_parse_levels():
    assert parse_levels("1-3") == [1, 2, 3]
    assert parse_levels("3,7,12") == [3, 7, 12]
    assert parse_levels("1-2,5") == [1, 2, 5]
    for bad in ("", "a-b", "-1"):
        with pytest.raises(ConfigError):
            parse_levels(bad)


@pytest.mark.parametrize("name", ["reinit", "shuffle", "random", "invert"])
def test_branch_rows_match_ticket_rows(ticket, name):
    config, outcome = ticket
    rows = run_branch(config, name, [1, 2])
    branch_dir = outcome.run_dir / "branches" / name
    assert json.loads((branch_dir / "results.json").read_text()) == rows
    model = tiny_model(config, tiny_dataset(config))
    for row, ticket_row in zip(rows, outcome.rows[1:]):
        assert ROW_KEYS <= set(row) and row["branch"] == name
        assert row["level"] == ticket_row["level"]
        ticket_mask = Mask.load(outcome.run_dir / f"level_{row['level']:02d}" / "mask.pt", model)
        branch_mask = Mask.load(branch_dir / f"level_{row['level']:02d}" / "mask.pt", model)
        for layer in ticket_mask.names:  # every ablation keeps the per-layer counts
            assert int(branch_mask[layer].sum()) == int(ticket_mask[layer].sum())
        same = all(torch.equal(branch_mask[n], ticket_mask[n]) for n in ticket_mask.names)
        assert same == (name == "reinit")
        final = torch_load(branch_dir / f"level_{row['level']:02d}" / "final.pt")
        for layer, keep in branch_mask.items():
            assert torch.count_nonzero(final[layer][~keep]) == 0


def test_invert_keeps_the_smallest_trained_weights(ticket):
    config, outcome = ticket
    run_branch(config, "invert", [1])
    model = tiny_model(config, tiny_dataset(config))
    inverted = Mask.load(outcome.run_dir / "branches" / "invert" / "level_01" / "mask.pt", model)
    trained = torch_load(outcome.run_dir / "level_00" / "final.pt")
    for name, keep in inverted.items():
        assert trained[name][keep].abs().max() <= trained[name][~keep].abs().min()


def test_reinit_starts_from_new_weights(ticket, monkeypatch):
    from lottery import branches

    config, outcome = ticket
    reinit = branches.start_weights("reinit", config, tiny_dataset(config), outcome.run_dir)
    rewind = torch_load(outcome.run_dir / "rewind.pt")
    assert all(not torch.equal(reinit[k], rewind[k]) for k in rewind if k.endswith("weight"))


def test_branch_without_ticket_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="lottery ticket"):
        run_branch(tiny_config(tmp_path), "shuffle", [1])
