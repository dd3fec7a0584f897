"""Optuna search over config keys, where each trial is a whole lottery run (optuna is imported only in lottery/search).

- Storage: any SQLAlchemy URL (default sqlite:///optuna.db). Every `lottery search` process on the
  same study is a worker; together they finish exactly `--trials` trials (COMPLETE + PRUNED).
- Heartbeat: a running trial records a heartbeat every search.heartbeat_seconds. A worker that
  finds a trial silent for twice that marks it FAIL and queues a retry with the same params
  (RetryHeartbeatStaleTrialCallback, at most search.max_retries times). Run directories are
  named by config, so the retry resumes the killed trial's run from its last checkpoint.
- A trial that raises is recorded FAIL and the worker goes on (after FAILURE_LIMIT failures in a row it stops).
- Ctrl-C re-queues the interrupted trial's params, so the next `lottery search` resumes it.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from lottery.config import Config, ConfigError, config_hash, set_dotted
from lottery.errors import LotteryError
from lottery.run.layout import RunLayout
from lottery.search.objective import (check_selection, directions, is_last_level, objective_names, reaches_target,
                                      row_value, scored_row, selection, trial_values, uses_target)
from lottery.search.request import Runner, SearchOutcome, SearchRequest, baselines_runner, ticket_runner
from lottery.search.results import quiet_experimental, save_results, study_counts
from lottery.search.space import Param, sample
from lottery.search.storage import engine_settings, open_search_tracking, redacted, trial_note, worker_id

logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STORAGE_ATTEMPTS = 5
FAILURE_LIMIT = 5
STUDY_SETTINGS = ("objective", "target_density", "multi_objective")


class SearchError(LotteryError):
    """The study cannot be opened or keeps failing."""


class _TargetReached(Exception):
    """Raised from a level callback: the scored level is done, so later levels are not trained."""


class _SurplusTrial(Exception):
    """Another worker's trial already fills the last slot of the study."""


def open_storage(url: str, config: Config) -> RDBStorage:
    """RDBStorage with heartbeat and retry of stale trials. Retries briefly: workers may race to create tables."""
    url, engine = engine_settings(url)
    for attempt in range(1, STORAGE_ATTEMPTS):
        try:
            return _rdb_storage(url, engine, config)
        except (sqlalchemy.exc.NoSuchModuleError, ImportError) as error:
            raise ConfigError(f"no database driver for {redacted(url)} ({error}); for PostgreSQL install "
                              "psycopg2-binary or psycopg", "--storage") from None
        except sqlalchemy.exc.SQLAlchemyError as error:
            logger.info("storage %s not ready (%s); retrying", redacted(url), type(error).__name__)
            time.sleep(0.5 * attempt)
    try:
        return _rdb_storage(url, engine, config)
    except sqlalchemy.exc.SQLAlchemyError as error:
        raise SearchError(f"cannot open Optuna storage {redacted(url)}: {error}") from None


def _rdb_storage(url: str, engine: dict, config: Config) -> RDBStorage:
    heartbeat = config.search.heartbeat_seconds
    with quiet_experimental():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=config.search.max_retries)
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                          heartbeat_stale_trial_callback=retry)


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    if config.search.multi_objective:
        return optuna.pruners.NopPruner()
    if config.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.search.startup_trials, n_warmup_steps=0)
    if config.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(request: SearchRequest, storage: RDBStorage) -> optuna.Study:
    """Create the study or join it (load_if_exists), refusing one made for another objective."""
    config = request.config
    study = optuna.create_study(storage=storage, study_name=request.name, directions=directions(config),
                                pruner=make_pruner(config), load_if_exists=True)
    wanted = [d.name.lower() for d in study.directions]
    if wanted != directions(config):
        raise ConfigError(f"study {request.name!r} optimises {wanted}, but this config asks for "
                          f"{directions(config)}; use another --study", "search.multi_objective")
    settings = {name: getattr(config.search, name) for name in STUDY_SETTINGS}
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
        study.set_user_attr("space", str(request.space.path))
        study.set_user_attr("selection", selection(config))  # "test_set" marks a study that selects on test
    elif stored != settings:
        changed = next(name for name in STUDY_SETTINGS if stored.get(name) != settings[name])
        raise ConfigError(f"study {request.name!r} was created with search.{changed}={stored.get(changed)!r}, "
                          f"not {settings[changed]!r}; use another --study", f"search.{changed}")
    return study


