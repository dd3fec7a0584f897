import pytest
import torch

from types import SimpleNamespace

from lottery.config import ConfigError
from lottery.errors import NotFoundError
from lottery.run.context import step_plan
from lottery.run.layout import RunLayout
from lottery.workflows.branches import BranchStage, parse_levels, run_branch
from lottery.run.files import torch_load
from lottery.run.results import rows_of
from lottery.pruning.mask import Mask
from lottery.workflows.ticket import run_ticket
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
    stored = {row["stage"]: row for row in rows_of(RunLayout.of(config), "branch")}
    assert [stored[row["stage"]] for row in rows] == rows
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


def test_reinit_starts_from_new_weights_and_the_others_from_theta_k(ticket):
    config, outcome = ticket
    layout = RunLayout.of(config)
    run = SimpleNamespace(layout=layout, config=config, plan=step_plan(config, tiny_dataset(config)))
    rewind = torch_load(layout.rewind_file)
    starts = {}
    for name in ("reinit", "shuffle"):
        model = tiny_model(config, tiny_dataset(config))
        mask = Mask.load(layout.level_dir(1) / "mask.pt", model)
        BranchStage(name, 1).prepare(run, model, mask)
        starts[name] = model.state_dict()
    assert all(not torch.equal(starts["reinit"][k], rewind[k]) for k in rewind if k.endswith("weight"))
    assert all(torch.equal(starts["shuffle"][k], rewind[k]) for k in rewind)


def test_branch_without_ticket_run_or_levels_is_a_clear_error_and_writes_nothing(tmp_path, ticket):
    with pytest.raises(NotFoundError, match="lottery ticket"):
        run_branch(tiny_config(tmp_path), "shuffle", [1])
    assert not (tmp_path / "runs").exists()
    config, outcome = ticket
    with pytest.raises(ConfigError, match="levels \\[9\\].*finished levels: 0, 1, 2"):
        run_branch(config, "shuffle", [9])
    assert not (outcome.run_dir / "branches" / "shuffle" / "level_09").exists()
