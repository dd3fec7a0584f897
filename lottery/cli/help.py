"""Help text generated from the config schema, its rules and the registries, so it cannot go stale."""
from __future__ import annotations

import dataclasses
import textwrap
import types
import typing

from lottery.config import Config, known_experiments
from lottery.config.schema import CHOICES, STEP_KEYS
from lottery.config.validation import RANGES

WIDTH = 100

# What each key does, in a few words. tests/test_help.py checks that every schema key has one.
KEY_HELP = {
    "exp": "the experiment's name and folder runs/<exp>/; --exp sets it from the file's name",
    "seed": "seeds θ0, the data order and every random choice",
    "model.name": "the architecture",
    "model.init": "how θ0 is drawn",
    "model.width": "ResNet base width, the channels of the first stage; 0 = the architecture's standard",
    "model.batchnorm": "BatchNorm after each conv of a ResNet",
    "data.name": "the dataset",
    "data.path": "the .npz file of data.name=npz, or the folder of imagefolder",
    "data.root": "where dataset files are; the default is $DATA_ROOT, else ./data",
    "data.download": "fetch missing MNIST, Fashion-MNIST and CIFAR files with torchvision, md5-checked",
    "data.subset": "keep the first N training examples",
    "data.val_size": "move the last N training examples into a validation split",
    "data.augment": "random crops and flips while training; null = the dataset's standard",
    "data.test_subset": "keep the first N test examples",
    "train.steps": "training length T",
    "train.batch_size": "examples per step",
    "train.optimizer": "the optimiser",
    "train.lr": "peak learning rate",
    "train.momentum": "SGD momentum",
    "train.nesterov": "Nesterov momentum for SGD",
    "train.weight_decay": "L2 weight decay",
    "train.milestones": "steps where the step schedule multiplies the rate by train.gamma",
    "train.gamma": "the step schedule's factor at each milestone",
    "train.warmup": "linear warm-up length",
    "train.schedule": "learning-rate schedule after warm-up",
    "train.eval_every": "evaluate on the test and validation splits every this many steps",
    "train.eval_batch_size": "examples per evaluation batch",
    "train.device": "where to train; auto = cuda, then mps, then cpu",
    "train.amp": "mixed precision; auto = bf16 on CUDA devices that support it",
    "train.channels_last": "channels-last memory format for conv nets; auto = on CUDA",
    "train.cudnn_benchmark": "cuDNN autotuning; auto = on CUDA",
    "train.compile": "torch.compile the model",
    "train.progress": "progress bars; auto = when stderr is a terminal",
    "prune.fraction": "IMP prunes this fraction of the remaining weights at each level",
    "prune.scope": "rank weights across all layers (global) or within each layer (layerwise)",
    "prune.layer_rates": "per-layer IMP rates by name pattern, e.g. {output: 0.1}",
    "prune.ignore": "weights never pruned (fnmatch patterns; 'output' is the last layer)",
    "prune.include": "extra parameters to prune besides conv/linear weights (fnmatch patterns)",
    "baseline.method": "the method of `lottery prune` and of a search's run: baselines",
    "baseline.density": "the one density of a search's run: baselines",
    "baseline.rounds": "pruning rounds; null = the method's default: SynFlow 100, others 1",
    "baseline.schedule": "how density falls over the rounds",
    "baseline.samples_per_class": "examples per class in SNIP's and GraSP's pruning batch",
    "baseline.batch": "SNIP/GraSP pruning data: balanced (samples_per_class of every class, as OpenLTH and "
                      "Synaptic-Flow) or random (as many examples drawn at random, as SNIP's own code)",
    "baseline.grasp_temperature": "GraSP's logit temperature T",
    "baseline.isometry": "approximate isometry of the pruned weights before training",
    "baseline.isometry_steps": "Adam steps of the approximate isometry",
    "ticket.levels": "IMP levels after the dense level 0",
    "ticket.rewind_step": "k: every level restarts from θk, the weights after k steps",
    "ticket.checkpoint_every": "checkpoint interval within a stage, for resuming",
    "track.enabled": "log to MLflow",
    "track.uri": "MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
    "track.system_metrics_seconds": "MLflow system metrics (CPU, memory, GPU) on stage runs every N seconds; 0 = off",
    "track.log_model": "also log each ticket's last level with mlflow.pytorch.log_model",
    "track.experiment": "MLflow experiment name; null = exp",
    "search.objective": "what a trial scores",
    "search.target_density": "score the first level at or below this density (and stop there)",
    "search.pruner": "Optuna pruner that stops unpromising trials early",
    "search.multi_objective": "optimise (objective, density) as a Pareto front",
    "search.heartbeat_seconds": "a trial without a heartbeat this long is taken over by another worker",
    "search.max_retries": "how often a trial whose worker died is retried",
    "search.startup_trials": "finished trials before the median pruner prunes",
    "baseline.scope": "how scored baselines select: global (their papers'), layerwise, or prune = prune.scope",
    "baseline.fresh_weights": "train a scored baseline's mask from a new random draw, as the SNIP code does",
    "baseline.bn_mode": "BatchNorm while SNIP and GraSP score: auto = each method's reference code "
                        "(SNIP eval, GraSP train)",
    "baseline.distribution": "RigL/SET: how the initial density is spread over layers (ERK as in the RigL paper)",
    "baseline.update_every": "RigL/SET: steps between mask updates (ΔT)",
    "baseline.drop_fraction": "RigL/SET: fraction of each layer's weights dropped and regrown at the first update "
                              "(α, cosine-decayed)",
    "baseline.update_until": "RigL/SET: fraction of training after which the mask is frozen",
    "experiment.seeds": "seeds `lottery ticket` runs, each its own seed_<s> folder; empty = the one `seed`",
    "experiment.baselines.methods": "baselines run beside the ticket, at its level densities",
    "experiment.baselines.at": "baselines prune and start from θ0 (init) or θk (rewind)",
    "experiment.baselines.densities": "baseline densities; empty = the ticket's level densities, exactly",
    "experiment.evaluate.corruptions": "after training, evaluate every stage on these corrupted test sets "
                                       "(noise, blur, contrast, brightness, jpeg); empty = no robustness evaluation",
    "experiment.evaluate.severities": "corruption severities (1..5, as CIFAR-10-C)",
    "experiment.evaluate.seed": "seed of the corrupted images (the same for every stage and seed)",
    "experiment.evaluate.margin": "prune potential: accuracy points below the unpruned network still "
                                  "counted (as lottery evaluate --margin)",
    "experiment.branches": "control branches and the ticket levels they branch from, e.g. {reinit: [3, 7]}",
    "run.root": "where run directories go",
    "run.executor": "where `lottery ticket` runs its stages: local worker processes, or a Ray cluster",
    "run.workers": "local worker processes on a CPU machine (the CPU threads are split between them)",
    "run.jobs_per_device": "stages sharing one GPU (local executor with GPUs, or Ray: num_gpus = 1 / this)",
    "run.ray_address": "the Ray cluster to submit to; null = $RAY_ADDRESS, else a local Ray instance",
    "run.pack": "train up to this many ready stages of one architecture and schedule in one packed step on one "
                "device (0 = off; auto = as many as fit in free memory, per job)",
}
STEPS = "steps: 160ep, 500it, 2ep100it or a bare number of iterations"


