"""Damaged files in a run directory: one byte flipped, or the file cut in half.

A finished stage's files are the record: the next run stops with one error line naming the file (exit 1),
never a traceback, never a silently wrong result. Files that can be computed again are: a checkpoint, the
mask of a stage without DONE, results.json (it only gathers the stages' own records) and config.yaml (it
says what the last command ran); each is rebuilt with a warning, and the run ends exactly as an undamaged one.
Temporary files a killed process left behind are removed when the run resumes.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess

import pytest
import torch

from lottery.cli import main
from lottery.run.files import read_json, write_json
from lottery.run.layout import RunLayout
from lottery.config import load_config, replace
from lottery.run.context import read_config

ARGS = ["--exp", "digits", "track.enabled=false", "train.progress=off", "train.device=cpu", "train.steps=20it",
        "ticket.levels=2", "ticket.checkpoint_every=5it"]


class Killed(BaseException):
    """Stands in for the process being killed (a BaseException, as a kill is no stage failure the orchestrator could
    catch and go on from)."""


def ticket(root, capsys, *extra) -> tuple[int, str]:
    code = main(["ticket", *ARGS, *extra, f"run.root={root}"])
    return code, capsys.readouterr().err


def run_dir_of(root):
    return RunLayout.of(load_config("digits", [a for a in ARGS if "=" in a] + [f"run.root={root}"])).run_dir


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))


def weights(path) -> dict:
    return torch.load(path, weights_only=True)


def same_weights(first, second) -> bool:
    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def rows(run_dir) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_seconds"} for row in read_json(run_dir / "results.json")["rows"]]


def one_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished ticket run (levels 0-2), never modified."""
    root = tmp_path_factory.mktemp("pristine") / "runs"
    assert main(["ticket", *ARGS, f"run.root={root}"]) == 0
    return root


@pytest.fixture
def copy(pristine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    shutil.copytree(pristine, root)
    return root


RECORDS = ["init.pt", "rewind.pt", "level_01/mask.pt", "level_01/final.pt", "level_01/metrics.json",
           "level_02/final.pt"]


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("name", RECORDS)
def test_a_damaged_record_is_one_error_naming_the_file(name, how, copy, capsys):
    path = run_dir_of(copy) / name
    damage(path, how)
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    code, err = ticket(copy, capsys)
    line = one_error(err)
    assert code == 1 and str(path) in line
    assert "corrupted" in line or "truncated" in line or "not valid JSON" in line
    assert "restore the file, or" in line
    after = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert [p for p, stamp in after.items() if before.get(p) != stamp] == []  # nothing was rewritten


def test_following_the_hint_recomputes_the_stage_exactly(copy, pristine, capsys):
    run_dir = run_dir_of(copy)
    damage(run_dir / "level_01" / "final.pt", "flip")
    damage(run_dir / "init.pt", "truncate")
    assert ticket(copy, capsys)[0] == 1
    (run_dir / "init.pt").unlink()  # θ0 is a pure function of the seed
    assert ticket(copy, capsys)[0] == 1  # level_01 is still damaged
    shutil.rmtree(run_dir / "level_01")
    assert ticket(copy, capsys)[0] == 0
    original = run_dir_of(pristine)
    assert same_weights(run_dir / "init.pt", original / "init.pt")
    assert same_weights(run_dir / "level_01" / "final.pt", original / "level_01" / "final.pt")
    assert rows(run_dir) == rows(original)


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("name", ["results.json", "config.yaml"])
def test_a_damaged_summary_is_rebuilt_with_a_warning(name, how, copy, pristine, capsys, caplog):
    run_dir = run_dir_of(copy)
    damage(run_dir / name, how)
    with caplog.at_level(logging.WARNING):
        code, err = ticket(copy, capsys)
    assert code == 0 and "Traceback" not in err
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and name in r.getMessage()]
    assert len(warned) == 1 and str(run_dir / name) in warned[0]
    if name == "results.json":
        assert (run_dir / name).read_bytes() == (run_dir_of(pristine) / name).read_bytes()
    else:  # this command's config, which differs from the pristine run's only in run.root
        assert read_config(run_dir) == replace(read_config(run_dir_of(pristine)), **{"run.root": str(copy)})
    assert main(["report", str(run_dir)]) == 0


def test_a_row_a_kill_left_out_of_results_json_is_restored_from_the_stage_record(copy, pristine, capsys):
    """A kill between a stage's DONE and its results row: the stage is finished, so the next run skips it, and
    results.json gets its row back from metrics.json."""
    run_dir = run_dir_of(copy)
    stored = read_json(run_dir / "results.json")
    stored["rows"] = [row for row in stored["rows"] if row["stage"] != "level_01"]
    write_json(run_dir / "results.json", stored)  # intact, checksum and all: only the row is missing
    code, err = ticket(copy, capsys)
    assert code == 0, err
    assert rows(run_dir) == rows(run_dir_of(pristine))


