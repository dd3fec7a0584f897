"""Instability analysis: linear mode connectivity across rewind steps (Frankle, Dziugaite, Roy & Carbin 2020).

For each rewind step k: take θk from the dense run (θ0 trained to k with the run's data
order), train two copies k -> T with different data orders (with --level, under that level's
mask), and evaluate the test error at evenly spaced α on the segment (1-α)θa + αθb. The
error barrier is the largest error on the path minus the mean of the two endpoint errors;
it is >= 0 by construction and about 0 when the copies are linearly mode-connected.

BatchNorm: as in the paper, interpolated networks are evaluated as they are, with the
interpolated running statistics (no re-estimation). Networks with BN can show a barrier
that re-estimated statistics would shrink.

Outputs, under <run_dir>/instability/<dense|level_NN>/: k_<iterations>/{copy_a.pt, copy_b.pt,
curve.json}, curves.json, results.json, results.md, barrier_vs_rewind.png, error_vs_alpha.png.
θk snapshots are shared in <run_dir>/instability/rewind/. Every file is written atomically
and reused by a rerun.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from lottery.config import Config, ConfigError
from lottery.errors import NotFoundError
from lottery.pruning.mask import Mask
from lottery.report.figures import new_figure, png_bytes
from lottery.report.tables import format_table
from lottery.run import distributed
from lottery.run.context import RunContext, open_run
from lottery.run.files import (atomic_torch_save, atomic_write_bytes, atomic_write_text, load_cache, read_json,
                               torch_load, write_json)
from lottery.run.layout import RunLayout
from lottery.run.stage import run_stage
from lottery.steps import StepError, parse_steps
from lottery.training.loop import TrainJob, evaluate, train
from lottery.workflows.ticket import InitStage, RewindStage

logger = logging.getLogger(__name__)

COPIES = ("a", "b")


@dataclass(frozen=True)
class InstabilityOptions:
    points: int = 30  # evaluations on the segment, endpoints included
    seeds: Optional[tuple[int, int]] = None  # data seeds of the two copies; None: (seed, seed + 1)


# -- pure pieces ---------------------------------------------------------------------------------

def parse_rewind_points(text: str, iterations_per_epoch: int, total: int) -> dict[int, str]:
    """"0,100it,2ep" -> {iterations: the step as the user wrote it}, sorted, each within [0, T]; a bare
    integer means iterations (labelled "<n>it")."""
    points: dict[int, str] = {}
    for item in (part.strip() for part in str(text).split(",")):
        if not item:
            continue
        try:
            step = int(item) if item.isdigit() else parse_steps(item, iterations_per_epoch)
        except StepError as error:
            raise ConfigError(str(error), "--rewind-steps", "command line") from None
        points.setdefault(step, f"{item}it" if item.isdigit() else item)
    if not points:
        raise ConfigError(f"no rewind steps in {text!r}; use e.g. 0,100it,500it,2ep", "--rewind-steps",
                          "command line")
    late = [label for step, label in points.items() if step > total]
    if late:
        raise ConfigError(f"rewind steps {', '.join(late)} lie beyond the end of training (train.steps = "
                          f"{total} iterations)", "--rewind-steps", "command line")
    return dict(sorted(points.items()))


def parse_rewind_steps(text: str, iterations_per_epoch: int, total: int) -> list[int]:
    """The iterations of parse_rewind_points, sorted."""
    return list(parse_rewind_points(text, iterations_per_epoch, total))


def interpolate(state_a: dict, state_b: dict, alpha: float) -> dict:
    """(1-α)θa + αθb for floating tensors; integer buffers (BN batch counters) come from θa."""
    if state_a.keys() != state_b.keys():
        raise ValueError("the two networks have different parameters; cannot interpolate")
    return {name: torch.lerp(a, state_b[name], alpha) if a.is_floating_point() else a.clone()
            for name, a in state_a.items()}


def error_barrier(errors) -> float:
    """max error on the path minus the mean of the endpoint errors."""
    errors = list(errors)
    return float(max(errors) - (errors[0] + errors[-1]) / 2)


def error_curve(model, state_a: dict, state_b: dict, dataset, train_cfg, points: int = 30) -> dict:
    """Test error and loss at `points` evenly spaced α in [0, 1] on the segment from θa to θb."""
    from lottery.training.device import resolve_fast_path

    if points < 2:
        raise ValueError(f"need at least 2 points on the path, got {points}")
    fast = resolve_fast_path(train_cfg, model)
    model.to(fast.device)
    alphas = np.linspace(0.0, 1.0, points).tolist()
    errors, losses = [], []
    for alpha in alphas:
        model.load_state_dict(interpolate(state_a, state_b, alpha))
        loss, accuracy = evaluate(model, dataset.eval_batches("test", train_cfg.eval_batch_size), fast)
        errors.append(1.0 - accuracy)
        losses.append(loss)
    return {"alphas": alphas, "test_error": errors, "test_loss": losses, "barrier": error_barrier(errors),
            "endpoint_errors": [errors[0], errors[-1]]}


# -- the run -------------------------------------------------------------------------------------

def run_instability(config: Config, rewind_steps: str, level: Optional[int] = None,
                    options: InstabilityOptions = InstabilityOptions(),
                    command: str = "lottery instability") -> list[dict]:
    """Analyse every rewind step; return one row per step (curve included)."""
    from lottery.run.context import step_plan
    from lottery.workflows.preflight import check_config

    if distributed.rank_and_world()[1] > 1:
        raise ConfigError("lottery instability runs in a single process; start it without torchrun")
    dataset = check_config(config)  # everything is checked before anything is written
    plan = step_plan(config, dataset)
    labels = parse_rewind_points(rewind_steps, plan.iterations_per_epoch, plan.total)
    layout = RunLayout.of(config)
    mask = _level_mask(layout, level)
    with open_run(config, command, dataset, stages=(InitStage(), RewindStage())) as run:
        run_stage(run, InitStage())
        model = run.new_model()
        if mask is not None:
            mask.check_fits(model)
        if _has_batchnorm(model):
            logger.warning("the model has BatchNorm: interpolated networks are evaluated with interpolated "
                           "running statistics, as in Frankle et al. 2020 (no re-estimation)")
        rewinds = rewind_states(run, model, list(labels))
        seeds = options.seeds or (config.seed, config.seed + 1)
        out_dir = layout.instability_dir(level)
        rows = [_analyse(run, model, rewinds[k], k, label, mask, level, seeds, options, out_dir)
                for k, label in labels.items()]
        _write_outputs(out_dir, rows, run.parent)
    return rows


def _level_mask(layout: RunLayout, level: Optional[int]) -> Optional[Mask]:
    if level is None:
        return None
    path = layout.level_dir(level) / "mask.pt"
    if not path.is_file():
        raise NotFoundError(f"--level {level}: {path} does not exist; run `lottery ticket` with the same "
                            f"config (and at least {level} levels) first")
    return Mask.load(path)


def _has_batchnorm(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def rewind_states(run: RunContext, model, steps: list[int]) -> dict[int, dict]:
    """θk for every k: θ0 for 0, the ticket's rewind.pt when k is its rewind step, a cached
    snapshot, or else one dense run from θ0 to the largest missing k that snapshots each k.

    Stopping a run at k and snapshotting a longer run at k give the same weights: the data
    order, the LR schedule and the optimizer depend only on the step.
    """
    theta0 = run.theta0()
    ticket_step = run.plan.steps(run.config.ticket.rewind_step)
    cache = run.layout.instability_rewinds
    states, missing = {}, []
    for step in steps:
        path = cache / f"step_{step:07d}.pt"
        if step == 0:
            states[step] = theta0
        elif step == ticket_step and RewindStage().done(run.layout):
            states[step] = torch_load(run.layout.rewind_file, what="θk file")
        elif (cached := load_cache(path, "rewind snapshot")) is not None:
            states[step] = cached
        else:
            missing.append(step)
    if missing:
        def snapshot(step: int) -> None:
            if step in missing:
                states[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                atomic_torch_save(cache / f"step_{step:07d}.pt", states[step])

        model.load_state_dict(theta0)
        logger.info("training θ0 densely to %d iterations for rewind snapshots at %s", max(missing), missing)
        train(TrainJob(model=model, dataset=run.dataset, train_cfg=run.config.train, seed=run.config.seed,
                       start_step=0, end_step=max(missing), hooks=(snapshot,), desc="instability rewind"))
    return states


def _analyse(run: RunContext, model, rewind: dict, step: int, label: str, mask, level, seeds, options,
             out_dir: Path) -> dict:
    step_dir = out_dir / f"k_{step:07d}"
    if (step_dir / "curve.json").exists():
        return read_json(step_dir / "curve.json", "instability curve")
    config, started = run.config, time.perf_counter()
    handle = run.tracker.child(f"instability/{out_dir.name}/k_{step}", f"instability {out_dir.name} k={label}",
                           {"rewind_step": step, "rewind": label, "level": level, "seed_a": seeds[0],
                            "seed_b": seeds[1], "density": mask.density() if mask is not None else 1.0})
    finals = [_train_copy(run, model, rewind, step, mask, seed, name, step_dir, handle)
              for name, seed in zip(COPIES, seeds)]
    curve = error_curve(model, finals[0], finals[1], run.dataset, config.train, options.points)
    row = {"rewind_step": step, "rewind": label, "level": level,
           "density": mask.density() if mask is not None else 1.0, "seeds": list(seeds), **curve,
           "wall_seconds": time.perf_counter() - started}
    write_json(step_dir / "curve.json", row)
    for index, (alpha, error, loss) in enumerate(zip(row["alphas"], row["test_error"], row["test_loss"])):
        handle.log_metrics({"path_test_error": error, "path_test_loss": loss, "path_alpha": alpha}, step=index)
    handle.log_metrics({"barrier": row["barrier"], "endpoint_error_a": curve["endpoint_errors"][0],
                        "endpoint_error_b": curve["endpoint_errors"][1]})
    handle.log_figure(curves_figure([row]), "error_vs_alpha.png")
    handle.finish()
    logger.info("rewind %s: barrier %.4f (endpoint errors %.4f, %.4f)", label, row["barrier"],
                *curve["endpoint_errors"])
    return row


def _train_copy(run: RunContext, model, rewind: dict, step: int, mask, seed: int, name: str, step_dir: Path,
                handle) -> dict:
    path = step_dir / f"copy_{name}.pt"
    if (cached := load_cache(path, "instability copy")) is not None:
        return cached
    config = run.config

    def on_eval(at: int, record: dict) -> None:
        handle.log_metrics({f"copy_{name}_{key}": value for key, value in record.items()
                            if key != "step" and value is not None}, step=at)

    model.load_state_dict(rewind)
    train(TrainJob(model=model, dataset=run.dataset, train_cfg=config.train, seed=seed, start_step=step,
                   end_step=run.plan.total, mask=mask, checkpoint_path=step_dir / "checkpoint.pt",
                   checkpoint_every=run.plan.steps(config.ticket.checkpoint_every),
                   checkpoint_tag=f"{step_dir.parent.name}/{step_dir.name}/{name}", on_eval=on_eval,
                   desc=f"instability k={step} copy {name}"))
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save(path, state)
    (step_dir / "checkpoint.pt").unlink(missing_ok=True)
    return state


# -- reports -------------------------------------------------------------------------------------

TABLE_COLUMNS = ("rewind", "rewind_step", "density", "barrier", "endpoint_errors", "max_error")


def results_table(rows: list[dict]) -> list[dict]:
    return [{"rewind": r["rewind"], "rewind_step": r["rewind_step"], "level": r["level"], "density": r["density"],
             "barrier": r["barrier"], "endpoint_errors": r["endpoint_errors"], "max_error": max(r["test_error"]),
             "seeds": r["seeds"]} for r in rows]


def format_markdown(rows: list[dict]) -> str:
    headers = ["rewind", "iteration", "density", "error barrier", "endpoint errors", "max error on path"]
    cells = [[row["rewind"], str(row["rewind_step"]), f"{row['density']:.4f}", f"{row['barrier']:.4f}",
              "{:.4f}, {:.4f}".format(*row["endpoint_errors"]), f"{row['max_error']:.4f}"]
             for row in results_table(rows)]
    return format_table(headers, cells, markdown=True) + "\n"


def barrier_figure(rows: list[dict]):
    """Error barrier against the rewind step (symlog x, so k = 0 shows), every k ticked in the unit it was given."""
    figure, axes = new_figure(6.5, 4.2)
    steps = [row["rewind_step"] for row in rows]
    axes.plot(steps, [row["barrier"] for row in rows], marker="o")
    axes.set_xscale("symlog", linthresh=max(1, min([s for s in steps if s > 0], default=1)))
    axes.set_xticks(steps, [row["rewind"] for row in rows], rotation=45 if len(steps) > 5 else 0)
    axes.minorticks_off()
    axes.set_xlabel("rewind step k")
    axes.set_ylabel("test error barrier")
    axes.set_title("instability: error barrier vs rewind step")
    axes.grid(True, alpha=0.3)
    return figure


def curves_figure(rows: list[dict]):
    """Test error along the path, one line per rewind step."""
    figure, axes = new_figure(6.5, 4.2)
    for row in rows:
        axes.plot(row["alphas"], row["test_error"], marker=".", label=f"k = {row['rewind']}")
    axes.set_xlabel("α  ((1-α) θa + α θb)")
    axes.set_ylabel("test error")
    axes.set_title("test error on the linear path between the two copies")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def _write_outputs(out_dir: Path, rows: list[dict], parent) -> None:
    write_json(out_dir / "curves.json", {"curves": rows})
    write_json(out_dir / "results.json", {"rows": results_table(rows)})
    atomic_write_text(out_dir / "results.md", format_markdown(rows))
    for name, figure in (("barrier_vs_rewind.png", barrier_figure(rows)), ("error_vs_alpha.png", curves_figure(rows))):
        atomic_write_bytes(out_dir / name, png_bytes(figure))
        parent.log_figure(figure, f"instability/{out_dir.name}/{name}")
    for name in ("curves.json", "results.json", "results.md"):
        parent.log_artifact(out_dir / name, f"instability/{out_dir.name}")
