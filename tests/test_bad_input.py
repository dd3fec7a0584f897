"""Bad input: one `error:` line naming the key or file and where its value came from, the right exit code
(2 for a config error, 1 for a missing file or run), no traceback, and nothing written under run.root (nor
anywhere else). Values that run but are surely not meant give a one-line warning that says what happens."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from lottery.cli import main
from lottery.config import load_config

BASE = ["--exp", "digits", "track.enabled=false", "train.progress=off", "train.device=cpu"]
TINY = ["train.steps=20it", "ticket.levels=2"]  # the ticket run that branch and instability cases start from


def inputs(folder: Path) -> dict[str, Path]:
    """Experiment and search-space files the cases point at."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "binary": b"\x00\x01\x02PK\x03\x04 not yaml",
        "latin1": "model: {name: caf\xe9}\n".encode("latin-1"),
        "bad_yaml": b"model: {name: [unclosed\n",
        "lr_inf": b"model: {name: lenet_16}\ndata: {name: synthetic}\ntrain: {lr: .inf}\n",
        "lr_1e": b"model: {name: lenet_16}\ndata: {name: synthetic}\ntrain: {lr: 1e-3, weight_decay: 5e-4}\n",
        "nomatch": b"model: {name: lenet_16}\ndata: {name: synthetic}\nprune: {ignore: [nomatch*]}\n",
        "val_size": b"model: {name: lenet_16}\ndata: {name: synthetic, val_size: 100000}\n",
        "space_inf": b"fixed: {train.lr: .inf}\nparams: {prune.fraction: {type: float, low: 0.1, high: 0.3}}\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_bytes(content)
    return paths