def _type_name(kind) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return kind.__name__ if isinstance(kind, type) else str(kind)


def registry_choices() -> dict[str, str]:
    from lottery.data import dataset_names
    from lottery.models import INITIALIZERS, model_names
    from lottery.pruning.methods import METHODS

    return {"model.name": model_names(), "model.init": ", ".join(INITIALIZERS),
            "data.name": ", ".join(dataset_names()), "baseline.method": ", ".join(METHODS),
            "train.device": "auto, cpu, cuda, cuda:N, mps"}


def _key_line(dotted: str, kind, default, registries: dict[str, str]) -> str:
    """`key: type and valid values, default; what it does`."""
    kind_name = "steps" if dotted in STEP_KEYS else ("list of steps" if dotted == "train.milestones"
                                                     else _type_name(kind))
    valid = getattr(RANGES.get(dotted), "valid", None)
    text = f"{dotted}: {kind_name}" + (f" {valid}" if valid else "")
    text += ", required" if default == "???" else f", default {default!r}"
    choices = ", ".join(CHOICES[dotted]) if dotted in CHOICES else registries.get(dotted)
    if choices:
        text += f", one of {choices}"
    return text + (f" — {KEY_HELP[dotted]}" if dotted in KEY_HELP else "")


def config_reference(width: int = WIDTH) -> str:
    """Every config key by section: type, default, valid choices or range."""
    registries = registry_choices()
    lines = textwrap.wrap("config keys: override any with key=value. Defaults are the schema's; an experiment may set "
                          "others. Float keys take any form Python's float() reads, e.g. 5e-4, never inf or nan. "
                          f"{STEPS[0].upper()}{STEPS[1:]}, where 1ep is one pass over the training set.", width)
    defaults = Config()
    top_hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if section.name.startswith("_"):
            continue
        value = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(value):
            text = _key_line(section.name, top_hints[section.name], value, registries)
            lines.extend(textwrap.wrap(text, width, initial_indent="  ", subsequent_indent="      "))
            continue
        lines.append(f"  {section.name}:")
        lines += _section_lines(section.name, value, registries, width, "    ")
    return "\n".join(lines)


def _section_lines(prefix: str, node, registries: dict[str, str], width: int, indent: str) -> list[str]:
    """A section's keys, nested sections (experiment.baselines) included."""
    lines = []
    hints = typing.get_type_hints(type(node))
    for key in dataclasses.fields(node):
        value, dotted = getattr(node, key.name), f"{prefix}.{key.name}"
        if dataclasses.is_dataclass(value):
            lines += _section_lines(dotted, value, registries, width, indent)
            continue
        text = _key_line(dotted, hints[key.name], value, registries)
        lines.extend(textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + "    "))
    return lines


def experiments_line(width: int = WIDTH) -> str:
    text = f"shipped experiments (--exp NAME, or a path to a YAML file): {', '.join(known_experiments())}"
    return textwrap.fill(text, width, subsequent_indent="  ")