def suggest(trial: optuna.Trial, param: Param):
    if param.kind == "int":
        return trial.suggest_int(param.key, param.low, param.high, step=param.step or 1, log=param.log)
    if param.kind == "float":
        return trial.suggest_float(param.key, param.low, param.high, step=param.step, log=param.log)
    return trial.suggest_categorical(param.key, list(param.choices))


def fail_stale_trials(study: optuna.Study) -> None:
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)


class TrialObjective:
    """One trial: sample a config, run it, report each level, return the objective value(s)."""

    def __init__(self, request: SearchRequest, runner: Runner, tracker):
        self.request, self.runner, self.tracker = request, runner, tracker
        self.config = request.config
        self.names = objective_names(self.config)
        self.current: Optional[optuna.Trial] = None
        self.failures_in_a_row = 0
        self.last_error: Optional[str] = None

    def __call__(self, trial: optuna.Trial):
        self._check_slot(trial)
        self.current = trial
        config, values = sample(self.request.space, self.config, lambda param: suggest(trial, param))
        # The trial's run directory is tracked like a plain run, nested under the trial's run (if the search tracks).
        set_dotted(config, "track.enabled", bool(self.tracker.enabled and not self.tracker.degraded))
        run_dir = RunLayout.of(config).run_dir
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("worker", worker_id())
        logger.info("trial %d: %s -> %s", trial.number, values, run_dir)
        handle = self.tracker.child(f"trial_{trial.number}", f"trial {trial.number}",
                                    {**values, "kind": "trial", "trial": trial.number, "run_dir": str(run_dir)})
        # The tracker tags children with the search config's hash; a trial's is its own config's.
        handle.set_tags({"kind": "trial", "optuna_study": self.request.name, "optuna_trial": str(trial.number),
                         "selection": selection(self.config), "config_hash": config_hash(config),
                         "mlflow.note.content": trial_note(self.request.name, trial.number, values, run_dir)})
        rows: list[dict] = []
        try:
            try:
                self.runner.run(config, lambda row: self._on_row(trial, config, rows, row, handle),
                                self._nesting(config, handle))
            except _TargetReached:
                pass
            result = self._values(config, rows)
        except optuna.TrialPruned:
            self._finish(handle, "PRUNED", "KILLED")
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
            self._finish(handle, "FAIL", "FAILED")
            raise
        # Own keys: the per-level series of the same names already has a point at every level, step 0 included.
        last = int(rows[-1].get("level") or 0) if rows else 0
        handle.log_metrics({f"objective/{name}": value for name, value in zip(self.names, result)}, step=last)
        self._finish(handle, "COMPLETE", "FINISHED")
        return result if self.config.search.multi_objective else result[0]

    def _nesting(self, config: Config, handle) -> dict:
        """The run directory's parent-run tags: nested under the trial's run, whose id needs a flush to be known."""
        if not config.track.enabled:
            return {}
        self.tracker.flush()
        return {"mlflow.parentRunId": handle.run_id} if handle.run_id else {}

    def _check_slot(self, trial: optuna.Trial) -> None:
        """Exactly `--trials` finished trials: a trial is surplus if finished ones plus older running ones fill them."""
        others = trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
        done = sum(1 for other in others if other.state in FINISHED)
        ahead = sum(1 for other in others if other.state == TrialState.RUNNING and other.number < trial.number)
        if done + ahead >= self.request.trials:
            trial.set_user_attr("surplus", True)
            raise _SurplusTrial(f"the study already has {done} finished and {ahead} running trial(s) "
                                f"for {self.request.trials} requested")

    def _on_row(self, trial: optuna.Trial, config: Config, rows: list[dict], row: dict, handle) -> None:
        rows.append(row)
        trial.set_user_attr("stages", [done["stage"] for done in rows])  # its stages in the shared run directory
        dense = rows[0] if rows[0].get("level") == 0 else None
        value = row_value(config, row, dense, lambda r: self.runner.history(config, r))
        step = int(row.get("level") or 0)
        # Test accuracy is reported for every trial; max_test_acc (the maximum over evaluations) is optimistic.
        metrics = {self.names[0]: value, "density": row["density"], "final_test_acc": row["final_test_acc"],
                   "max_test_acc": row["best_test_acc"]}
        if row.get("final_val_acc") is not None:
            metrics["final_val_acc"] = row["final_val_acc"]
        handle.log_metrics(metrics, step=step)
        trial.set_user_attr(f"level_{step:02d}", metrics)
        last = is_last_level(config, row, self.request.space.runner)
        scored = reaches_target(config, row)
        if not config.search.multi_objective:  # Optuna cannot prune (or take reports from) multi-objective trials
            trial.report(value, step)
            if not (last or scored) and trial.should_prune():
                raise optuna.TrialPruned(f"level {step}: {self.names[0]} {value:.4g} is below the pruner's bar")
        if scored and not last:
            raise _TargetReached()

    def _values(self, config: Config, rows: list[dict]) -> list[float]:
        if uses_target(config) and rows and scored_row(config, rows) is None:
            raise optuna.TrialPruned(f"never reached search.target_density={config.search.target_density}: the "
                                     f"last level has density {rows[-1]['density']:.4g}; add levels or prune more")
        return trial_values(config, rows, lambda row: self.runner.history(config, row))

    def _finish(self, handle, state: str, status: str) -> None:
        self.current = None
        handle.set_tags({"state": state})
        handle.finish(status)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """optimize() callback: count failures in a row so a broken setup stops instead of spinning."""
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            self.failures_in_a_row += 1
            self.last_error = trial.user_attrs.get("error", "see the log above")
        elif trial.state in FINISHED:
            self.failures_in_a_row = 0

    def requeue_interrupted(self, study: optuna.Study) -> None:
        """After Ctrl-C: queue the interrupted trial's params so the next worker resumes its run directory."""
        if self.current is None:
            return
        study.enqueue_trial(dict(self.current.params), user_attrs={"resumes_trial": self.current.number})
        logger.info("trial %d interrupted; its params are queued, so the next `lottery search` on study %r "
                    "resumes it", self.current.number, self.request.name)


