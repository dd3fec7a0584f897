"""The Optuna search engine in one process: objectives, pruning, failures, resume, artefacts, tracking."""
import json

import optuna
import pytest
from optuna.trial import TrialState

from lottery.cli import main
from lottery.config import ConfigError
from lottery.search.engine import FAILURE_LIMIT, SearchError, make_pruner, run_search
from tests.helpers import tiny_config
from tests.search_helpers import FakeRunner, make_request

optuna.logging.set_verbosity(optuna.logging.WARNING)


def load(request):
    return optuna.load_study(study_name=request.name, storage=request.storage)


def states(study):
    return [trial.state for trial in study.get_trials()]


def test_a_single_objective_study_completes_the_requested_trials_and_saves_the_best(tmp_path):
    request = make_request(tmp_path, trials=3)
    fake = FakeRunner()
    outcome = run_search(request, fake.as_runner())
    study = load(request)
    assert states(study) == [TrialState.COMPLETE] * 3
    assert len(fake.calls) == 3
    for call, trial in zip(fake.calls, study.get_trials()):
        config = call["config"]
        assert config.prune.fraction == trial.params["prune.fraction"] and 0.1 <= config.prune.fraction <= 0.5
        assert config.track.enabled is False and call["levels"] == [0, 1, 2]
        assert trial.value == pytest.approx(0.9 - 0.2 * config.prune.fraction)  # the last level's accuracy
        assert trial.intermediate_values == {level: pytest.approx(0.9 - 0.1 * config.prune.fraction * level)
                                             for level in range(3)}
    assert len({trial.user_attrs["run_dir"] for trial in study.get_trials()}) == 3
    best = json.loads((outcome.directory / "best.json").read_text())
    assert best["number"] == study.best_trial.number and best["values"]["val_accuracy"] == study.best_value
    assert best["selection"] == "validation" and study.user_attrs["selection"] == "validation"
    assert best["params"]["prune.fraction"] == min(t.params["prune.fraction"] for t in study.get_trials())
    trials = json.loads((outcome.directory / "trials.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    assert all(set(trial.user_attrs["level_02"]) == {"val_accuracy", "density", "final_test_acc", "max_test_acc",
                                                     "final_val_acc"} for trial in study.get_trials())
    for plot in ("optimization_history", "intermediate_values", "param_importances"):
        assert (outcome.directory / "plots" / f"{plot}.png").stat().st_size > 1000
    assert outcome.directory == tmp_path / "runs" / "tiny" / "search" / "study"


def test_the_median_pruner_stops_weak_trials_between_levels(tmp_path):
    request = make_request(tmp_path, trials=3, **{"search.pruner": "median", "search.startup_trials": 1})
    fake = FakeRunner(accuracy=lambda call, level, config: 0.9 if call == 0 else 0.3)
    run_search(request, fake.as_runner())
    study = load(request)
    assert states(study) == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    assert [call["levels"] for call in fake.calls] == [[0, 1, 2], [0], [0]]
    assert study.get_trials()[1].intermediate_values == {0: 0.3}


def test_the_pruner_follows_the_config_and_multi_objective_never_prunes(tmp_path):
    assert isinstance(make_pruner(tiny_config(search__pruner="median")), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner(tiny_config(search__pruner="hyperband")), optuna.pruners.HyperbandPruner)
    assert isinstance(make_pruner(tiny_config(search__pruner="none")), optuna.pruners.NopPruner)
    multi = tiny_config(search__pruner="median", search__multi_objective=True)
    assert isinstance(make_pruner(multi), optuna.pruners.NopPruner)


def dominated(a, b):
    """b dominates a: accuracy at least as high and density at least as low, one strictly."""
    return (b["val_accuracy"] >= a["val_accuracy"] and b["density"] <= a["density"]
            and (b["val_accuracy"] > a["val_accuracy"] or b["density"] < a["density"]))


def test_multi_objective_search_saves_the_pareto_front(tmp_path, caplog):
    space = {"params": {"prune.fraction": {"type": "float", "low": 0.1, "high": 0.5},
                        "ticket.levels": {"type": "int", "low": 1, "high": 4}}}
    request = make_request(tmp_path, trials=5, space=space, **{"search.multi_objective": True,
                                                              "search.pruner": "median"})
    fake = FakeRunner(accuracy=lambda call, level, config: 0.95 - 0.3 * (1 - (1 - config.prune.fraction) ** level))
    with caplog.at_level("INFO", logger="lottery.search"):
        outcome = run_search(request, fake.as_runner())
    assert "Optuna cannot prune multi-objective studies" in caplog.text
    study = load(request)
    assert states(study) == [TrialState.COMPLETE] * 5
    assert all(call["levels"] == list(range(call["config"].ticket.levels + 1)) for call in fake.calls)
    assert all(trial.intermediate_values == {} for trial in study.get_trials())
    pareto = json.loads((outcome.directory / "pareto.json").read_text())["pareto"]
    points = [t["values"] for t in json.loads((outcome.directory / "trials.json").read_text())["trials"]]
    assert pareto and sorted(p["number"] for p in pareto) == sorted(t.number for t in study.best_trials)
    for entry in pareto:
        assert set(entry["values"]) == {"val_accuracy", "density"}
        assert not any(dominated(entry["values"], other) for other in points)
    assert not (outcome.directory / "best.json").exists()
    assert (outcome.directory / "plots" / "pareto_front.png").stat().st_size > 1000


