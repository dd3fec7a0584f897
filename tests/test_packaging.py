"""A non-editable install finds the shipped experiments and search spaces (`--exp NAME`, `--space NAME`)."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_installed_in_a_fresh_venv_finds_the_shipped_experiments_and_spaces(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(next(wheels.glob("lottery-*.whl")))], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"  # no experiments/ or configs/ here, and not the checkout
    elsewhere.mkdir()
    probe = ("import lottery.config as c; from lottery.config.loading import space_path; "
             "print(c.__file__); print(c.experiment_path('digits')); print(space_path('rewind')); "
             "print(','.join(c.known_experiments())); print(c.load_config('resnet20').model.name)")
    # The fresh venv has only lottery; its pure-Python dependencies (PyYAML) come from this interpreter's
    # site-packages, which PYTHONPATH adds without its .pth files (so not the editable checkout).
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    result = subprocess.run([str(python), "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    module, experiment, space, known, model = result.stdout.split()
    assert module.startswith(str(venv)), "the installed copy, not the checkout, was imported"
    assert Path(experiment) == venv / "share" / "lottery" / "experiments" / "digits.yaml"
    assert Path(space) == venv / "share" / "lottery" / "search_spaces" / "rewind.yaml"
    assert {"digits", "resnet20", "vgg16"} <= set(known.split(","))
    assert model == "resnet20"
