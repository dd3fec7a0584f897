from mlflow.tracking import MlflowClient

from lottery.workflows.ticket import run_ticket
from tests.helpers import tiny_config


def test_fast_path_decisions_are_recorded_in_the_run_params(tmp_path):
    config = tiny_config(tmp_path, **{"ticket.levels": 0, "train.steps": "10it", "train.amp": "bf16"})
    config.track.enabled = True
    config.track.uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_ticket(config)
    client = MlflowClient(config.track.uri)
    experiment = client.get_experiment_by_name(config.exp)
    parents = [run for run in client.search_runs([experiment.experiment_id])
               if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    params = parents[0].data.params
    assert params["fast_path.amp"] == "bfloat16"
    assert params["fast_path.channels_last"] == "False"  # an MLP on CPU
    assert params["fast_path.device"] == "cpu"
    assert params["fast_path.cudnn_benchmark"] == "False"