# (argv after the command's own flags, exit code, fragments the one error line contains). {INPUTS} is the
# folder of the files above, {RUNS} the run root.
CASES = {
    # -- float keys refuse infinity and nan, every one of them
    "lr inf": (["ticket", *BASE, "train.lr=inf"], 2, ["train.lr", "finite", "(from the command line)"]),
    "weight_decay inf": (["ticket", *BASE, "train.weight_decay=inf"], 2, ["train.weight_decay", "finite"]),
    "gamma inf": (["ticket", *BASE, "train.gamma=inf"], 2, ["train.gamma", "finite"]),
    "margin as a fraction above 100 points": (["ticket", *BASE, "experiment.evaluate.margin=150"], 2,
                                               ["experiment.evaluate.margin", "[0, 100) accuracy points"]),
    "negative system-metrics interval": (["ticket", *BASE, "track.system_metrics_seconds=-1"], 2,
                                         ["track.system_metrics_seconds", "must be >= 0 seconds"]),
    "momentum nan": (["ticket", *BASE, "train.momentum=nan"], 2, ["train.momentum", "finite"]),
    "fraction -inf": (["ticket", *BASE, "prune.fraction=-inf"], 2, ["prune.fraction", "finite"]),
    "grasp temperature .inf": (["ticket", *BASE, "baseline.grasp_temperature=.inf"], 2, ["grasp_temperature"]),
    "layer rate inf": (["ticket", *BASE, "prune.layer_rates={output: .inf}"], 2, ["prune.layer_rates.output"]),
    "density nan": (["ticket", *BASE, "baseline.density=.nan"], 2, ["baseline.density", "finite"]),
    "target density inf": (["ticket", *BASE, "search.target_density=inf"], 2, ["search.target_density"]),
    "lr inf in a file": (["ticket", "--exp", "{INPUTS}/lr_inf.yaml", "track.enabled=false"], 2,
                         ["train.lr", "finite", "(in {INPUTS}/lr_inf.yaml)"]),
    # -- layer patterns that match no layer list the prunable layers
    "layer_rates nomatch": (["ticket", *BASE, 'prune.layer_rates={"nomatch*": 0.1}'], 2,
                            ["prune.layer_rates", "nomatch*", "fc1.weight, fc2.weight, out.weight"]),
    "ignore nomatch": (["ticket", *BASE, "prune.ignore=[nomatch*]"], 2, ["prune.ignore", "nomatch*", "fc1.weight"]),
    "include nomatch": (["ticket", *BASE, "prune.include=[nomatch*]"], 2, ["prune.include", "nomatch*"]),
    "ignore nomatch in a file": (["ticket", "--exp", "{INPUTS}/nomatch.yaml", "track.enabled=false"], 2,
                                 ["prune.ignore", "(in {INPUTS}/nomatch.yaml)"]),
    "ignore everything": (["ticket", *BASE, "prune.ignore=['*']"], 2, ["no prunable layer is left", "fc1.weight"]),
    # -- seeds, names and devices give the valid range or choices
    "seed too large": (["ticket", *BASE, "seed=99999999999"], 2, ["seed", "must be in [0, 4294967295]"]),
    "seed negative": (["ticket", *BASE, "seed=-1"], 2, ["seed", "must be in [0, 4294967295], got -1"]),
    "init bogus": (["ticket", *BASE, "model.init=bogus"], 2, ["model.init", "kaiming_normal", "glorot_normal"]),
    "model bogus": (["ticket", *BASE, "model.name=resnet21"], 2, ["model.name", "resnet20"]),
    "device bogus": (["ticket", *BASE, "train.device=bogus"], 2, ["train.device", "cpu"]),
    "device cuda:99": (["ticket", *BASE, "train.device=cuda:99"], 2, ["train.device", "no such CUDA device", "cpu"]),
    # -- files that are not YAML text name themselves once
    "binary exp": (["ticket", "--exp", "{INPUTS}/binary.yaml"], 2, ["binary", "(in {INPUTS}/binary.yaml)"]),
    "latin-1 exp": (["ticket", "--exp", "{INPUTS}/latin1.yaml"], 2, ["not UTF-8", "(in {INPUTS}/latin1.yaml)"]),
    "malformed exp": (["ticket", "--exp", "{INPUTS}/bad_yaml.yaml"], 2, ["invalid YAML", "line 2"]),
    "exp not found by name": (["ticket", "--exp", "nosuch"], 2, ["experiment 'nosuch' not found", "digits"]),
    "exp not found by path": (["ticket", "--exp", "{INPUTS}/absent.yaml"], 2,
                              ["experiment file {INPUTS}/absent.yaml not found", "resnet20"]),
    "exp is a folder": (["ticket", "--exp", "{INPUTS}"], 2, ["experiment {INPUTS} is a folder, not a YAML file"]),
    # -- keys and flags
    "empty key part": (["ticket", *BASE, "train..lr=1"], 2, ["train..lr", "a name between every pair of dots"]),
    "unknown key": (["ticket", *BASE, "train.bacth_size=3"], 2, ["train.bacth_size", "train.batch_size"]),
    "not key=value": (["ticket", *BASE, "train.lr"], 2, ["key=value"]),
    "exp escapes run.root": (["ticket", *BASE, "exp=../../elsewhere"], 2, ["exp", "folder name"]),
    "methods empty": (["baselines", *BASE, "--methods", ""], 2, ["--methods", "no method given", "coreset"]),
    "methods unknown": (["baselines", *BASE, "--methods", "snip,snap"], 2, ["--methods", "snap", "synflow"]),
    "densities bad": (["baselines", *BASE, "--densities", "0.5,2"], 2, ["--densities", "(0, 1]"]),
    "levels bad": (["branch", *BASE, "--name", "reinit", "--levels", "x"], 2, ["--levels", "1-5"]),
    # -- levels, rewind steps and sizes that cannot work
    "levels beyond pruning": (["ticket", *BASE, "ticket.levels=1000000"], 2,
                              ["ticket.levels", "at most 45 levels are possible", "layerwise"]),
    "levels beyond pruning, global": (["ticket", *BASE, "ticket.levels=1000000", "prune.scope=global",
                                       "prune.layer_rates={}"], 2, ["ticket.levels", "global scope"]),
    "levels emptying a layer": (["ticket", *BASE, "ticket.levels=10", "prune.fraction=0.9"], 2,
                                ["ticket.levels", "would leave no weight in", "possible"]),
    "rewind after the end": (["ticket", *BASE, "ticket.rewind_step=100ep"], 2, ["ticket.rewind_step", "after the end"]),
    "val_size too large": (["ticket", *BASE, "data.val_size=100000"], 2,
                           ["data.val_size", "training examples", "(from the command line)"]),
    "val_size too large in a file": (["ticket", "--exp", "{INPUTS}/val_size.yaml", "track.enabled=false"], 2,
                                     ["data.val_size", "(in {INPUTS}/val_size.yaml)"]),
    "val_size negative": (["ticket", *BASE, "data.val_size=-1"], 2, ["data.val_size", "must be >= 0, got -1"]),
    "levels negative": (["ticket", *BASE, "ticket.levels=-1"], 2, ["ticket.levels", "must be >= 0, got -1"]),
    # -- search: spaces by name, values from a space say so
    "space mistyped": (["search", *BASE, "--space", "rewnd", "--trials", "1"], 2,
                       ["search space 'rewnd' not found", "pai, rewind, schedule"]),
    "space file absent": (["search", *BASE, "--space", "{INPUTS}/absent.yaml", "--trials", "1"], 2,
                          ["search space file {INPUTS}/absent.yaml not found", "rewind"]),
    "space value inf": (["search", *BASE, "--space", "{INPUTS}/space_inf.yaml", "--trials", "1"], 2,
                        ["train.lr", "finite", "(in search space {INPUTS}/space_inf.yaml)"]),
    # -- missing data, runs and files exit 1
    "mnist missing offline": (["ticket", *BASE, "data.name=mnist", "model.name=lenet_300_100",
                               "data.root={INPUTS}/data", "data.val_size=0"], 1,
                              ["mnist: missing files in {INPUTS}/data/MNIST/raw", "download", "failed"]),
    "mnist missing, no download": (["ticket", *BASE, "data.name=mnist", "data.root={INPUTS}/data",
                                    "data.download=false", "data.val_size=0"], 1, ["set data.download=true"]),
    "report of no run": (["report", "{INPUTS}/no_run"], 1, ["{INPUTS}/no_run"]),
    "export of no run": (["export", "{INPUTS}/no_run", "--level", "1", "--out", "{INPUTS}/x.pt"], 1,
                         ["{INPUTS}/no_run"]),
    "branch without a ticket run": (["branch", *BASE, "--name", "reinit", "--levels", "1"], 1,
                                    ["no ticket run at", "lottery ticket"]),
}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))} if folder.exists() else {}


