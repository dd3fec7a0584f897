"""Shared pieces of the tracking, report and sync tests: fake run directories, sqlite stores and a
real `mlflow server` process. Imported explicitly by those test modules (not a conftest)."""
from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from lottery.config import Config, DataConfig, ModelConfig, TrainConfig, set_dotted
from lottery.run.context import write_config
from lottery.run.layout import RunLayout, StageRef
from lottery.run.files import write_json
from lottery.pruning.mask import Mask

LAYERS = {"features.0.weight": (16, 64), "features.2.weight": (16, 16), "output.weight": (10, 16)}
SERVER_START_SECONDS = 60


def tiny_tracked_config(uri: str, experiment: str, **overrides) -> Config:
    config = Config(
        exp=experiment,
        model=ModelConfig(name="lenet_16", init="kaiming_normal"),
        data=DataConfig(name="synthetic", root="unused"),
        train=TrainConfig(steps="20it", batch_size=32, optimizer="sgd", lr=0.05, eval_every="10it",
                          device="cpu", progress="off"),
    )
    config.track.uri = uri
    config.ticket.levels = 1
    for key, value in overrides.items():
        set_dotted(config, key, value)
    return config


def history(steps=(10, 20, 30), accuracy_offset: float = 0.0) -> list[dict]:
    return [{"step": step, "lr": 0.1, "train_loss": 2.0 / (i + 1), "test_loss": 2.5 / (i + 1),
             "test_acc": 0.5 + 0.1 * i + accuracy_offset, "val_loss": 2.4 / (i + 1), "val_acc": 0.5 + 0.1 * i}
            for i, step in enumerate(steps)]


def _mask(density: float, collapse: str | None = None) -> Mask:
    generator = torch.Generator().manual_seed(int(density * 1000))
    tensors = {}
    for name, shape in LAYERS.items():
        keep = torch.rand(shape, generator=generator) < density
        tensors[name] = torch.zeros(shape, dtype=torch.bool) if name == collapse else keep
    return Mask(tensors)


def _stage(run_dir: Path, relative: str, row: dict, mask: Mask, steps=(10, 20, 30), offset: float = 0.0) -> dict:
    directory = run_dir / relative
    directory.mkdir(parents=True, exist_ok=True)
    mask.save(directory / "mask.pt")
    ref = StageRef.from_relative(relative)
    row = {**row, "stage": ref.key, "kind": ref.kind, "density": mask.density(), "layers": {k: v["density"] for k, v in mask.layer_report().items()},
           "collapsed": mask.collapsed()}
    records = history(steps, offset)
    row.update(final_test_acc=records[-1]["test_acc"], best_test_acc=max(r["test_acc"] for r in records),
               early_stop_step=records[-1]["step"], compression=math.log10(1 / row["density"]))
    write_json(directory / "metrics.json", {"row": row, "history": records})
    (directory / "DONE").touch()
    return row


def make_run_dir(root: Path, config: Config, levels: int = 3, branches: bool = True, baselines: bool = True,
                 dense: bool = True) -> Path:
    """A finished run directory written directly: no training, the same files the pipeline writes."""
    run_dir = root / "run"
    write_config(RunLayout.at(run_dir), config)
    rows = [_stage(run_dir, f"level_{level:02d}", {"level": level}, _mask(0.8 ** level), offset=-0.01 * level)
            for level in range(levels)]
    if dense:
        rows.append(_stage(run_dir, "dense", {"level": "dense"}, _mask(1.0), offset=0.02))
    if branches:
        rows += [_stage(run_dir, f"branches/reinit/level_{level:02d}", {"level": level, "branch": "reinit"},
                        _mask(0.8 ** level), offset=-0.05 * level) for level in range(1, levels)]
    if baselines:
        for method in ("snip", "random"):
            for density in (0.8, 0.64):
                relative = f"baselines/init/{method}/density_{density:.6f}"
                collapse = "features.2.weight" if method == "random" and density == 0.64 else None
                rows.append(_stage(run_dir, relative, {"level": None, "method": method, "at": "init"},
                                   _mask(density, collapse), offset=-0.1))
    write_json(run_dir / "results.json", {"rows": rows})
    return run_dir


def runs_by_name(uri: str, experiment: str) -> dict:
    """The experiment's runs: stage runs by their key tag, parents by their name."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment} not in {uri}"
    runs = client.search_runs([found.experiment_id], max_results=1000)
    by_name = {}
    for run in runs:  # stage runs by their stable key (level_01, branch/reinit/level_02), parents by name
        name = run.data.tags.get("key", run.info.run_name)
        assert name not in by_name, f"duplicate run {name}"
        by_name[name] = run
    return by_name


def metric_steps(uri: str, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.info.run_id, key)]


def artifact_paths(uri: str, run, path: str | None = None) -> set[str]:
    client = MlflowClient(uri)
    found = set()
    for item in client.list_artifacts(run.info.run_id, path):
        found |= artifact_paths(uri, run, item.path) if item.is_dir else {item.path}
    return found


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    """One sqlite store per module: MLflow's schema migration costs ~1.5 s per new database."""
    return "sqlite:///" + str(tmp_path_factory.mktemp("store") / "mlflow.db")


@pytest.fixture(autouse=False)
def clean_http_env(monkeypatch):
    """No MLFLOW_HTTP_* or tracking URI from the user's shell: the tracker's short HTTP retries apply."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend and local artefacts in `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.backend = "sqlite:///" + str(root / "server.db")
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", self.backend,
                   "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1"]
        log = open(self.root / "server.log", "ab")
        # Its own process group: the server forks uvicorn and a job runner, killed together.
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError("mlflow server did not start in time")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    if not (Path(sys.executable).parent / "mlflow").exists():
        pytest.skip("the mlflow command is not installed beside this Python")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    try:
        yield server
    finally:
        server.kill()
