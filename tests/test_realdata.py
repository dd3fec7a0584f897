"""Real MNIST from DATA_ROOT; skipped cleanly when it is absent."""
import os
from pathlib import Path

import pytest

from lottery.config import load_config
from lottery.workflows.dense import run_dense
from lottery.workflows.ticket import run_ticket


def _mnist_root() -> str:
    root = os.environ.get("DATA_ROOT")
    if not root or not any((Path(root) / "MNIST" / "raw").glob("train-images-idx3-ubyte*")):
        pytest.skip("real MNIST not found: set DATA_ROOT to a folder holding MNIST/raw")
    return root


@pytest.mark.realdata
def test_lenet300_one_epoch_reaches_95_percent(tmp_path):
    root = _mnist_root()
    config = load_config("lenet300", [f"data.root={root}", "train.steps=1ep", "train.eval_every=1ep",
                                      "data.val_size=0", f"run.root={tmp_path}", "track.enabled=false",
                                      "train.progress=off"])
    row = run_dense(config)
    assert row["final_test_acc"] >= 0.95


@pytest.mark.slow
@pytest.mark.realdata
def test_lenet300_ticket_keeps_accuracy_at_half_density(tmp_path):
    root = _mnist_root()
    config = load_config("lenet300", [f"data.root={root}", "train.steps=3ep", "train.eval_every=1ep",
                                      "ticket.levels=3", f"run.root={tmp_path}", "track.enabled=false",
                                      "train.progress=off", "prune.scope=global", "prune.layer_rates={}"])
    rows = run_ticket(config).rows
    assert rows[0]["final_test_acc"] >= 0.97
    assert rows[3]["density"] == pytest.approx(0.512, abs=1e-3)
    assert rows[3]["final_test_acc"] >= 0.96


@pytest.mark.realdata
def test_lottery_evaluate_on_real_mnist_matches_the_clean_accuracy_and_writes_every_severity(tmp_path):
    from lottery.cli import main
    from lottery.run.files import read_json
    from lottery.run.layout import RunLayout

    root = _mnist_root()
    config = load_config("lenet300", [f"data.root={root}", "train.steps=1ep", "train.eval_every=1ep",
                                      "data.val_size=0", f"run.root={tmp_path}", "track.enabled=false",
                                      "train.progress=off"])
    row = run_dense(config)
    run_dir = RunLayout.of(config).run_dir
    assert main(["evaluate", str(run_dir), "--corruptions", "noise,blur", "--severities", "1-5",
                 f"data.root={root}", "track.enabled=false"]) == 0
    result = read_json(run_dir / "dense" / "robustness.json")
    assert result["clean"]["acc"] == row["final_test_acc"]
    assert {name: sorted(cells) for name, cells in result["corruptions"].items()} == \
        {"noise": ["1", "2", "3", "4", "5"], "blur": ["1", "2", "3", "4", "5"]}
    assert result["corruptions"]["blur"]["5"]["acc"] < result["clean"]["acc"]  # σ 1 px blur costs accuracy
    assert (run_dir / "robustness" / "robustness.json").is_file()