def fill(text: str, places: dict[str, Path]) -> str:
    for name, path in places.items():
        text = text.replace("{" + name + "}", str(path))
    return text


@pytest.fixture
def field(tmp_path, monkeypatch):
    """An empty working folder, the input files and a run root that does not exist yet."""
    places = {"CWD": tmp_path / "cwd", "INPUTS": tmp_path / "inputs", "RUNS": tmp_path / "runs"}
    places["CWD"].mkdir()
    inputs(places["INPUTS"])
    monkeypatch.chdir(places["CWD"])
    monkeypatch.setenv("LOTTERY_EXPERIMENTS", str(Path(__file__).resolve().parent.parent / "experiments"))
    return places


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_error_line_and_writes_nothing(name, field, capsys):
    argv, expected_code, fragments = CASES[name]
    argv = [fill(arg, field) for arg in argv]
    if argv[0] not in ("report", "export"):
        argv.append(f"run.root={field['RUNS']}")
    before = files_under(field["INPUTS"])
    code, err = run_cli(argv, capsys)
    lines = error_lines(err)
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fill(fragment, field) in lines[0], lines[0]
    assert code == expected_code, lines[0]
    assert not field["RUNS"].exists()
    assert list(field["CWD"].iterdir()) == []
    assert files_under(field["INPUTS"]) == before or name.startswith("mnist missing")  # the download's folder


def test_the_paths_named_by_not_found_errors_appear_once(field, capsys):
    for exp, path in (("nosuch", "nosuch"), (f"{field['INPUTS']}/absent.yaml", f"{field['INPUTS']}/absent.yaml")):
        _, err = run_cli(["ticket", "--exp", exp], capsys)
        assert error_lines(err)[0].count(path) == 1


