"""`lottery evaluate RUN_DIR`: every finished stage of a run on clean and corrupted test sets.

Pruned networks can match test accuracy and still fall behind on shifted data (Liebenwein et al. 2021,
"Lost in Pruning"). Each finished stage (levels, the dense run, branches, baselines) is loaded from its
final.pt and evaluated on the clean test set and on each corruption × severity (lottery/data/corruptions.py,
generated from --seed, by default 0, so every seed and every stage of an experiment sees the same images).

Per stage, `evaluate_stage` writes <stage>/robustness.json atomically: the loss and accuracy, clean and per
corruption and severity. A stage already evaluated with the same seed is not evaluated again; asking for
more corruptions or severities adds only the missing cells. A stage folder that is trained again loses its
file with the folder. Per run, <run_dir>/robustness/ gets robustness.json (per series and density, with the
prune potential at --margin points, lottery/report/robustness.py) and robustness.png; both go to the seed's
MLflow parent run when tracking is on, and each stage's accuracies to its child run.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from torch import nn

from lottery.config import ConfigError, config_hash, flatten
from lottery.data.corruptions import CORRUPTIONS, SEVERITIES, CorruptedTestSets
from lottery.errors import CorruptFileError, LotteryError, NotFoundError
from lottery.report.robustness import robustness_table, summarize
from lottery.run.context import RunContext, load_data, read_config, step_plan
from lottery.run.files import read_json, torch_load, write_json
from lottery.run.layout import BASELINE, RunLayout, StageRef
from lottery.run.stage import Stage, TrainingStage, finished_row
from lottery.training.device import prepare_model, resolve_fast_path
from lottery.training.loop import evaluate

logger = logging.getLogger(__name__)

RESULT_FILE = "robustness.json"
SUMMARY_FOLDER = "robustness"
FORMAT = 1


class StageSkipped(LotteryError):
    """A stage whose network cannot be rebuilt for evaluation; the message says why."""


@dataclass(frozen=True)
class RobustnessSpec:
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0  # of the corrupted images, not of training
    margin: float = 0.005  # accuracy (0.5 points) for the prune potential


def parse_corruptions(text: Optional[str]) -> tuple[str, ...]:
    if text is None:
        return CORRUPTIONS
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in CORRUPTIONS]
    if not names or unknown:
        raise ConfigError(f"expected names from {', '.join(CORRUPTIONS)}, got {text!r}", "--corruptions",
                          "command line")
    return names


def parse_severities(text: Optional[str]) -> tuple[int, ...]:
    """"1-5", "1,3,5" or "3"; severities 1..5 (severity 0, the clean set, is always evaluated)."""
    if text is None:
        return SEVERITIES
    values: list[int] = []
    for part in (item.strip() for item in text.split(",") if item.strip()):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise ConfigError(f"expected severities like 1-5 or 1,3,5, got {text!r}", "--severities", "command line")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        values += range(low, high + 1)
    if not values or any(value not in SEVERITIES for value in values):
        raise ConfigError(f"severities must lie in {SEVERITIES[0]}..{SEVERITIES[-1]}, got {text!r}", "--severities",
                          "command line")
    return tuple(sorted(set(values)))


def stage_network(run: RunContext, ref: StageRef, row: dict) -> nn.Module:
    """The stage's trained network: its architecture (a structured baseline's smaller one, rebuilt as it was
    trained) with final.pt loaded."""
    from lottery.pruning.methods import METHODS
    from lottery.workflows.baselines import baseline_stage

    directory = run.layout.directory(ref)
    method = row.get("method")
    if ref.kind == BASELINE and METHODS.get(method) is not None and METHODS[method].structured:
        model = baseline_stage(run.config, method, ref.density, ref.at).build(run)
    elif ref.kind == BASELINE and method not in METHODS:
        raise StageSkipped(f"{ref.key}: method {method!r} is not registered, so its network cannot be rebuilt")
    else:
        model = run.new_model()
    try:
        model.load_state_dict(torch_load(directory / "final.pt", what="final weights"))
    except RuntimeError as error:
        raise StageSkipped(f"{ref.key}: final.pt does not fit the network rebuilt from the config ({error})") from None
    return model


def _stored(path: Path, ref: StageRef, spec: RobustnessSpec) -> Optional[dict]:
    """A previous result for the same stage and corruption seed, or None."""
    if not path.is_file():
        return None
    try:
        result = read_json(path, "robustness record")
    except CorruptFileError as error:
        logger.warning("%s; evaluating %s again", error, ref.key)
        return None
    if result.get("format") != FORMAT or result.get("seed") != spec.seed or result.get("stage") != ref.key:
        return None
    return result


def evaluate_stage(run: RunContext, ref: StageRef, spec: RobustnessSpec,
                   sets: Optional[CorruptedTestSets] = None) -> dict:
    """Clean and corrupted accuracy of one finished stage, written to <stage>/robustness.json (see the module
    docstring); returns the stored result. StageSkipped when its network cannot be rebuilt."""
    directory = run.layout.directory(ref)
    path = directory / RESULT_FILE
    wanted = [(name, severity) for name in spec.corruptions for severity in spec.severities]
    result = _stored(path, ref, spec)
    missing = [(name, severity) for name, severity in wanted
               if result is None or str(severity) not in result["corruptions"].get(name, {})]
    if result is not None and not missing:
        return result
    row = finished_row(directory)
    if row is None:
        raise NotFoundError(f"{directory} is not a finished stage (no DONE)")
    model = stage_network(run, ref, row)
    fast = replace(resolve_fast_path(run.config.train, model, run.dataset.device), compile=False)
    net = prepare_model(model, fast)
    sets = sets if sets is not None else CorruptedTestSets(run.dataset, spec.seed)

    def measure(batches) -> dict:
        loss, accuracy = evaluate(net, batches, fast)
        return {"loss": loss, "acc": accuracy}

    if result is None:
        result = {"format": FORMAT, "stage": ref.key, "series": ref.series, "density": row["density"],
                  "seed": spec.seed, "device": str(fast.device), "clean": measure(sets.clean()), "corruptions": {}}
    for name, severity in missing:
        result["corruptions"].setdefault(name, {})[str(severity)] = measure(sets.batches(name, severity))
    write_json(path, result)
    handle = run.tracker.child(ref.key, ref.run_name, {})
    handle.log_metrics({"robustness/clean/acc": result["clean"]["acc"],
                        **{f"robustness/{name}/{severity}/acc": cell["acc"]
                           for name, cells in result["corruptions"].items() for severity, cell in cells.items()}})
    handle.finish()
    logger.info("%s: clean %.4f, %d corrupted sets", ref.key, result["clean"]["acc"], len(wanted))
    return result


def summary_files(run_dir) -> dict[str, Path]:
    folder = Path(run_dir) / SUMMARY_FOLDER
    return {"json": folder / "robustness.json", "figure": folder / "robustness.png"}


def write_summary(run: RunContext, results: list[dict], spec: RobustnessSpec) -> dict:
    """robustness.json and robustness.png under <run_dir>/robustness/, and both to the MLflow parent run."""
    from lottery.report.figures import robustness_figure

    summary = summarize(results, list(spec.corruptions), list(spec.severities), spec.margin)
    summary["seed"] = spec.seed
    files = summary_files(run.run_dir)
    write_json(files["json"], summary)
    figure = robustness_figure(summary)
    files["figure"].parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(files["figure"], dpi=110)
    run.parent.log_artifact(files["json"], SUMMARY_FOLDER)
    run.parent.log_figure(figure, f"figures/{files['figure'].name}")
    run.parent.log_metrics({_metric_name(f"prune_potential/{label}/{condition}"): entry["prune_potential"]
                            for label, values in summary["prune_potential"].items()
                            for condition, entry in values.items()})
    return summary


def _metric_name(text: str) -> str:
    """MLflow allows letters, digits, _ - . space : and /."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text)


