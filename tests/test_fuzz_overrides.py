"""Property-based fuzz over dotted overrides: keys drawn from the schema, values of the wrong type, extreme
floats, empty strings and lists. `lottery ticket` either runs, or exits 2 with one `error:` line, no traceback
and nothing written. Deterministic (derandomize) and bounded (max_examples), in-process for speed."""
from __future__ import annotations

import shutil
import tempfile
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lottery.cli import main
from lottery.config import Config, flatten
from lottery.config.schema import STEP_KEYS
from lottery.config.tree import _field_type

TINY = b"""model: {name: lenet_16}
data: {name: synthetic, subset: 64, test_subset: 32}
train: {steps: 2it, batch_size: 16, eval_every: 1it, eval_batch_size: 64, device: cpu, progress: 'off'}
ticket: {levels: 1, checkpoint_every: 1it}
track: {enabled: false}
"""
# Pinned after the fuzzed overrides, so that no drawn value moves the run elsewhere or turns tracking on.
PINNED = ["track.enabled=false"]
KEYS = sorted(flatten(Config()))

EXTREME_FLOATS = st.sampled_from(["inf", "-inf", "nan", ".inf", "-.inf", ".nan", "1e308", "-1e308", "1.7976931348623157e308",
                                  "5e-324", "-5e-324", "-0.0", "1e-300", "0.0", "-1.5"])
EMPTY = st.sampled_from(["", "''", '""', " ", "null", "~"])
LISTS = st.sampled_from(["[]", "[[]]", "[1, 2]", "['', '']", "[inf]", "[.nan]", "{}", "{a: 1}", "[{}]", "[nomatch*]",
                         "{'nomatch*': 0.5}", "{output: 2}", "{output: .inf}", "{output: []}"])
WORDS = st.sampled_from(["abc", "yes", "no", "on", "off", "true", "False", "0x10", "1e", "--", "ep", "it", "∞",
                         "1_0", "+", "'5e-4'", "NaN", "Infinity", "-inf", "1ep", "10000000000ep", "2ep3ep"])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(["1.5", "-1", "0"]))


def _kind(key: str):
    kind = _field_type(key)
    if typing.get_origin(kind) is typing.Union or type(kind).__name__ == "UnionType":
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return typing.get_origin(kind) or kind


def wrong_values(key: str):
    """Values that are not of the key's type, or are extreme for it. Numbers that a step key would read as a
    (possibly huge) iteration count, and ints for int keys, are valid and left out: they only cost time."""
    kind = _kind(key)
    options = [EMPTY, LISTS, WORDS]
    if kind is float:
        options += [EXTREME_FLOATS, NUMBERS]
    elif kind is bool or kind is list or kind is dict or (kind is str and key not in STEP_KEYS):
        options += [EXTREME_FLOATS, NUMBERS, st.sampled_from(["1", "-1", "99999999999"])]
    elif kind is int:
        options += [EXTREME_FLOATS, st.sampled_from(["1.5", "-0.5", "1e3"])]
    else:  # step keys: floats are the wrong type
        options += [st.sampled_from(["1.5", "inf", "-1", "1e3"])]
    return st.one_of(*options)


overrides = st.lists(st.sampled_from(KEYS).flatmap(lambda key: wrong_values(key).map(lambda value: f"{key}={value}")),
                     min_size=1, max_size=3)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "tiny.yaml"
    path.write_bytes(TINY)
    return path


@settings(max_examples=100, derandomize=True, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=overrides)
def test_random_overrides_run_or_give_one_error_line(drawn, experiment, capsys, monkeypatch):
    place = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        monkeypatch.chdir(place)
        root = place / "runs"
        code = main(["ticket", "--exp", str(experiment), *drawn, *PINNED, f"run.root={root}"])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code == 0:
            return
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2, (drawn, err)
        assert len(errors) == 1, (drawn, err)
        assert not root.exists(), drawn
        assert list(place.iterdir()) == [], drawn
    finally:
        monkeypatch.chdir(experiment.parent)
        shutil.rmtree(place, ignore_errors=True)