def test_a_failing_trial_is_recorded_failed_and_the_study_goes_on(tmp_path):
    request = make_request(tmp_path, trials=3)
    fake = FakeRunner(fail_on={1: RuntimeError("out of memory in level 0")})
    outcome = run_search(request, fake.as_runner())
    study = load(request)
    assert states(study) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "out of memory" in study.get_trials()[1].user_attrs["error"]
    assert outcome.counts["COMPLETE"] == 3 and outcome.counts["FAIL"] == 1


def test_a_worker_whose_trials_keep_failing_stops(tmp_path):
    request = make_request(tmp_path, trials=2)
    fake = FakeRunner(fail_on={call: ValueError(f"bad {call}") for call in range(50)})
    with pytest.raises(SearchError, match=f"{FAILURE_LIMIT} trials in a row failed.*bad {FAILURE_LIMIT - 1}"):
        run_search(request, fake.as_runner())
    assert states(load(request)) == [TrialState.FAIL] * FAILURE_LIMIT


def test_a_stopped_search_resumes_to_the_new_total(tmp_path):
    first = FakeRunner()
    run_search(make_request(tmp_path, trials=2), first.as_runner())
    second = FakeRunner()
    outcome = run_search(make_request(tmp_path, trials=4), second.as_runner())
    assert len(first.calls) == 2 and len(second.calls) == 2
    assert states(load(make_request(tmp_path, trials=4))) == [TrialState.COMPLETE] * 4
    assert outcome.counts["COMPLETE"] == 4
    again = FakeRunner()
    run_search(make_request(tmp_path, trials=4), again.as_runner())  # already done: nothing runs
    assert again.calls == []


def test_an_interrupted_trial_is_requeued_and_resumed_with_the_same_params(tmp_path):
    request = make_request(tmp_path, trials=2)
    with pytest.raises(KeyboardInterrupt):
        run_search(request, FakeRunner(fail_on={0: KeyboardInterrupt()}).as_runner())
    study = load(request)
    assert states(study) == [TrialState.FAIL, TrialState.WAITING]
    interrupted = study.get_trials()[0].params
    fake = FakeRunner()
    run_search(request, fake.as_runner())
    resumed = load(request).get_trials()[1]
    assert resumed.state == TrialState.COMPLETE and resumed.params == interrupted
    assert resumed.user_attrs["resumes_trial"] == 0
    assert fake.calls[0]["config"].prune.fraction == interrupted["prune.fraction"]


def test_target_density_scores_and_stops_each_trial_at_its_first_level_that_sparse(tmp_path):
    space = {"params": {"prune.fraction": {"type": "categorical", "choices": [0.3, 0.6]}}}
    request = make_request(tmp_path, trials=4, space=space, **{"ticket.levels": 3, "search.target_density": 0.5})
    fake = FakeRunner()
    run_search(request, fake.as_runner())
    for call, trial in zip(fake.calls, load(request).get_trials()):
        fraction = call["config"].prune.fraction
        scored_level = 2 if fraction == 0.3 else 1  # 0.7^2 = 0.49 and 0.4^1 = 0.4
        assert call["levels"] == list(range(scored_level + 1))
        assert trial.value == pytest.approx(0.9 - 0.1 * fraction * scored_level)

    unreachable = make_request(tmp_path, trials=1, space=space, study="too-sparse",
                               **{"ticket.levels": 3, "search.target_density": 0.01})
    run_search(unreachable, FakeRunner().as_runner())
    assert states(load(unreachable)) == [TrialState.PRUNED]


def test_steps_to_dense_is_minimised(tmp_path):
    request = make_request(tmp_path, trials=2, **{"search.objective": "steps_to_dense"})
    fake = FakeRunner(accuracy=lambda call, level, config: 0.9 if level == 0 else 0.92 - 0.1 * call)
    run_search(request, fake.as_runner())
    study = load(request)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    # Dense final validation accuracy is 0.9. Trial 0's last level evaluates 0.87 at step 10 and 0.92 at step 20;
    # trial 1's (0.77, 0.82) never gets there and scores twice its 20 steps.
    assert [trial.value for trial in study.get_trials()] == [20.0, 40.0]