@contextmanager
def open_run_directory(run_dir, command: str, overrides: list[str] | tuple = ()):
    """A RunContext for an existing run directory (its config.yaml, its layout; tracking re-attaches to its
    MLflow runs). Overrides may only change keys outside the run hash (data.root, train.device, track.*)."""
    from lottery.config import COMMAND_LINE, parse_override, set_dotted
    from lottery.tracking.base import run_tags
    from lottery.tracking.client import make_tracker

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotFoundError(f"run directory {run_dir} not found")
    config = read_config(run_dir)
    before = config_hash(config)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, COMMAND_LINE)
        if config_hash(config) != before:
            raise ConfigError("changes what the run directory's stages computed; only keys outside the run hash "
                              "(data.root, train.device, track.*, ...) may be overridden", key, COMMAND_LINE)
    dataset = load_data(config)
    tracker = make_tracker(config, run_dir, command=command)
    parent = tracker.parent(config.exp, run_tags(config, command), flatten(config))
    run = RunContext(config, RunLayout.at(run_dir), dataset, step_plan(config, dataset), tracker, parent, command)
    try:
        yield run
    finally:
        tracker.close("FINISHED")  # the training it records is complete whatever happens here


@dataclass
class Evaluation:
    summary: dict
    table: str
    files: dict[str, Path]
    skipped: list[str]


