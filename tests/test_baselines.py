import pytest
import torch

from lottery.cli import main
from lottery.config import ConfigError
from lottery.pruning.isometry import isometry_error
from lottery.pruning.mask import Mask
from lottery.run.files import read_json, torch_load
from lottery.run.layout import RunLayout, StageRef
from lottery.workflows.baselines import (method_folder, parse_densities, run_baselines, ticket_densities,
                                         variant_of)
from lottery.workflows.ticket import run_ticket
from tests.helpers import tiny_config, tiny_dataset, tiny_model


def test_baselines_cover_every_method_at_the_ticket_densities_exactly(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 2, "train.steps": "30it", "data.val_size": 64})
    model = tiny_model(config, tiny_dataset(config))
    predicted = ticket_densities(config, model)  # known before any level trains
    ticket = run_ticket(config)
    assert predicted == [row["density"] for row in ticket.rows[1:]]
    methods = ["synflow", "snip", "grasp", "magnitude", "random"]
    rows = run_baselines(config, methods)
    requested = [(m, d) for m in methods for d in predicted]
    assert [row["method"] for row in rows] == [m for m, _ in requested]
    layout = RunLayout.of(config)
    for row, (method, density) in zip(rows, requested):
        assert set(ticket.rows[0]) - {"level"} <= set(row)
        assert row["density"] == density  # the level's density exactly, not up to rounding
        stage = layout.directory(StageRef.for_baseline(method, density, "init"))
        mask = Mask.load(stage / "mask.pt", model)
        final = torch_load(stage / "final.pt")
        for name, keep in mask.items():
            assert torch.count_nonzero(final[name][~keep]) == 0


def test_results_json_accumulates_rows_keyed_by_stage(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "20it"})
    run_ticket(config)
    first = run_baselines(config, ["magnitude"])
    second = run_baselines(config, ["random"])
    rows = read_json(RunLayout.of(config).results_file)["rows"]
    stages = [row["stage"] for row in rows]
    assert stages == ["level_00", "level_01", first[0]["stage"], second[0]["stage"]]
    assert len(set(stages)) == len(stages)
    run_baselines(config, ["magnitude"])  # a finished stage: skipped, its row not duplicated
    assert [row["stage"] for row in read_json(RunLayout.of(config).results_file)["rows"]] == stages


def test_a_baseline_setting_gets_its_own_folder_and_is_honoured(tmp_path):
    base = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "20it"})
    changed = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "20it", "baseline.rounds": 3})
    assert RunLayout.of(base).run_dir == RunLayout.of(changed).run_dir  # the ticket's run directory stays
    assert method_folder(base, "synflow") == "synflow"
    assert method_folder(changed, "synflow").startswith("synflow-")
    assert method_folder(tiny_config(tmp_path, **{"baseline.rounds": 100}), "synflow") == "synflow"  # its default
    one = run_baselines(base, ["synflow"], [0.2])[0]
    three = run_baselines(changed, ["synflow"], [0.2])[0]
    assert one["stage"] != three["stage"]
    model = tiny_model(base, tiny_dataset(base))
    layout = RunLayout.of(base)
    masks = [Mask.load(layout.directory(StageRef.from_key(row["stage"])) / "mask.pt", model) for row in (one, three)]
    assert not masks[0].equals(masks[1])  # 100 rounds and 3 rounds choose different weights


def test_baselines_at_rewind_start_from_theta_k(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "30it", "ticket.rewind_step": "10it"})
    rows = run_baselines(config, ["magnitude"], [0.5], at="rewind")
    assert rows[0]["method"] == "magnitude" and rows[0]["at"] == "rewind"
    assert rows[0]["density"] == pytest.approx(0.5, abs=1e-3)
    assert RunLayout.of(config).rewind_file.exists()


