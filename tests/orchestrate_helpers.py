"""Shared by the orchestrator tests: the shortened digits experiment, its per-stage fingerprint and the reference
run every other scheduling must reproduce bit for bit."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lottery.config import load_config, to_dict
from lottery.orchestrate.experiment import run_experiment
from lottery.run.files import read_json, torch_load
from lottery.run.layout import RunLayout

ROOT = Path(__file__).resolve().parent.parent


def launch_ticket(config, path: Path):
    """`lottery ticket --exp PATH` in a subprocess (to be killed), `config` written to PATH; (process, the config
    as the command loads it: its exp is the file's name)."""
    values = to_dict(config)
    values.pop("exp")
    path.write_text(yaml.safe_dump(values))
    process = subprocess.Popen([sys.executable, "-m", "lottery", "ticket", "--exp", str(path)],
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return process, load_config(str(path))
# digits, shortened: 2 seeds x (θ0, θk, 3 levels, 2 methods x 2 densities, a reinit branch) = 20 stages
OVERRIDES = ["train.steps=4ep", "train.eval_every=2ep", "ticket.levels=2", "ticket.checkpoint_every=1ep",
             "experiment.seeds=[0, 1]", "experiment.baselines.methods=[magnitude, snip]",
             "experiment.branches={reinit: [2]}", "track.enabled=false", "train.device=cpu"]


def digits(tmp_path: Path, *extra: str):
    return load_config("digits", [*OVERRIDES, f"run.root={tmp_path / 'runs'}", *extra])


def fingerprint(experiment_dir: Path) -> dict:
    """Per stage: mask bytes, trained weights and the history, hashed (wall times left out)."""
    found = {}
    for seed_dir in sorted(experiment_dir.glob("seed_*")):
        for ref, directory in RunLayout.at(seed_dir).stage_dirs():
            weights = torch_load(directory / "final.pt")
            digest = hashlib.sha256(b"".join(weights[name].numpy().tobytes() for name in sorted(weights)))
            record = read_json(directory / "metrics.json")
            row = {k: v for k, v in record["row"].items() if k != "wall_seconds"}
            found[f"{seed_dir.name}/{ref.key}"] = (hashlib.sha256((directory / "mask.pt").read_bytes()).hexdigest(),
                                                   digest.hexdigest(), repr(row), repr(record["history"]))
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The experiment run once in this process (one worker): what every other scheduling must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    outcome = run_experiment(digits(root), "test")
    return outcome, fingerprint(outcome.directory)