def run_evaluation(run_dir, spec: RobustnessSpec = RobustnessSpec(), command: str = "lottery evaluate",
                   overrides: list[str] | tuple = ()) -> Evaluation:
    """Evaluate every finished stage of `run_dir` (resuming: evaluated stages are read back) and summarise."""
    from lottery.run.distributed import rank_and_world

    if rank_and_world()[1] > 1:
        raise LotteryError("lottery evaluate runs in one process: start it without torchrun")
    with open_run_directory(run_dir, command, overrides) as run:
        stages = run.layout.stage_dirs()
        if not stages:
            raise NotFoundError(f"{run_dir}: no finished stage to evaluate")
        sets = CorruptedTestSets(run.dataset, spec.seed)
        results, skipped = [], []
        for ref, _ in stages:
            try:
                results.append(evaluate_stage(run, ref, spec, sets))
            except StageSkipped as error:
                logger.warning("skipped %s", error)
                skipped.append(ref.key)
        summary = write_summary(run, results, spec)
    return Evaluation(summary, robustness_table(summary), summary_files(run_dir), skipped)


_SETS: dict = {}  # (dataset, seed) -> CorruptedTestSets, shared by the evaluation stages of one process


@dataclass(frozen=True)
class EvaluateStage(Stage):
    """One trained stage on the corrupted test sets, after it trained (an experiment's `experiment.evaluate`)."""

    target: Stage
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0

    @property
    def spec(self) -> RobustnessSpec:
        return RobustnessSpec(self.corruptions, self.severities, self.seed)

    @property
    def name(self) -> str:
        return f"evaluate/{self.target.name}"

    @property
    def kind(self) -> str:
        return "evaluate"

    def needs(self, config) -> tuple[Stage, ...]:
        return (self.target,)

    def lock_path(self, layout: RunLayout) -> Path:
        return layout.directory(self.target.ref) / ".evaluate.lock"

    def log_file(self, layout: RunLayout) -> Path:
        return layout.directory(self.target.ref) / "evaluate.log"

    def done(self, layout: RunLayout) -> bool:
        result = _stored(layout.directory(self.target.ref) / RESULT_FILE, self.target.ref, self.spec)
        return result is not None and all(str(severity) in result["corruptions"].get(name, {})
                                          for name in self.corruptions for severity in self.severities)

    def check_record(self, layout: RunLayout) -> bool:
        return self.done(layout)

    def execute(self, run: RunContext) -> None:
        key = (id(run.dataset), self.seed)
        if key not in _SETS:
            _SETS[key] = CorruptedTestSets(run.dataset, self.seed)
        try:
            evaluate_stage(run, self.target.ref, self.spec, _SETS[key])
        except StageSkipped as error:
            logger.warning("not evaluated: %s", error)


def evaluation_stages(config, stages) -> list[EvaluateStage]:
    """An evaluation stage after every trained stage, when experiment.evaluate names corruptions."""
    plan = config.experiment.evaluate
    if not plan.corruptions:
        return []
    return [EvaluateStage(stage, tuple(plan.corruptions), tuple(plan.severities), plan.seed)
            for stage in stages if isinstance(stage, TrainingStage)]


def summarize_evaluations(run: RunContext) -> Optional[dict]:
    """<run_dir>/robustness/ from the stages' robustness.json files, after an experiment's evaluation stages."""
    plan = run.config.experiment.evaluate
    spec = RobustnessSpec(tuple(plan.corruptions), tuple(plan.severities), plan.seed, plan.margin / 100)
    results = [result for ref, directory in run.layout.stage_dirs()
               if (result := _stored(directory / RESULT_FILE, ref, spec)) is not None]
    return write_summary(run, results, spec) if results else None
