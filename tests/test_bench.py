"""`lottery bench`: the timing helper, the entries, the table, and a quick run through the CLI.

Speed goals are not asserted here: speed is what the benchmarks measure, not what tests check.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from lottery.errors import ConfigError
from lottery.benchmarks.registry import BENCHMARKS, format_table, select
from lottery.benchmarks.mask_storage import bits_per_weight, entropy_bits
from lottery.benchmarks.masking import MaskingCase, contenders, random_mask
from lottery.benchmarks import tracking_overhead
from lottery.benchmarks.bookkeeping import RunTimes
from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.timing import interleaved, rotated
from lottery.benchmarks.tracking_overhead import RunTime
from lottery.benchmarks.tracking_overhead import entry as tracking_entry
from lottery.cli import main
from lottery.pruning.masked_adam import MaskedAdam
from lottery.tracking.client import MlflowTracker


class FakeClock:
    """A clock that only moves when a contender says so."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_interleaved_times_each_contender_in_rotating_order_with_a_fake_clock():
    clock, calls = FakeClock(), []
    b_costs = iter([2.0] * 2 + [2.0, 2.0, 20.0, 2.0] * 3)  # 2 warm-up calls, then one slow round

    def contender(name, cost):
        def call():
            calls.append(name)
            clock.now += cost() if callable(cost) else cost
        return call

    timings = interleaved({"a": contender("a", 1.0), "b": contender("b", lambda: next(b_costs))},
                          rounds=6, warmup_rounds=1, calls_per_sample=2, clock=clock)

    # warm-up a,a,b,b untimed; then rounds alternate which contender goes first
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls[4:8] == ["a", "a", "b", "b"] and calls[8:12] == ["b", "b", "a", "a"]
    assert timings.samples["a"] == [1.0] * 6  # seconds per call, not per sample
    assert timings.samples["b"] == [2.0, 11.0, 2.0, 11.0, 2.0, 11.0]
    assert timings.median("a") == 1.0
    assert timings.median("b") == pytest.approx(6.5)
    assert timings.ratio("b", "a") == pytest.approx(6.5)
    assert timings.ratio_spread("b", "a") == (2.0, 11.0)
    summary = timings.summary()
    assert summary["rounds"] == 6 and summary["calls_per_sample"] == 2
    assert summary["seconds_per_call"]["b"] == {"median": 6.5, "min": 2.0, "max": 11.0}


def test_ratio_is_the_median_of_paired_rounds_so_shared_noise_cancels():
    clock = FakeClock()
    load = iter([1, 1, 5, 5, 1, 1, 9, 9, 1, 1])  # the machine slows both contenders in the same round

    def step(cost):
        def call():
            clock.now += cost * next(load)
        return call

    timings = interleaved({"ours": step(1.01), "plain": step(1.0)}, rounds=5, warmup_rounds=0, clock=clock)
    assert timings.ratio("ours", "plain") == pytest.approx(1.01)
    assert timings.median("ours") / timings.median("plain") == pytest.approx(1.01)


def test_rotated_orders_and_bad_arguments():
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="contender"):
        interleaved({}, rounds=1)


def test_goals_and_entries():
    goal = Goal("<=", 1.02)
    assert goal.met(1.02) and not goal.met(1.03) and not goal.met(math.nan)
    assert Goal(">=", 10).met(12.5) and not Goal(">=", 10).met(9.9)
    with pytest.raises(ValueError, match="operator"):
        Goal("<", 1.0)
    entry = BenchEntry("x", 1.5, "s", Goal("<=", 1.0), {"k": 1}).to_json()
    assert entry == {"name": "x", "value": 1.5, "unit": "s", "goal": "<= 1", "met": False, "details": {"k": 1}}
    assert BenchEntry("y", 2.0, "s").to_json()["met"] is None


def test_select_keeps_registry_order_and_names_unknown_benchmarks():
    assert select(None) == list(BENCHMARKS)
    assert select("mask_storage, masking") == ["masking", "mask_storage"]
    with pytest.raises(ConfigError, match="nope.*valid: masking"):
        select("masking,nope")