def test_bad_methods_and_densities_exit_2_and_write_nothing(tmp_path, capsys):
    assert main(["baselines", "--exp", "digits", "--methods", "snip,obd", f"run.root={tmp_path}"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["baselines", "--exp", "digits", "--methods", "", f"run.root={tmp_path}"]) == 2
    assert "no method given" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        parse_densities("0.5,2")
    assert parse_densities("0.5,0.25") == [0.5, 0.25]
    assert list(tmp_path.iterdir()) == []


def test_coreset_baseline_trains_a_smaller_network(tmp_path):
    config = tiny_config(tmp_path, **{"train.steps": "30it", "model.name": "lenet_64_32"})
    rows = run_baselines(config, ["coreset"], [0.5])
    assert rows[0]["method"] == "coreset"
    assert 0.3 < rows[0]["density"] < 0.7
    assert run_baselines(config, ["coreset"], [0.5]) == rows  # resumed from its stored row
    assert rows[0]["final_test_acc"] > 0.25


def test_isometry_switch_lowers_the_isometry_error_and_keeps_the_mask(tmp_path):
    """With no training steps, final.pt holds the starting weights: the isometric ones when the switch is on."""
    plain = tiny_config(tmp_path / "plain", **{"train.steps": "0it", "ticket.levels": 1})
    isometric = tiny_config(tmp_path / "iso", **{"train.steps": "0it", "ticket.levels": 1, "baseline.isometry": True})
    model = tiny_model(plain, tiny_dataset(plain))
    masks, errors = [], []
    for config in (plain, isometric):
        row = run_baselines(config, ["magnitude"], [0.3])[0]
        stage = RunLayout.of(config).directory(StageRef.from_key(row["stage"]))
        mask = Mask.load(stage / "mask.pt", model)
        model.load_state_dict(torch_load(stage / "final.pt"))
        masks.append(mask)
        errors.append(isometry_error(model, mask))
    assert masks[0].equals(masks[1])
    assert errors[1] < 0.5 * errors[0]


def test_baseline_scope_overrides_imps_layerwise_scope_and_gets_its_own_folder(tmp_path):
    """An LTH experiment prunes IMP layerwise; baseline.scope=global lets SNIP select as in its paper."""
    from lottery.workflows.baselines import prune_model

    layerwise = tiny_config(tmp_path, **{"prune.scope": "layerwise"})
    both = [layerwise, tiny_config(tmp_path, **{"prune.scope": "layerwise", "baseline.scope": "global"}),
            tiny_config(tmp_path, **{"prune.scope": "layerwise", "baseline.scope": "layerwise"})]
    assert RunLayout.of(both[0]).run_dir == RunLayout.of(both[1]).run_dir
    assert method_folder(both[0], "snip") == "snip" and method_folder(both[1], "snip").startswith("snip-")
    assert method_folder(both[2], "snip") != method_folder(both[1], "snip")
    dataset = tiny_dataset(layerwise)
    masks = [prune_model(config, dataset, tiny_model(config, dataset), "snip", density=0.1).mask for config in both]
    sizes = {name: flags.numel() for name, flags in masks[0].items()}
    uniform = [abs(masks[0][name].sum().item() / size - 0.1) < 0.01 for name, size in sizes.items()]
    assert all(uniform)  # prune: as prune.scope, every layer at the density
    assert masks[0].equals(masks[2]) and not masks[0].equals(masks[1])  # global SNIP: its own layer densities
    assert masks[1].counts() == masks[0].counts()  # the same number kept


def test_fresh_weights_train_the_scored_mask_from_a_new_draw_in_its_own_folder(tmp_path):
    """baseline.fresh_weights: the SNIP code scores one random draw and trains another under the mask."""
    from lottery.run.files import torch_load

    scored = tiny_config(tmp_path, **{"ticket.levels": 0, "train.steps": "0it"})
    fresh = tiny_config(tmp_path, **{"ticket.levels": 0, "train.steps": "0it", "baseline.fresh_weights": True})
    assert method_folder(scored, "snip") == "snip" and method_folder(fresh, "snip").startswith("snip-")
    rows = [run_baselines(config, ["snip"], [0.2])[0] for config in (scored, fresh)]
    layout = RunLayout.of(scored)
    model = tiny_model(scored, tiny_dataset(scored))
    masks = [Mask.load(layout.directory(StageRef.from_key(row["stage"])) / "mask.pt", model) for row in rows]
    assert masks[0].equals(masks[1])  # the same scores on θ0, so the same mask
    theta0 = torch_load(layout.init_file)
    finals = [torch_load(layout.directory(StageRef.from_key(row["stage"])) / "final.pt") for row in rows]
    for name, flags in masks[0].items():
        kept = flags.bool()
        assert torch.equal(finals[0][name][kept], theta0[name][kept])  # 0 steps: trained from θ0 itself
        assert not torch.equal(finals[1][name][kept], theta0[name][kept])  # a new draw
        assert torch.count_nonzero(finals[1][name][~kept]) == 0  # still pruned exactly


def test_a_hashed_baseline_folder_names_its_settings_in_its_row_and_in_the_report(tmp_path):
    """snip-<hash6> alone tells a reader nothing: the row carries the settings that differ from the defaults,
    and the experiment report's table and legend show them beside the folder."""
    from lottery.report.aggregate import aggregate, figure, side_by_side

    plain = tiny_config(tmp_path, **{"ticket.levels": 0, "train.steps": "0it"})
    changed = tiny_config(tmp_path, **{"ticket.levels": 0, "train.steps": "0it", "baseline.fresh_weights": True,
                                       "baseline.samples_per_class": 3})
    assert variant_of(plain, "snip") == "" and variant_of(plain, "random") == ""
    assert variant_of(changed, "snip") == "fresh_weights=True, samples_per_class=3"
    assert variant_of(changed, "magnitude") == "fresh_weights=True"  # uses no data
    rows = [run_baselines(config, ["snip"], [0.2])[0] for config in (plain, changed)]
    assert "variant" not in rows[0] and rows[1]["variant"] == "fresh_weights=True, samples_per_class=3"
    result = aggregate({0: rows})
    folder = method_folder(changed, "snip")
    label = f"{folder} (fresh_weights=True, samples_per_class=3)"
    assert result.label(folder) == label and result.label("snip") == "snip"
    assert label in side_by_side(result).splitlines()[0]
    legend = [line.get_label() for line in figure(result).axes[0].get_lines()]
    assert label in legend and "snip" in legend