def work(study: optuna.Study, objective: TrialObjective, trials: int, poll_seconds: float) -> None:
    """Run trials until the study holds `trials` finished ones, waiting while other workers fill the rest."""
    waiting_logged = False
    while True:
        fail_stale_trials(study)
        counts = study_counts(study)
        done = counts["COMPLETE"] + counts["PRUNED"]
        if done >= trials:
            return
        if done + counts["RUNNING"] >= trials:
            if not waiting_logged:
                logger.info("%d finished, %d running elsewhere: waiting for them", done, counts["RUNNING"])
                waiting_logged = True
            time.sleep(poll_seconds)
            continue
        waiting_logged = False
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[objective.after_trial],
                       gc_after_trial=True)
        if objective.failures_in_a_row >= FAILURE_LIMIT:
            raise SearchError(f"{FAILURE_LIMIT} trials in a row failed on this worker; last: {objective.last_error}")


def run_search(request: SearchRequest, runner: Optional[Runner] = None) -> SearchOutcome:
    """Join (or create) the study, work until it holds `request.trials` finished trials, save the results."""
    if request.trials < 1:
        raise ConfigError(f"must be at least 1, got {request.trials}", "--trials")
    config = request.config
    check_selection(config)
    if selection(config) == "test_set":
        logger.warning("search.objective=%s selects on the test set: the best trial's test accuracy is optimistic, "
                       "and the study and its runs are tagged selection=test_set", config.search.objective)
    if runner is None:
        make_runner = ticket_runner if request.space.runner == "ticket" else baselines_runner
        runner = make_runner(request.command)
    if config.search.multi_objective:
        logger.info("multi-objective search (%s): Optuna cannot prune multi-objective studies, so "
                    "search.pruner=%s is not used and every trial runs all its levels",
                    " vs ".join(objective_names(config)), config.search.pruner)
    elif config.search.target_density is not None:
        logger.info("scoring each trial at its first level with density <= %g", config.search.target_density)
    storage = open_storage(request.storage, config)
    study = open_study(request, storage)
    logger.info("study %r in %s: %d trial(s) wanted; this worker is %s", request.name, redacted(request.storage),
                request.trials, worker_id())
    tracker, parent = open_search_tracking(request)
    objective = TrialObjective(request, runner, tracker)
    status = "FAILED"
    try:
        try:
            work(study, objective, request.trials, poll_seconds=min(5.0, config.search.heartbeat_seconds))
        except KeyboardInterrupt:
            status = "KILLED"
            objective.requeue_interrupted(study)
            raise
        outcome = save_results(study, request, parent)
        status = "FINISHED"
        return outcome
    finally:
        tracker.close(status)
