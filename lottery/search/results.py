"""What a study leaves behind: trials.json, best.json or pareto.json, Optuna's plots with our axis labels, and the
search run's metrics; plus the trial counts the engine and these files share."""
from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lottery.config import Config
from lottery.run.files import write_json
from lottery.search.objective import objective_names, selection
from lottery.search.request import SearchOutcome, SearchRequest

logger = logging.getLogger(__name__)


@contextmanager
def quiet_experimental():
    """The heartbeat API is still marked experimental in Optuna 5; it is what Optuna itself uses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def study_counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def trial_record(trial: FrozenTrial, names: list[str]) -> dict:
    values = dict(zip(names, trial.values)) if trial.values else None
    with quiet_experimental():
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return {"number": trial.number, "state": trial.state.name, "values": values, "params": trial.params,
            "run_dir": trial.user_attrs.get("run_dir"), "worker": trial.user_attrs.get("worker"),
            "retry_of": retry_of, "error": trial.user_attrs.get("error"),
            "seconds": trial.duration.total_seconds() if trial.duration else None}


def save_results(study: optuna.Study, request: SearchRequest, parent) -> SearchOutcome:
    """trials.json, best.json (single objective) or pareto.json, and Optuna's plots as PNG; logged to the parent run."""
    names = objective_names(request.config)
    directory = request.directory
    trials = study.get_trials(deepcopy=False)
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    outcome = SearchOutcome(request.name, directory, study_counts(study))
    selected_on = selection(request.config)
    # Series over the study's finished trials: a resumed search adds points instead of repeating step 0.
    finished = outcome.counts["COMPLETE"] + outcome.counts["PRUNED"]
    write_json(directory / "trials.json", {"selection": selected_on,
                                           "trials": [trial_record(trial, names) for trial in trials]})
    files = [directory / "trials.json"]
    if complete and not request.config.search.multi_objective:
        outcome.best = trial_record(study.best_trial, names)
        write_json(directory / "best.json", {**outcome.best, "selection": selected_on})
        files.append(directory / "best.json")
        parent.log_metrics({f"best_{names[0]}": study.best_value}, step=finished)
    if complete and request.config.search.multi_objective:
        outcome.pareto = [trial_record(trial, names) for trial in study.best_trials]
        write_json(directory / "pareto.json", {"selection": selected_on, "pareto": outcome.pareto})
        files.append(directory / "pareto.json")
    for path in files:
        parent.log_artifact(path)
    for path in save_plots(study, request.config, directory / "plots", len(complete)):
        parent.log_artifact(path, "plots")
    parent.log_metrics({f"trials_{state.lower()}": count for state, count in outcome.counts.items() if count},
                       step=finished)
    logger.info("study %r: %s", request.name, json.dumps({k: v for k, v in outcome.counts.items() if v}))
    return outcome


def save_plots(study: optuna.Study, config: Config, directory: Path, complete: int) -> list[Path]:
    """Optuna's matplotlib plots as PNG. A plot that cannot be drawn is skipped with a warning, never fatal."""
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    for name, figure in search_figures(study, config, complete).items():
        path = directory / f"{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        saved.append(path)
    return saved


def search_figures(study: optuna.Study, config: Config, complete: int) -> dict:
    """name -> matplotlib Figure of Optuna's plots, with both axes labelled in our terms (Optuna calls a level
    a "step", and the objective "Objective Value")."""
    from optuna.visualization import matplotlib as plots

    names = objective_names(config)
    on = "test set" if selection(config) == "test_set" else "validation"
    first = {"target": lambda trial: trial.values[0], "target_name": names[0]}
    wanted: dict[str, tuple[Callable, tuple[str, str]]] = {}
    if complete >= 1 and config.search.multi_objective:
        wanted["pareto_front"] = (lambda: plots.plot_pareto_front(study, target_names=names),
                                  (f"{names[0]} ({on})", "density (fraction of weights kept)"))
        wanted["optimization_history"] = (lambda: plots.plot_optimization_history(study, **first),
                                          ("trial", f"{names[0]} ({on})"))
    elif complete >= 1:
        wanted["optimization_history"] = (lambda: plots.plot_optimization_history(study, target_name=names[0]),
                                          ("trial", f"{names[0]} ({on})"))
        wanted["intermediate_values"] = (lambda: plots.plot_intermediate_values(study),
                                         ("level", f"{names[0]} of the level ({on})"))
    if complete >= 2:
        # fANOVA explains variance whatever the direction; the default evaluator ranks for low targets only.
        options = first if config.search.multi_objective else {"target_name": names[0]}
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        wanted["param_importances"] = (lambda: plots.plot_param_importances(study, evaluator=evaluator, **options),
                                       (f"importance for {names[0]} (fANOVA)", "searched config key"))
    figures = {}
    with quiet_experimental():
        for name, (draw, labels) in wanted.items():
            try:
                axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError) as error:
                logger.warning("plot %s skipped: %s", name, error)
                continue
            axes.set_xlabel(labels[0])
            axes.set_ylabel(labels[1])
            figures[name] = axes.figure
    return figures