def test_a_study_made_for_another_objective_is_refused(tmp_path):
    run_search(make_request(tmp_path, trials=1), FakeRunner().as_runner())
    with pytest.raises(ConfigError, match="search.multi_objective"):
        run_search(make_request(tmp_path, trials=1, **{"search.multi_objective": True}), FakeRunner().as_runner())
    with pytest.raises(ConfigError, match="search.target_density"):
        run_search(make_request(tmp_path, trials=1, **{"search.target_density": 0.5}), FakeRunner().as_runner())


def test_an_invalid_space_exits_2_before_any_study_exists(tmp_path, capsys):
    space = tmp_path / "bad.yaml"
    space.write_text("params:\n  prune.fraction: {type: float, low: 0.6, high: 0.2}\n")
    storage = tmp_path / "optuna.db"
    code = main(["search", "--exp", "digits", "--space", str(space), "--trials", "2",
                 "--storage", f"sqlite:///{storage}", f"run.root={tmp_path}"])
    assert code == 2
    error = capsys.readouterr().err
    assert "prune.fraction" in error and "bad.yaml" in error and "inverted" in error
    assert not storage.exists()


@pytest.mark.parametrize("url, words", [("optuna.db", "not a database URL"), ("nosuchdb://x", "no database driver")])
def test_a_bad_storage_url_exits_2(tmp_path, capsys, url, words):
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  prune.fraction: {type: float, low: 0.1, high: 0.3}\n")
    code = main(["search", "--exp", "digits", "--space", str(space), "--trials", "1", "--storage", url,
                 f"run.root={tmp_path}"])
    assert code == 2 and words in capsys.readouterr().err


def test_the_default_objective_is_the_final_validation_accuracy_not_a_test_number(tmp_path):
    request = make_request(tmp_path, trials=2)
    fake = FakeRunner()
    run_search(request, fake.as_runner())
    for call, trial in zip(fake.calls, load(request).get_trials()):
        validation = 0.9 - 0.2 * call["config"].prune.fraction  # the fake's last level; test numbers differ
        assert trial.value == pytest.approx(validation)
        assert trial.user_attrs["level_02"]["final_test_acc"] == pytest.approx(validation - 0.01)  # still reported


def test_a_search_without_a_validation_split_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"data.val_size.*add data.val_size=N"):
        make_request(tmp_path, trials=1, **{"data.val_size": 0})
    with pytest.raises(ConfigError, match="data.val_size"):
        make_request(tmp_path, trials=1, **{"data.val_size": 0, "search.objective": "steps_to_dense"})
    assert not (tmp_path / "optuna.db").exists()


def test_test_accuracy_is_searched_only_by_name_and_the_study_is_tagged(tmp_path, caplog):
    request = make_request(tmp_path, trials=2, **{"data.val_size": 0, "search.objective": "test_accuracy"})
    fake = FakeRunner()
    with caplog.at_level("WARNING", logger="lottery.search"):
        outcome = run_search(request, fake.as_runner())
    assert "selects on the test set" in caplog.text
    study = load(request)
    assert study.user_attrs["selection"] == "test_set"
    for call, trial in zip(fake.calls, study.get_trials()):
        assert trial.value == pytest.approx(0.9 - 0.2 * call["config"].prune.fraction - 0.01)  # final test acc
    best = json.loads((outcome.directory / "best.json").read_text())
    assert best["selection"] == "test_set" and set(best["values"]) == {"test_accuracy"}
    assert json.loads((outcome.directory / "trials.json").read_text())["selection"] == "test_set"
    # A validation search cannot join it, nor the other way round.
    with pytest.raises(ConfigError, match="search.objective"):
        run_search(make_request(tmp_path, trials=2), FakeRunner().as_runner())


def test_every_search_plot_labels_both_axes_in_our_terms(tmp_path):
    from lottery.search.results import search_figures

    request = make_request(tmp_path, trials=3)
    run_search(request, FakeRunner().as_runner())
    figures = search_figures(load(request), request.config, complete=3)
    assert set(figures) == {"optimization_history", "intermediate_values", "param_importances"}
    for name, figure in figures.items():
        axes = figure.axes[0]
        assert axes.get_xlabel() and axes.get_ylabel(), name
    assert figures["intermediate_values"].axes[0].get_xlabel() == "level"
    assert "validation" in figures["optimization_history"].axes[0].get_ylabel()
