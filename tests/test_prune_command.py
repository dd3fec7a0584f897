import json

import pytest

from lottery.cli import main
from lottery.pruning.mask import Mask


@pytest.mark.parametrize("method", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_prune_json_is_one_object_with_the_contract_keys(method, capsys):
    assert main(["prune", "--exp", "digits", "--method", method, "--density", "0.1", "--json",
                 "data.subset=600", "baseline.rounds=5"]) == 0
    out = capsys.readouterr().out.strip()
    report = json.loads(out)  # fails if anything else is printed
    assert set(report) == {"method", "density", "compression", "layers", "collapsed", "bn_mode"}
    assert report["method"] == method
    assert report["bn_mode"] == {"snip": "eval", "grasp": "train"}.get(method)  # each reference code's mode
    kept = sum(layer["kept"] for layer in report["layers"].values())
    total = sum(layer["total"] for layer in report["layers"].values())
    assert kept == round(0.1 * total)
    assert report["density"] == pytest.approx(kept / total)
    for layer in report["layers"].values():
        assert layer["density"] == pytest.approx(layer["kept"] / layer["total"])
    assert isinstance(report["collapsed"], list)


def test_prune_by_compression_and_save_mask(tmp_path, capsys):
    out = tmp_path / "mask.pt"
    assert main(["prune", "--exp", "digits", "--method", "magnitude", "--compression", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    mask = Mask.load(out)
    kept, total = mask.counts()
    assert kept == round(0.1 * total)
    assert f"total density {kept / total:.6f}, compression 10^1.000" in text


def test_collapsed_layers_are_reported(capsys):
    assert main(["prune", "--exp", "digits", "--method", "magnitude", "--density", "0.0001", "--json",
                 "prune.scope=global"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["collapsed"], "at 0.01% density some layer must be empty"
    assert all(report["layers"][name]["kept"] == 0 for name in report["collapsed"])


def test_critical_compression_json(capsys):
    assert main(["prune", "--exp", "digits", "--method", "magnitude", "--critical", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"method", "critical_compression", "density", "precision", "probes", "bn_mode"}
    assert 0.5 < report["critical_compression"] < 5
    assert 0 < report["precision"] <= 0.05
    probes = [probe["compression"] for probe in report["probes"]]
    assert len(set(probes)) == len(probes) and all(probe > 0 for probe in probes)  # no probe at density 1
    assert report["critical_compression"] == max(p["compression"] for p in report["probes"] if not p["collapsed"])


def test_coreset_is_a_prune_method_and_reports_the_smaller_network(capsys):
    assert main(["prune", "--exp", "digits", "--method", "coreset", "--density", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["structured"] and 0.4 < report["density"] < 0.6


def test_prune_needs_a_target_and_a_valid_density(capsys):
    assert main(["prune", "--exp", "digits", "--method", "snip"]) == 2
    assert main(["prune", "--exp", "digits", "--method", "snip", "--density", "1.5"]) == 2
    assert "--density" in capsys.readouterr().err


def test_prune_reads_the_experiment_data_root(tmp_path, capsys):
    code = main(["prune", "--exp", "lenet300", "--method", "snip", "--density", "0.1", f"data.root={tmp_path}"])
    assert code == 1
    assert str(tmp_path) in capsys.readouterr().err


def test_the_batchnorm_mode_is_reported_as_chosen(capsys):
    assert main(["prune", "--exp", "digits", "--method", "snip", "--density", "0.1", "--json",
                 "baseline.bn_mode=train"]) == 0
    assert json.loads(capsys.readouterr().out)["bn_mode"] == "train"