def test_table_marks_pass_fail_and_comparisons():
    table = format_table([
        BenchEntry("masking.lenet", 1.01, "x plain step", Goal("<=", 1.02)).to_json(),
        BenchEntry("data_pipeline", 8.0, "x torchvision", Goal(">=", 10)).to_json(),
        BenchEntry("masking.lenet.prune_hooks", 1.3, "x plain step").to_json(),
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["benchmark", "value", "goal", "met"]
    assert lines[2].endswith("PASS") and lines[3].endswith("FAIL") and lines[4].endswith("-")


@pytest.mark.parametrize("optimizer, names, ours_type", [
    ("sgd", ["plain", "ours", "forward_multiply", "prune_hooks"], torch.optim.SGD),
    ("adam", ["plain", "ours", "enforcer", "forward_multiply", "prune_hooks"], MaskedAdam)])
def test_masking_contenders_train_the_same_masked_network(optimizer, names, ours_type):
    case = MaskingCase("lenet_16", (1, 4, 4), 8, optimizer, 0.01, 0.9, 0.0, 0, 1, 1)
    race = contenders(case)
    assert list(race.steps) == names
    assert type(race.optimizers["ours"]) is ours_type  # what lottery.train builds for a masked run
    assert type(race.optimizers["plain"]) is type(race.optimizers["prune_hooks"]) is {
        "sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    name = race.mask.names[0]
    kept = race.mask[name]
    pruned = ~kept
    module_name = name.rpartition(".")[0]
    start = {key: model.get_submodule(module_name).weight.detach().clone() for key, model in race.models.items()}
    assert torch.equal(start["plain"][kept], start["ours"][kept])  # same θ0 on the kept weights
    for step in race.steps.values():
        step()
        step()
    seen = {key: model.get_submodule(module_name).weight.detach() for key, model in race.models.items()}
    for key in names[1:]:  # what each forward computes with
        assert torch.count_nonzero(seen[key][pruned]) == 0, key
        assert not torch.equal(seen[key], start[key]), key  # and it did train
    assert torch.count_nonzero(seen["plain"][pruned]) > 0


def test_random_mask_density_and_mask_file_size(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(100, 80), torch.nn.ReLU(), torch.nn.Linear(80, 10))
    mask = random_mask(model, 0.5, seed=1)
    assert abs(mask.density() - 0.5) < 0.03
    bits = bits_per_weight(mask, tmp_path)
    assert 0.9 < bits < 1.5  # about one bit per weight, plus the header on a small mask
    assert bits_per_weight(random_mask(model, 1.0, seed=1), tmp_path) < 0.2  # all-kept compresses
    assert entropy_bits(0.5) == pytest.approx(1.0) and entropy_bits(1.0) == 0.0
    assert entropy_bits(0.2) == pytest.approx(0.7219, abs=1e-4)


def test_bookkeeping_ratio_arithmetic():
    times = RunTimes(level=[1.2, 1.4], train=[1.1, 1.2], checkpoints=[0.1, 0.2], checkpoint_count=[3, 3],
                     tail=0.3, total=5.0)
    # level 1: outside 0.1 + checkpoints 0.1 + tail share 0.1, over pure training 1.0
    assert times.ratios() == pytest.approx([0.3, (0.2 + 0.2 + 0.1) / 1.0])
    assert times.ratios(with_tail=False) == pytest.approx([0.2, 0.4])


def test_quick_bench_through_the_cli_writes_the_report(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--only", "mask_storage,data_pipeline", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["quick"] is True
    assert set(report["benchmarks"]) == {"data_pipeline", "mask_storage"}
    names = [entry["name"] for entry in report["results"]]
    assert names == ["data_pipeline", "mask_storage.lenet_300_100", "mask_storage.resnet20"]
    for entry in report["results"]:
        assert set(entry) == {"name", "value", "unit", "goal", "met", "details"}
        assert math.isfinite(entry["value"]) and entry["value"] > 0
        assert isinstance(entry["met"], bool) and entry["goal"]
    pipeline = report["results"][0]["details"]
    assert pipeline["num_workers"] == 0
    assert pipeline["ours_images_per_s"] > 0 and pipeline["torchvision_images_per_s"] > 0
    storage = report["results"][1]
    assert storage["value"] == max(row["bits_per_weight"] for row in storage["details"]["densities"].values())
    printed = capsys.readouterr().out
    assert "mask_storage.resnet20" in printed and "bits/weight" in printed


def test_unknown_benchmark_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "masking,warp_drive", "--out", str(out)]) == 2
    assert "warp_drive" in capsys.readouterr().err
    assert not out.exists()


def test_tracking_overhead_entry_arithmetic():
    tracked = [RunTime(2.4, [1.02, 1.0], 0.38, 0.05, 2.0), RunTime(2.2, [1.0, 1.04], 0.16, 0.07, 2.2)]
    bare = [RunTime(2.0, [1.0, 1.0], 0.0), RunTime(2.0, [1.0, 1.0], 0.0)]
    result = tracking_entry(tracked, bare)
    assert result.name == "tracking.digits" and result.goal == Goal("<=", 2.0)
    assert result.details["percent_per_level"] == pytest.approx([2.0, 0.0, 0.0, 4.0])
    assert result.details["percent_per_pair"] == pytest.approx([1.0, 2.0])
    assert result.value == pytest.approx(1.5)  # median over pairs of the levels' total time
    assert result.details["percent_per_run"] == pytest.approx([20.0, 10.0])
    assert result.details["calls_percent"] == pytest.approx(3.0)
    assert result.details["tail_seconds_tracked"] == pytest.approx(0.27)


def test_quick_tracking_overhead_runs_real_tracked_and_untracked_tickets():
    originals = {name: MlflowTracker.__dict__[name] for name in ("parent", "child", "close")}
    (result,) = tracking_overhead.run(quick=True)
    details = result.details
    assert details["pairs"] == 1 and details["levels_per_run"] == 2  # level 0 and one pruned level
    assert len(details["percent_per_level"]) == 2 and len(details["percent_per_pair"]) == 1
    assert details["calls_seconds_per_level"] > 0  # the tracker's methods were timed on this thread
    assert details["helper_cpu_seconds_per_run"] > 0  # and its helper process did run
    assert math.isfinite(result.value)
    assert {name: MlflowTracker.__dict__[name] for name in originals} == originals  # wrappers removed