def test_cuda_on_a_machine_without_it_says_which_devices_exist(field, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_cli(["ticket", *BASE, "train.device=cuda", f"run.root={field['RUNS']}"], capsys)
    assert code == 2 and "train.device" in error_lines(err)[0] and "has: auto, cpu" in err
    assert not field["RUNS"].exists()


def test_every_float_form_is_accepted_in_files_and_on_the_command_line(field):
    config = load_config(str(field["INPUTS"] / "lr_1e.yaml"), ["train.momentum=5e-1", "train.gamma= 2.5E-1 ",
                                                               "prune.fraction=.5", "train.lr=1_0e-4"])
    assert (config.train.lr, config.train.weight_decay) == (1e-3, 5e-4)
    assert (config.train.momentum, config.train.gamma, config.prune.fraction) == (0.5, 0.25, 0.5)
    config = load_config("digits", ["train.weight_decay=5e-4", "prune.layer_rates={output: 1e-1}"])
    assert config.train.weight_decay == 5e-4 and config.prune.layer_rates == {"output": 0.1}


# -- commands on an existing ticket run: checked before anything in it changes --------------------------------

@pytest.fixture(scope="module")
def ticket_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ticket") / "runs"
    assert main(["ticket", *BASE, *TINY, f"run.root={root}"]) == 0
    return root


@pytest.mark.parametrize("argv, fragments", [
    (["branch", *BASE, *TINY, "--name", "reinit", "--levels", "9"], ["--levels", "levels [9]", "finished levels: 0, 1, 2"]),
    (["branch", *BASE, *TINY, "--name", "invert", "--levels", "1-3"], ["--levels", "levels [3]"]),
    (["instability", *BASE, *TINY, "--rewind-steps", "5000it"], ["--rewind-steps", "5000it", "20 iterations"]),
    (["instability", *BASE, *TINY, "--rewind-steps", "0,soon"], ["--rewind-steps", "soon"]),
    (["baselines", *BASE, *TINY, "--methods", ""], ["--methods"]),
    (["ticket", *BASE, *TINY, "ticket.rewind_step=2ep"], ["ticket.rewind_step", "after the end"]),
])
def test_an_existing_run_directory_is_left_as_it_was(ticket_run, argv, fragments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = files_under(ticket_run)
    code, err = run_cli([*argv, f"run.root={ticket_run}"], capsys)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert files_under(ticket_run) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["instability", *BASE, *TINY, "--rewind-steps", "5000it"],
    ["branch", *BASE, *TINY, "--name", "reinit", "--levels", "9"],
])
def test_a_refused_command_creates_no_run_directory(argv, field, capsys):
    code, err = run_cli([*argv, f"run.root={field['RUNS']}"], capsys)
    assert code in (1, 2) and len(error_lines(err)) == 1
    assert not field["RUNS"].exists()


# -- values that run but are surely not meant --------------------------------------------------------------

@pytest.mark.parametrize("override, words", [
    ("train.batch_size=100000", ["train.batch_size=100000", "larger than the", "whole training set"]),
    ("train.eval_every=0", ["train.eval_every=0it is 0 iterations", "evaluating every iteration"]),
    ("train.steps=0ep", ["train.steps=0ep is 0 iterations", "nothing is trained"]),
])
def test_unlikely_values_run_with_one_warning_line(override, words, field, caplog, capsys):
    with caplog.at_level(logging.WARNING, logger="lottery"):
        code = main(["ticket", *BASE, "ticket.levels=1", "train.steps=4it", override, f"run.root={field['RUNS']}"])
    assert code == 0
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING
                and any(word in record.getMessage() for word in words)]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert all(word in warnings[0] for word in words), warnings[0]


def test_data_download_is_unhashed():
    """Turning the download off (or on) continues the same run directory."""
    from lottery.config import config_hash

    assert config_hash(load_config("resnet20", ["data.download=false"])) == config_hash(load_config("resnet20"))


def test_an_unreachable_mlflow_is_one_warning_line_that_says_how_to_sync(field, refused_url):
    """The whole process, tracking helper included: its retries and stack of wrapped errors stay quiet."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "lottery", "ticket", *BASE[:2], "train.progress=off",
                           "train.device=cpu", "ticket.levels=0", "train.steps=2it", f"track.uri={refused_url}",
                           f"run.root={field['RUNS']}"],
                          cwd=field["CWD"], env={**os.environ, "PYTHONPATH": str(root), "MPLBACKEND": "Agg"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line or "Retrying" in line]
    assert len(warnings) == 1, done.stderr
    assert "Connection refused" in warnings[0] and "lottery sync " in warnings[0]


def test_a_run_root_that_cannot_be_created_is_one_line_naming_it(field, capsys):
    blocked = field["INPUTS"] / "lr_inf.yaml" / "runs"  # a file where a folder would go
    code, err = run_cli(["ticket", *BASE, "ticket.levels=0", "train.steps=2it", f"run.root={blocked}"], capsys)
    line = error_lines(err)
    assert code == 1 and len(line) == 1 and "cannot create the run directory" in line[0] and str(blocked) in line[0]
    assert list(field["CWD"].iterdir()) == []
