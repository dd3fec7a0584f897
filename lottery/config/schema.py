"""The experiment schema: one dataclass per section, with defaults, choices and what the run hash leaves out."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

REQUIRED = "???"


@dataclass
class ModelConfig:
    name: str = REQUIRED
    init: str = "kaiming_normal"
    width: int = 0  # 0 means the architecture's standard width
    batchnorm: bool = True


@dataclass
class DataConfig:
    name: str = REQUIRED
    path: Optional[str] = None
    root: str = field(default_factory=lambda: os.environ.get("DATA_ROOT", "./data"))
    download: bool = True  # MNIST, Fashion-MNIST, CIFAR: fetch missing files with torchvision
    subset: Optional[int] = None
    val_size: int = 0
    augment: Optional[bool] = None  # None: the dataset's standard choice
    test_subset: Optional[int] = None


@dataclass
class TrainConfig:
    steps: str = "1ep"
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: list[str] = field(default_factory=list)
    gamma: float = 0.1
    warmup: str = "0it"
    schedule: str = "step"
    eval_every: str = "1ep"
    eval_batch_size: int = 1000
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    cudnn_benchmark: str = "auto"
    compile: bool = False
    progress: str = "auto"


@dataclass
class PruneConfig:
    """How IMP prunes between levels, and which weights any method may prune."""

    fraction: float = 0.2
    scope: str = "global"
    layer_rates: dict[str, float] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)


@dataclass
class BaselineConfig:
    """How baselines (pruning at initialisation) score and prune. The ticket never reads these, so they are
    not part of the run hash; a baseline stage whose settings differ from its method's defaults gets its own
    folder instead (see lottery/workflows/baselines.py)."""

    method: str = "synflow"  # the one method of `lottery prune` defaults and of a search's `run: baselines`
    density: Optional[float] = None  # the one density of a search's `run: baselines`
    rounds: Optional[int] = None  # None: the method's default (SynFlow 100, others 1)
    schedule: str = "exponential"
    samples_per_class: int = 10
    batch: str = "balanced"  # SNIP/GraSP data: balanced (samples_per_class of every class) or random (as many, drawn)
    grasp_temperature: float = 200.0
    bn_mode: str = "auto"  # BatchNorm while SNIP/GraSP score: train, eval, or auto (each method's reference)
    scope: str = "prune"  # how scored baselines select: global, layerwise, or prune (as prune.scope, IMP's)
    fresh_weights: bool = False  # train from a new random draw, not the scored weights (the SNIP code's way)
    isometry: bool = False
    isometry_steps: int = 100
    # Dynamic sparse training (rigl, set), defaults from Evci et al. 2020:
    distribution: str = "erk"  # the initial per-layer densities: erk or uniform
    update_every: str = "100it"  # ΔT: steps between mask updates
    drop_fraction: float = 0.3  # α: the share of a layer's weights exchanged at the first update (cosine decay)
    update_until: float = 0.75  # no mask update after this fraction of training


@dataclass
class TicketConfig:
    levels: int = 5
    rewind_step: str = "0it"
    checkpoint_every: str = "1ep"


@dataclass
class TrackConfig:
    enabled: bool = True
    uri: Optional[str] = None
    experiment: Optional[str] = None
    system_metrics_seconds: float = 10.0  # CPU, memory (and GPU) sampled on stage runs this often; 0: off
    log_model: bool = False  # mlflow.pytorch.log_model of each ticket's last level (masks and weights are artefacts)


@dataclass
class SearchConfig:
    objective: str = "val_accuracy"  # selects on validation; test_accuracy only by name (lottery/search/objective.py)
    target_density: Optional[float] = None
    pruner: str = "median"
    multi_objective: bool = False
    heartbeat_seconds: int = 60
    max_retries: int = 2
    startup_trials: int = 5  # finished trials before the median pruner starts pruning


@dataclass
class BaselinesPlan:
    methods: list[str] = field(default_factory=list)  # registered pruning methods; empty: no baselines
    at: str = "init"  # prune and start from θ0 (init) or from θk (rewind)
    densities: list[float] = field(default_factory=list)  # empty: the ticket's level densities, exactly


@dataclass
class EvaluatePlan:
    corruptions: list[str] = field(default_factory=list)  # empty: no robustness evaluation
    severities: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    seed: int = 0  # of the corrupted images
    margin: float = 0.5  # the prune potential's margin, in accuracy points (as lottery evaluate --margin)


@dataclass
class ExperimentConfig:
    """What `lottery ticket` runs besides the ticket itself: the seeds, the baselines and the control branches."""

    seeds: list[int] = field(default_factory=list)  # empty: the one `seed`
    baselines: BaselinesPlan = field(default_factory=BaselinesPlan)
    branches: dict[str, list[int]] = field(default_factory=dict)  # branch name -> ticket levels
    evaluate: EvaluatePlan = field(default_factory=EvaluatePlan)  # every trained stage on corrupted test sets


@dataclass
class RunConfig:
    root: str = "./runs"
    executor: str = "local"  # local: worker processes on this machine; ray: tasks on a Ray cluster
    workers: int = 1  # local executor on CPU: worker processes (CPU threads are split between them)
    jobs_per_device: int = 1  # local executor with GPUs, or Ray: stages sharing one GPU
    ray_address: Optional[str] = None  # a running Ray cluster (else $RAY_ADDRESS, else a local instance)
    pack: str = "0"  # train this many ready stages of one architecture together (0 = off; auto = what fits)


@dataclass
class Config:
    exp: str = "default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    ticket: TicketConfig = field(default_factory=TicketConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # Where each set value came from ("command line", a file's path): errors name it. Not a config key.
    _sources: dict[str, str] = field(default_factory=dict, repr=False, compare=False)


# Keys that do not change what the run directory's stages compute stay out of the run hash, so that
# e.g. adding levels or moving the data folder continues the same run.
UNHASHED_KEYS = (
    "exp", "seed", "track", "search", "run", "baseline", "experiment", "data.root", "data.download",
    "ticket.levels", "ticket.checkpoint_every", "train.device", "train.progress",
)

CHOICES = {
    "train.optimizer": ("sgd", "adam", "adamw"),
    "train.schedule": ("step", "cosine", "constant"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
    "train.channels_last": ("auto", "on", "off"),
    "train.cudnn_benchmark": ("auto", "on", "off"),
    "train.progress": ("auto", "on", "off"),
    "prune.scope": ("global", "layerwise"),
    "baseline.schedule": ("exponential", "linear"),
    "baseline.bn_mode": ("auto", "train", "eval"),
    "baseline.distribution": ("erk", "uniform"),
    "baseline.batch": ("balanced", "random"),
    "baseline.scope": ("prune", "global", "layerwise"),
    "search.objective": ("val_accuracy", "steps_to_dense", "test_accuracy"),
    "search.pruner": ("median", "hyperband", "none"),
    "experiment.baselines.at": ("init", "rewind"),
    "run.executor": ("local", "ray"),
}
STEP_KEYS = ("train.steps", "train.warmup", "train.eval_every", "ticket.rewind_step", "ticket.checkpoint_every",
             "baseline.update_every")
