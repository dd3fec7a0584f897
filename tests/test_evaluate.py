"""`lottery evaluate`: clean and corrupted accuracy of every stage, resumable per stage, the prune potential, and
robustness.json; on a trained dense digits net, severity 0 is the clean accuracy and accuracy falls with severity."""
import pytest

from lottery.cli import main
from lottery.data.corruptions import CORRUPTIONS
from lottery.report.robustness import summarize
from lottery.run.files import read_json
from lottery.run.layout import RunLayout, StageRef
from lottery.training.device import resolve_fast_path
from lottery.training.loop import evaluate
from lottery.workflows.baselines import run_baselines
from lottery.workflows.dense import run_dense
from lottery.workflows.evaluate import (RobustnessSpec, evaluate_stage, open_run_directory, parse_severities,
                                        run_evaluation, stage_network)
from lottery.workflows.ticket import run_ticket
from tests.helpers import tiny_config


def test_on_a_trained_dense_digits_net_severity_0_is_clean_and_accuracy_falls_with_severity(tmp_path):
    config = tiny_config(tmp_path, **{"model.name": "lenet_64", "model.init": "glorot_normal", "data.name": "digits",
                                      "train.optimizer": "adam", "train.lr": 0.002, "train.momentum": 0.0,
                                      "train.batch_size": 64, "train.steps": "300it", "train.eval_every": "300it"})
    row = run_dense(config)
    run_dir = RunLayout.of(config).run_dir
    evaluation = run_evaluation(run_dir, RobustnessSpec(severities=(1, 2, 3, 4, 5)))
    result = read_json(run_dir / "dense" / "robustness.json")
    assert result["clean"]["acc"] == row["final_test_acc"]  # the training loop's own test evaluation
    one_example = 1 / 360  # digits has 360 test images
    with open_run_directory(run_dir, "test") as run:
        from lottery.data.corruptions import CorruptedTestSets

        model = stage_network(run, StageRef.from_key("dense"), row)
        fast = resolve_fast_path(run.config.train, model)
        sets = CorruptedTestSets(run.dataset, 0)
        for name in CORRUPTIONS:
            assert evaluate(model, sets.batches(name, 0), fast)[1] == row["final_test_acc"], name
    for name in CORRUPTIONS:
        cells = result["corruptions"][name]
        accuracy = [result["clean"]["acc"]] + [cells[str(s)]["acc"] for s in range(1, 6)]
        loss = [result["clean"]["loss"]] + [cells[str(s)]["loss"] for s in range(1, 6)]
        assert accuracy[5] <= accuracy[0], name
        if name == "jpeg":  # on 8x8 digits JPEG barely hurts and is not monotonic (tests/test_corruptions.py)
            assert loss[5] > loss[0]
            continue
        assert all(later <= earlier + one_example for earlier, later in zip(accuracy, accuracy[1:])), (name, accuracy)
        assert accuracy[5] < accuracy[0] and loss == sorted(loss) and len(set(loss)) == 6, (name, accuracy, loss)
    assert evaluation.summary["reference"] == "dense"


def test_lottery_evaluate_writes_robustness_json_resumes_and_rebuilds_structured_networks(tmp_path, capsys):
    config = tiny_config(tmp_path, **{"ticket.levels": 2, "train.steps": "40it", "model.name": "lenet_32_16",
                                      "data.name": "digits"})
    run_ticket(config)
    run_baselines(config, ["magnitude", "coreset", "small_dense"])
    run_dir = RunLayout.of(config).run_dir
    args = ["evaluate", str(run_dir), "--corruptions", "noise,contrast", "--severities", "1-2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "prune potential" in printed and "small_dense" in printed
    summary = read_json(run_dir / "robustness" / "robustness.json")
    assert (run_dir / "robustness" / "robustness.png").stat().st_size > 0
    assert summary["reference"] == "level_00" and summary["conditions"] == ["clean", "noise", "contrast", "mean"]
    assert set(summary["series"]) == {"ticket", "magnitude", "coreset", "small_dense"}
    rows = {row["stage"]: row for row in read_json(RunLayout.of(config).results_file)["rows"]}
    for ref, directory in RunLayout.at(run_dir).stage_dirs():
        result = read_json(directory / "robustness.json")
        assert result["clean"]["acc"] == rows[ref.key]["final_test_acc"], ref.key  # structured ones rebuilt right
        assert set(result["corruptions"]) == {"noise", "contrast"}
        assert set(result["corruptions"]["noise"]) == {"1", "2"}
    for label, potentials in summary["prune_potential"].items():
        for condition, entry in potentials.items():
            assert entry["prune_potential"] == pytest.approx(1 - entry["density"])

    level = run_dir / "level_01" / "robustness.json"
    stamp = level.stat().st_mtime_ns
    assert main(args) == 0 and level.stat().st_mtime_ns == stamp  # evaluated stages are read back
    assert main([*args[:-1], "1-3"]) == 0
    assert set(read_json(level)["corruptions"]["noise"]) == {"1", "2", "3"}  # only the new cells are added
    capsys.readouterr()

    assert main(["evaluate", str(run_dir), "--severities", "0-7"]) == 2
    assert "--severities" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "--corruptions", "fog"]) == 2
    assert main(["evaluate", str(run_dir), "train.lr=0.5"]) == 2
    assert "run hash" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nowhere")]) == 1


def test_evaluate_stage_is_callable_on_its_own(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 1, "train.steps": "20it", "data.name": "digits"})
    run_ticket(config)
    run_dir = RunLayout.of(config).run_dir
    with open_run_directory(run_dir, "test") as run:
        result = evaluate_stage(run, StageRef.for_level(1), RobustnessSpec(("blur",), (5,), seed=3))
    assert result == read_json(run_dir / "level_01" / "robustness.json")
    assert result["stage"] == "level_01" and result["seed"] == 3 and set(result["corruptions"]) == {"blur"}
    assert not (run_dir / "level_00" / "robustness.json").exists()


def test_prune_potential_by_hand():
    def stage(key, series, density, clean, noise):
        return {"stage": key, "series": series, "density": density, "clean": {"acc": clean},
                "corruptions": {"noise": {"1": {"acc": noise[0]}, "2": {"acc": noise[1]}}}}

    results = [stage("level_00", "ticket", 1.0, 0.90, (0.80, 0.70)),
               stage("level_01", "ticket", 0.5, 0.898, (0.77, 0.66)),  # clean within 0.5 points, noise not
               stage("level_02", "ticket", 0.25, 0.80, (0.60, 0.50)),
               stage("baseline/init/random/density_0.500000", "random", 0.5, 0.85, (0.78, 0.72))]
    summary = summarize(results, ["noise"], [1, 2], margin=0.005)
    ticket, random = summary["prune_potential"]["ticket"], summary["prune_potential"]["random"]
    assert ticket["clean"] == {"density": 0.5, "prune_potential": 0.5}  # 0.898 >= 0.90 - 0.005; 0.80 is not
    assert ticket["noise"] == {"density": 1.0, "prune_potential": 0.0}  # noise mean 0.715 < 0.75 - 0.005
    assert random["clean"]["prune_potential"] == 0.0 and random["noise"]["prune_potential"] == 0.5  # 0.75 >= 0.745
    assert summary["series"]["ticket"][1]["mean"] == pytest.approx(0.715)
    assert [point["density"] for point in summary["series"]["ticket"]] == [1.0, 0.5, 0.25]


def test_severity_ranges_parse():
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("5,1,3") == (1, 3, 5)
    assert parse_severities(None) == (1, 2, 3, 4, 5)
