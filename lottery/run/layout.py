"""The run directory's one owner: every path under runs/<exp>/<hash8>/, every stage's folder, tracking key
and MLflow run name. Everything else asks this module; nothing else builds these names by hand.

    runs/<exp>/<hash8>/                       the experiment (one config, every seed)
      report/                                 the seeds aggregated
      seed_<s>/                               one seed: the record
        config.yaml  init.pt  rewind.pt  results.json  tracking.json  sync.json
        level_NN/                             IMP level N: mask.pt final.pt metrics.json DONE
        dense/                                `lottery train`
        branches/<name>/level_NN/             a control branch on level N's mask
        baselines/<at>/<method>/density_D/    a baseline at density D, from θ0 (init) or θk (rewind); dynamic
                                              sparse training adds final_mask.pt (mask.pt is where it started)
        instability/<dense|level_NN>/         linear mode connectivity
        report/                               the seed's tables and figures
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

LEVEL = "level"
DENSE = "dense"
BRANCH = "branch"
BASELINE = "baseline"
KINDS = (LEVEL, DENSE, BRANCH, BASELINE)
DONE = "DONE"
SEED_PATTERN = re.compile(r"^seed_(\d+)$")
_LEVEL_FOLDER = re.compile(r"^level_(\d+)$")
_DENSITY_FOLDER = re.compile(r"^density_(\d+\.\d+)$")


def level_folder(level: int) -> str:
    return f"level_{level:02d}"


def density_folder(density: float) -> str:
    return f"density_{density:.6f}"


@dataclass(frozen=True)
class StageRef:
    """Which trained stage: an IMP level, the dense model, a branch level or a baseline."""

    kind: str
    level: Optional[int] = None
    branch: Optional[str] = None
    method: Optional[str] = None  # a baseline's method folder: the method, plus its variant suffix if any
    density: Optional[float] = None  # a baseline's target density
    at: Optional[str] = None  # a baseline's start: init (θ0) or rewind (θk)

    @classmethod
    def for_level(cls, level: int) -> "StageRef":
        return cls(LEVEL, level=level)

    @classmethod
    def for_branch(cls, branch: str, level: int) -> "StageRef":
        return cls(BRANCH, level=level, branch=branch)

    @classmethod
    def for_baseline(cls, method: str, density: float, at: str) -> "StageRef":
        return cls(BASELINE, method=method, density=density, at=at)

    @property
    def relative(self) -> str:
        """The stage's folder under the run directory."""
        if self.kind == LEVEL:
            return level_folder(self.level)
        if self.kind == DENSE:
            return DENSE
        if self.kind == BRANCH:
            return f"branches/{self.branch}/{level_folder(self.level)}"
        return f"baselines/{self.at}/{self.method}/{density_folder(self.density)}"

    @property
    def key(self) -> str:
        """The stable tracking key (tracking.json, MLflow tag `key`)."""
        if self.kind == BRANCH:
            return f"branch/{self.branch}/{level_folder(self.level)}"
        if self.kind == BASELINE:
            return f"baseline/{self.at}/{self.method}/{density_folder(self.density)}"
        return self.relative

    @property
    def run_name(self) -> str:
        """The MLflow run name."""
        if self.kind == BASELINE:
            return f"{self.method} d={self.density:.4f}"
        if self.kind == BRANCH:
            return f"{self.branch} level {self.level}"
        return self.relative

    @property
    def series(self) -> str:
        """The line this stage belongs to in tables and figures: ticket, dense, branch <b>, <method>[@rewind]."""
        if self.kind == LEVEL:
            return "ticket"
        if self.kind == DENSE:
            return DENSE
        if self.kind == BRANCH:
            return f"branch {self.branch}"
        return self.method if self.at == "init" else f"{self.method}@{self.at}"

    @classmethod
    def from_relative(cls, relative: str) -> Optional["StageRef"]:
        """The inverse of `relative`; None for a folder that is not a stage."""
        parts = relative.strip("/").split("/")
        if len(parts) == 1 and parts[0] == DENSE:
            return cls(DENSE)
        if len(parts) == 1 and (match := _LEVEL_FOLDER.match(parts[0])):
            return cls.for_level(int(match.group(1)))
        if len(parts) == 3 and parts[0] == "branches" and (match := _LEVEL_FOLDER.match(parts[2])):
            return cls.for_branch(parts[1], int(match.group(1)))
        if len(parts) == 4 and parts[0] == "baselines" and (match := _DENSITY_FOLDER.match(parts[3])):
            return cls.for_baseline(parts[2], float(match.group(1)), parts[1])
        return None

    @classmethod
    def from_key(cls, key: str) -> Optional["StageRef"]:
        """The inverse of `key`."""
        for prefix, folder in (("branch/", "branches/"), ("baseline/", "baselines/")):
            if key.startswith(prefix):
                return cls.from_relative(folder + key[len(prefix):])
        return cls.from_relative(key)

    def order(self) -> tuple:
        """A stable order for tables: levels, dense, branches, baselines; by level or decreasing density."""
        return (KINDS.index(self.kind), self.branch or "", self.at or "", self.method or "",
                self.level if self.level is not None else -1, -(self.density or 0.0))


