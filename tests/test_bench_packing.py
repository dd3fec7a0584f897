"""The packing and GPU benchmarks' logic, on CPU with tiny sizes (their speed is what `lottery bench` measures)."""
from __future__ import annotations

import math

import pytest
import torch

from lottery.benchmarks import gpu, packing
from lottery.benchmarks.registry import BENCHMARKS
from lottery.benchmarks.timing import Timings
from lottery.training import device


def test_both_benchmarks_are_registered():
    assert BENCHMARKS["packing"] == "lottery.benchmarks.packing"
    assert BENCHMARKS["gpu"] == "lottery.benchmarks.gpu"


def test_packing_contenders_train_the_same_fresh_jobs_and_the_entry_reports_the_ratio():
    case = packing.PackingCase("packing.test", "digits", 2, 5, False, packing.Goal(">=", 4.0), rounds=1,
                               warmup_rounds=0)
    config = packing.case_config(case)
    contenders = packing.Contenders(case, config, packing.case_dataset(case, config))
    assert contenders.seeds == [0, 1] and all(mask.density() < 0.6 for mask in contenders.masks)
    before = [model.state_dict()["fc1.weight"].clone() for model in contenders.theta0]
    calls = contenders.calls()
    sequential, packed = calls["sequential"](), calls["packed"]()
    for model, weight in zip(contenders.theta0, before):
        assert torch.equal(model.state_dict()["fc1.weight"], weight)  # every call starts from θ0
    test_size = contenders.dataset.split_size("test")
    for ours, theirs in zip(packed, sequential):
        assert [row["step"] for row in ours.history] == [row["step"] for row in theirs.history] == [5]
        assert abs(ours.final_test_acc - theirs.final_test_acc) * test_size <= 1 + 1e-9

    entry = packing.measure(case)
    assert entry.name == "packing.test" and entry.unit == "x sequential" and entry.goal == packing.Goal(">=", 4.0)
    assert math.isfinite(entry.value) and entry.value > 0
    details = entry.details
    assert details["pack"] == 2 and details["steps_per_model"] == 5 and details["shared_data_order"] is False
    assert details["packed_model_steps_per_s"] > 0 and details["sequential_model_steps_per_s"] > 0
    assert details["speedup_min"] <= entry.value <= details["speedup_max"]
    assert details["rounds"] == 1


def test_packing_cases_measure_what_the_issue_asks():
    full = {case.name: case for case in packing.cases(quick=False)}
    digits, lenet = full["packing.digits_mlp"], full["packing.lenet_300_100"]
    assert (digits.experiment, digits.pack, digits.goal) == ("digits", 8, packing.Goal(">=", 4.0))
    assert (lenet.experiment, lenet.pack, lenet.goal) == ("lenet300", 8, packing.Goal(">=", 1.2))
    assert full["packing.digits_mlp.shared_order"].shared_order and not digits.shared_order
    config = packing.case_config(lenet)
    assert (config.model.name, config.train.batch_size, config.train.optimizer) == ("lenet_300_100", 60, "adam")
    dataset = packing.case_dataset(lenet, config)
    assert dataset.input_shape == (1, 28, 28) and dataset.num_classes == 10


def test_gpu_speedups_are_per_round_model_steps_ratios():
    timings = Timings(["unpacked", "packed_4"], {"unpacked": [1.0, 2.0, 1.0], "packed_4": [2.0, 2.0, 4.0]}, 1)
    models = {"unpacked": 1, "packed_4": 4}
    assert gpu.speedups(timings, "packed_4", "unpacked", models) == [2.0, 4.0, 1.0]


def test_gpu_benchmark_logic_runs_on_cpu_with_a_tiny_resnet(monkeypatch):
    monkeypatch.setattr(device, "resolve_cpu_threads", lambda *args, **kwargs: 1)  # a tiny net: no thread wake-ups
    case = gpu.GpuCase("cpu", width=4, pack_sizes=(1, 2), steps=1, rounds=1, warmup_rounds=0, num_images=16,
                       workers=0, batch_size=8)
    with device.cpu_threads(1):
        entries = {entry.name: entry for entry in gpu.measure(case)}
    assert set(entries) == {"gpu.resnet20.plain", "gpu.resnet20.unpacked", "gpu.resnet20.packed_1",
                            "gpu.resnet20.packed_2", "gpu.resnet20.best_pack_vs_unpacked",
                            "gpu.resnet20.best_pack_vs_plain"}
    for name in ("plain", "unpacked", "packed_1", "packed_2"):
        entry = entries[f"gpu.resnet20.{name}"]
        assert entry.unit == "model-epochs/min" and math.isfinite(entry.value) and entry.value > 0
    assert entries["gpu.resnet20.packed_2"].details["models_per_call"] == 2
    versus = entries["gpu.resnet20.best_pack_vs_unpacked"]
    assert versus.goal == gpu.GOAL_VS_UNPACKED and versus.details["best"] in ("packed_1", "packed_2")
    assert set(versus.details["by_pack"]) == {"packed_1", "packed_2"}
    assert entries["gpu.resnet20.best_pack_vs_plain"].goal == gpu.GOAL_VS_PLAIN


def test_gpu_benchmark_without_cuda_says_it_was_skipped(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (entry,) = gpu.run(quick=True)
    assert entry.name == "gpu" and math.isnan(entry.value) and entry.goal is None and entry.met is None
    assert "no CUDA device" in entry.details["skipped"]


@pytest.mark.parametrize("quick", [True, False])
def test_gpu_cases_cover_the_pack_sizes(quick, monkeypatch):
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu, "measure", lambda case: seen.append(case) or [])
    gpu.run(quick)
    assert seen[0].device == "cuda"
    assert seen[0].pack_sizes == ((1, 4) if quick else (1, 4, 8, 16))
