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