def _kill_level_02_after_a_checkpoint(monkeypatch):
    from lottery.training import loop

    original = loop._save_checkpoint

    def save_then_die(job, *args):
        original(job, *args)
        if job.checkpoint_tag == "level_02":
            raise Killed()
    monkeypatch.setattr(loop, "_save_checkpoint", save_then_die)


@pytest.fixture
def killed(pristine, tmp_path, monkeypatch):
    """A run killed while training level 2, right after its first checkpoint."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    with monkeypatch.context() as patch:
        _kill_level_02_after_a_checkpoint(patch)
        with pytest.raises(Killed):
            main(["ticket", *ARGS, f"run.root={root}"])
    level = run_dir_of(root) / "level_02"
    assert (level / "checkpoint.pt").exists() and (level / "mask.pt").exists() and not (level / "DONE").exists()
    return root


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize("name", ["checkpoint.pt", "mask.pt"])
def test_a_damaged_cache_of_an_unfinished_stage_is_rebuilt_and_the_result_is_the_same(
        name, how, killed, pristine, capsys, caplog):
    run_dir = run_dir_of(killed)
    damage(run_dir / "level_02" / name, how)
    with caplog.at_level(logging.WARNING):
        code, err = ticket(killed, capsys)
    assert code == 0 and "Traceback" not in err
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and name in r.getMessage()]
    assert len(warned) == 1 and str(run_dir / "level_02" / name) in warned[0]
    original = run_dir_of(pristine)
    assert same_weights(run_dir / "level_02" / "final.pt", original / "level_02" / "final.pt")
    assert (run_dir / "level_02" / "mask.pt").read_bytes() == (original / "level_02" / "mask.pt").read_bytes()
    assert rows(run_dir) == rows(original)
    assert not (run_dir / "level_02" / "checkpoint.pt").exists()


def test_a_resume_from_an_intact_checkpoint_gives_the_same_result(killed, pristine, capsys):
    assert ticket(killed, capsys)[0] == 0
    original = run_dir_of(pristine)
    assert same_weights(run_dir_of(killed) / "level_02" / "final.pt", original / "level_02" / "final.pt")


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_temporary_files_of_a_dead_process_are_removed_on_resume(killed, capsys):
    run_dir, host = run_dir_of(killed), socket.gethostname()
    dead, alive = _dead_pid(), os.getpid()
    stale = [run_dir / "level_02" / f".checkpoint.pt.{host}-{dead}.k2j3h4.tmp",
             run_dir / f".results.json.{host}-{dead}.a8b7c6.tmp"]
    kept = [run_dir / f".results.json.{host}-{alive}.zz9y8x.tmp",  # a live writer's
            run_dir / f".results.json.otherhost-{dead}.q1w2e3.tmp"]  # another machine's: its pid means nothing here
    for path in stale + kept:
        path.write_bytes(b"half a file")
    assert ticket(killed, capsys)[0] == 0
    assert [path.exists() for path in stale] == [False, False]
    assert [path.exists() for path in kept] == [True, True]


@pytest.mark.parametrize("command, name", [
    (["report", "{RUN}"], "level_01/metrics.json"),
    (["export", "{RUN}", "--level", "1", "--out", "{OUT}"], "level_01/final.pt"),
    (["export", "{RUN}", "--level", "1", "--out", "{OUT}"], "level_01/mask.pt"),
    (["sync", "{RUN}", "track.uri=sqlite:///{OUT}"], "config.yaml"),
])
def test_commands_that_read_a_run_name_the_damaged_file(command, name, copy, tmp_path, capsys):
    run_dir = run_dir_of(copy)
    damage(run_dir / name, "flip")
    argv = [arg.replace("{RUN}", str(run_dir)).replace("{OUT}", str(tmp_path / "out")) for arg in command]
    code = main(argv)
    line = one_error(capsys.readouterr().err)
    assert code == 1 and str(run_dir / name) in line
    assert not (tmp_path / "out").exists()


def test_damaged_instability_caches_are_computed_again_with_the_same_curve(tmp_path, caplog):
    from lottery.workflows.instability import InstabilityOptions, run_instability
    from tests.test_instability import digits_config

    config = digits_config(tmp_path)
    options = InstabilityOptions(points=3)
    first = run_instability(config, "7it", options=options)[0]
    run_dir = RunLayout.of(config).run_dir
    step_dir = run_dir / "instability" / "dense" / "k_0000007"
    (step_dir / "curve.json").unlink()  # the curve is computed again from the copies ...
    damage(step_dir / "copy_a.pt", "flip")  # ... one of which is damaged, as is the θk snapshot
    damage(run_dir / "instability" / "rewind" / "step_0000007.pt", "truncate")
    with caplog.at_level(logging.WARNING):
        again = run_instability(config, "7it", options=options)[0]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "computing it again" in
              r.getMessage()]
    assert len(warned) == 2 and any("copy_a.pt" in m for m in warned) and any("step_0000007.pt" in m for m in warned)
    assert {k: v for k, v in again.items() if k != "wall_seconds"} == \
        {k: v for k, v in first.items() if k != "wall_seconds"}