class RunLayout:
    """Every path of one seed's run directory (and of its experiment folder)."""

    SEED_PATTERN = SEED_PATTERN

    def __init__(self, root, exp: str, config_hash: str, seed: int):
        self.root, self.exp, self.config_hash, self.seed = Path(root), exp, config_hash, seed
        self._run_dir: Optional[Path] = None  # set by `at` for a folder not named seed_<s>

    @classmethod
    def of(cls, config) -> "RunLayout":
        from lottery.config import config_hash

        return cls(config.run.root, config.exp, config_hash(config), config.seed)

    @classmethod
    def at(cls, run_dir) -> "RunLayout":
        """The layout of an existing seed directory runs/<exp>/<hash>/seed_<s>."""
        run_dir = Path(run_dir)
        match = SEED_PATTERN.match(run_dir.name)
        seed = int(match.group(1)) if match else 0
        layout = cls(run_dir.parent.parent.parent, run_dir.parent.parent.name, run_dir.parent.name, seed)
        layout._run_dir = run_dir
        return layout

    # -- folders ------------------------------------------------------------------------------
    @property
    def experiment_dir(self) -> Path:
        return self.root / self.exp / self.config_hash

    @property
    def run_dir(self) -> Path:
        """The seed's run directory runs/<exp>/<hash8>/seed_<s>: the record."""
        return self._run_dir or self.experiment_dir / f"seed_{self.seed}"

    def for_seed(self, seed: int) -> "RunLayout":
        return RunLayout(self.root, self.exp, self.config_hash, seed)

    def seeds(self) -> list[int]:
        """Seeds with a folder under the experiment, in order."""
        if not self.experiment_dir.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.experiment_dir.iterdir() if (m := SEED_PATTERN.match(p.name)))

    def directory(self, stage: StageRef) -> Path:
        return self.run_dir / stage.relative

    def level_dir(self, level: int) -> Path:
        return self.directory(StageRef.for_level(level))

    def branch_dir(self, branch: str) -> Path:
        return self.run_dir / "branches" / branch

    def instability_dir(self, level: Optional[int]) -> Path:
        return self.run_dir / "instability" / (DENSE if level is None else level_folder(level))

    @property
    def instability_rewinds(self) -> Path:
        """Shared θk snapshots of the instability analysis."""
        return self.run_dir / "instability" / "rewind"

    @property
    def report_dir(self) -> Path:
        return self.run_dir / "report"

    @property
    def experiment_report_dir(self) -> Path:
        return self.experiment_dir / "report"

    # -- files --------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def init_file(self) -> Path:
        return self.run_dir / "init.pt"

    @property
    def rewind_file(self) -> Path:
        return self.run_dir / "rewind.pt"

    @property
    def rewind_checkpoint(self) -> Path:
        return self.run_dir / "rewind.checkpoint.pt"

    @property
    def results_file(self) -> Path:
        return self.run_dir / "results.json"

    @property
    def tracking_file(self) -> Path:
        return self.run_dir / "tracking.json"

    @property
    def sync_file(self) -> Path:
        """What `lottery sync` last uploaded where: a fingerprint per tracking URI and experiment."""
        return self.run_dir / "sync.json"

    def lock_file(self, name: str) -> Path:
        """A lock beside the files it guards (".results.lock", ".init.lock", ...)."""
        return self.run_dir / f".{name}.lock"

    @staticmethod
    def stage_files(directory: Path) -> dict[str, Path]:
        """The files one stage writes into its folder."""
        return {name: directory / name for name in ("mask.pt", "final.pt", "metrics.json", DONE, "checkpoint.pt",
                                                    "stage.log", "final_mask.pt")}

    # -- stages on disk -----------------------------------------------------------------------
    def stage_dirs(self, finished_only: bool = True) -> list[tuple[StageRef, Path]]:
        """Every stage folder under the run directory (with DONE unless finished_only=False), in table order."""
        patterns = ("level_*", DENSE, "branches/*/level_*", "baselines/*/*/density_*")
        found = []
        for pattern in patterns:
            for directory in self.run_dir.glob(pattern):
                ref = StageRef.from_relative(directory.relative_to(self.run_dir).as_posix())
                if ref is not None and directory.is_dir() and (not finished_only or (directory / DONE).exists()):
                    found.append((ref, directory))
        return sorted(found, key=lambda item: item[0].order())

    def is_run_directory(self) -> bool:
        return self.config_file.is_file()
