"""The tracking interface the framework talks to, and the no-op tracker. MLflow lives behind it: client.py
forwards to a helper process running server.py.

Runs are addressed by stable keys ("level_03", "baseline/init/snip/density_0.100000"), so a resumed process
re-attaches to the same remote runs instead of creating duplicates.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lottery.config import config_hash


class RunHandle:
    """One tracked run (the parent or a child). The base class does nothing."""

    run_id: Optional[str] = None  # the store's id, once known

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None,
                    timestamp_ms: Optional[int] = None) -> None:
        """`timestamp_ms`: when the point was measured, for points logged after the fact (default now)."""

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        pass

    def log_figure(self, figure, name: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_inputs(self, datasets: list[dict]) -> None:
        """MLflow dataset inputs: dicts of name, digest, source, profile (split sizes) and context."""

    def log_model(self, model) -> None:
        """The trained network as an MLflow model (track.log_model)."""

    def finish(self, status: str = "FINISHED", end_ms: Optional[int] = None) -> None:
        pass


class Tracker:
    """A no-op tracker: serves `track.enabled: false` and every unit test."""

    enabled = False
    degraded = False  # MlflowTracker: tracking failed and is off for the rest of the run

    def parent(self, name: str, tags: dict[str, str], params: dict[str, Any], passive: bool = False) -> RunHandle:
        """The run of the whole run directory; `passive`: another process owns it (its status is left alone)."""
        return RunHandle()

    def child(self, key: str, name: str, params: dict[str, Any], tags: Optional[dict[str, str]] = None,
              start_ms: Optional[int] = None) -> RunHandle:
        return RunHandle()

    def is_complete(self, key: str) -> bool:
        return True

    def replay(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str], history: list[dict],
               summary: dict[str, float], start_ms: Optional[int], end_ms: Optional[int]) -> None:
        """Make the store hold a finished stage's run, as its run directory does (MlflowTracker)."""

    def ui_url(self) -> Optional[str]:
        return None

    def flush(self) -> None:
        """Persist run ids now, so other workers can find the parent run."""

    def close(self, status: str = "FINISHED") -> None:
        pass


# A stage's summary in MLflow: results-row key -> metric name. The headline numbers are the final accuracy and
# the accuracy at the early-stopping step (lowest validation loss); the row's best_test_acc, the maximum test
# accuracy over evaluations, is optimistic and goes to MLflow as max_test_acc, never as a "best" accuracy.
SUMMARY_METRICS = {
    "final_test_acc": "final_test_acc",
    "early_stop_test_acc": "early_stop_test_acc",
    "early_stop_step": "early_stop_step",
    "final_val_acc": "final_val_acc",
    "best_test_acc": "max_test_acc",
    "density": "density",
    "compression": "compression",
    "wall_seconds": "wall_seconds",
}


def summary_metrics(row: dict) -> dict[str, float]:
    """Everything numeric in a results row, as MLflow metrics: the summary, the number of collapsed layers and
    one `layer_density/<layer>` per prunable layer (keys the row does not have are left out)."""
    from lottery.tracking.schema import metric_name

    metrics = {name: row[key] for key, name in SUMMARY_METRICS.items() if row.get(key) is not None}
    if isinstance(row.get("collapsed"), list):
        metrics["collapsed_layers"] = len(row["collapsed"])
    for layer, density in (row.get("layers") or {}).items():
        metrics[f"layer_density/{metric_name(layer)}"] = density
    return metrics


def log_history(handle, history: list[dict], start_ms: Optional[int], end_ms: Optional[int],
                start_step: Optional[int] = None, end_step: Optional[int] = None) -> None:
    """A stage's evaluation records, as MLflow points at their steps. Points logged after the fact (filling what a
    kill lost) get a time interpolated over the training that produced them, so every series stays in step order
    by time too; the handle and the store skip the points they already have."""
    steps = [record["step"] for record in history]
    if not steps:
        return
    first = start_step if start_step is not None else steps[0]
    last = end_step if end_step is not None else steps[-1]
    per_step = (end_ms - start_ms) / max(1, last - first) if start_ms and end_ms else None
    for record in history:
        stamp = int(start_ms + (record["step"] - first) * per_step) if per_step is not None else None
        handle.log_metrics({k: v for k, v in record.items() if k != "step" and v is not None}, step=record["step"],
                           timestamp_ms=stamp)


def run_tags(config, command: str) -> dict[str, str]:
    """The tags of a run directory's parent run: what it is, and its description for the UI."""
    from lottery.tracking.schema import DESCRIPTION_TAG

    description = (f"Seed {config.seed} of experiment {config.exp} (config {config_hash(config)}): the IMP levels, "
                   f"baselines and branches of this seed are its child runs. First command: `{command}`")
    return {"exp": config.exp, "config_hash": config_hash(config), "seed": str(config.seed), "command": command,
            "kind": "seed", DESCRIPTION_TAG: description}
