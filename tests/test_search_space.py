"""Search spaces: parsing, validation before any trial, sampling onto dotted keys. No Optuna here."""
from pathlib import Path

import pytest
import yaml

from lottery.config import ConfigError, load_config
from lottery.search.objective import directions, scored_row, steps_to_dense, trial_values
from lottery.search.space import apply_values, load_space, sample, search_config
from tests.helpers import tiny_config

SPACES = Path(__file__).resolve().parent.parent / "configs" / "search"


def write_space(tmp_path, content: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def check(tmp_path, content: dict, config=None):
    path = write_space(tmp_path, content)
    space = load_space(path)
    return space, search_config(config or tiny_config(tmp_path, data__val_size=64), space)


GOOD = {"params": {"prune.fraction": {"type": "float", "low": 0.1, "high": 0.5}}}


@pytest.mark.parametrize("params, key, words", [
    ({"prune.fractoin": {"type": "float", "low": 0.1, "high": 0.5}}, "prune.fractoin", "did you mean prune.fraction"),
    ({"prune.fraction": {"type": "float", "low": 0.5, "high": 0.1}}, "prune.fraction", "inverted"),
    ({"ticket.levels": {"type": "int", "low": 3, "high": 3}}, "ticket.levels", "empty"),
    ({"ticket.levels": {"type": "int", "low": 1.5, "high": 3}}, "ticket.levels", "must be an integer"),
    ({"ticket.levels": {"type": "float", "low": 1, "high": 3}}, "ticket.levels", "expected int"),
    ({"train.lr": {"type": "float", "low": "a", "high": 0.1}}, "train.lr", "must be a number"),
    ({"train.lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "train.lr", "unknown param type"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "train.lr", "log range needs low > 0"),
    ({"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "logg": True}}, "train.lr", "unknown field"),
    ({"train.lr": {"type": "float", "low": 0.1}}, "train.lr", "needs 'high'"),
    ({"prune.fraction": {"type": "float", "low": 0.1, "high": 1.0}}, "prune.fraction", "value 1.0 is invalid"),
    ({"prune.scope": {"type": "categorical", "choices": []}}, "prune.scope", "non-empty list"),
    ({"prune.scope": {"type": "categorical", "choices": ["global", "global"]}}, "prune.scope", "duplicate"),
    ({"prune.scope": {"type": "categorical", "choices": ["global", "everywhere"]}}, "prune.scope", "'everywhere'"),
    ({"train.optimizer": {"type": "categorical", "choices": [{"a": 1}]}}, "train.optimizer", "choices must be"),
    ({"run.root": {"type": "categorical", "choices": ["a", "b"]}}, "run.root", "cannot be searched"),
    ({"baseline.rounds": {"type": "int", "low": 1, "high": 9, "when": {"baseline.method": "synflw"}},
      "baseline.method": {"type": "categorical", "choices": ["synflow", "snip"]}}, "baseline.rounds", "must come after"),
    ({"baseline.method": {"type": "categorical", "choices": ["synflow", "snip"]},
      "baseline.rounds": {"type": "int", "low": 1, "high": 9, "when": {"baseline.method": "synflw"}}}, "baseline.rounds",
     "never sampled"),
])
def test_an_invalid_param_is_rejected_naming_the_space_file_and_the_key(tmp_path, params, key, words):
    with pytest.raises(ConfigError) as caught:
        check(tmp_path, {"params": params})
    message = str(caught.value)
    assert caught.value.key == key
    assert "space.yaml" in message and words in message, message


@pytest.mark.parametrize("content, words", [
    ({}, "'params'"),
    ({"params": {}}, "non-empty"),
    ({**GOOD, "paramz": {}}, "unknown section"),
    ({**GOOD, "run": "dense"}, "'dense' is not one of"),
    ({**GOOD, "fixed": {"prune.densty": 0.1}}, "unknown config key"),
    ({**GOOD, "fixed": {"ticket.levels": "many"}}, "expected int"),
    ({**GOOD, "search": {"objective": "loss"}}, "'loss' is not one of"),
    ({**GOOD, "search": {"heartbeat_seconds": 0}}, "search.heartbeat_seconds"),
    ({**GOOD, "run": "baselines"}, "needs a fixed baseline.density"),
])
def test_an_invalid_space_section_is_rejected(tmp_path, content, words):
    with pytest.raises(ConfigError) as caught:
        check(tmp_path, content)
    assert words in str(caught.value) and "space.yaml" in str(caught.value)


def test_a_missing_or_malformed_file_names_itself(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_space(bad)


def fake_suggest(picks: dict):
    """Stands in for Optuna: the given value per key, else the range's low end or first choice."""
    def suggest(param):
        if param.key in picks:
            return picks[param.key]
        return param.choices[0] if param.kind == "categorical" else param.low
    return suggest


CONDITIONAL = {"params": {
    "baseline.method": {"type": "categorical", "choices": ["magnitude", "synflow"]},
    "baseline.rounds": {"type": "int", "low": 1, "high": 100, "log": True, "when": {"baseline.method": "synflow"}},
    "ticket.rewind_step": {"type": "categorical", "choices": ["0it", "20it"]},
    "train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
}}


def test_sampling_sets_dotted_keys_and_skips_inactive_conditional_params(tmp_path):
    space, config = check(tmp_path, CONDITIONAL)
    asked = []

    def recording(picks):
        inner = fake_suggest(picks)
        return lambda param: asked.append(param.key) or inner(param)

    trial, values = sample(space, config, recording({"baseline.method": "magnitude", "train.lr": 0.01}))
    assert values == {"baseline.method": "magnitude", "ticket.rewind_step": "0it", "train.lr": 0.01}
    assert "baseline.rounds" not in asked
    assert trial.baseline.rounds is None and trial.train.lr == 0.01 and trial.baseline.method == "magnitude"
    assert config.train.lr == 0.05  # the search config itself is untouched

    trial, values = sample(space, config, fake_suggest({"baseline.method": "synflow", "baseline.rounds": 17,
                                                        "ticket.rewind_step": "20it"}))
    assert values["baseline.rounds"] == 17 and trial.baseline.rounds == 17 and trial.ticket.rewind_step == "20it"


def test_conditions_on_fixed_config_values_and_value_lists(tmp_path):
    content = {"fixed": {"baseline.method": "snip"}, "params": {
        "baseline.rounds": {"type": "int", "low": 1, "high": 5, "when": {"baseline.method": ["synflow", "snip"]}},
        "baseline.samples_per_class": {"type": "int", "low": 1, "high": 5, "when": {"baseline.method": "grasp"}},
    }}
    space, config = check(tmp_path, content)
    _, values = sample(space, config, fake_suggest({"baseline.rounds": 3}))
    assert values == {"baseline.rounds": 3}


def test_fixed_keys_apply_but_the_command_line_wins(tmp_path):
    path = write_space(tmp_path, {"search": {"multi_objective": True}, "fixed": {"ticket.levels": 7, "train.lr": 0.2},
                                  **GOOD})
    space = load_space(path)
    config = search_config(tiny_config(tmp_path, train__lr=0.3, data__val_size=64), space, ["train.lr=0.3"])
    assert config.ticket.levels == 7 and config.train.lr == 0.3 and config.search.multi_objective
    assert directions(config) == ["maximize", "minimize"]


def test_apply_values_validates_a_stored_trial(tmp_path):
    config = tiny_config(tmp_path)
    assert apply_values(config, {"prune.fraction": 0.3}).prune.fraction == 0.3
    with pytest.raises(ConfigError, match="prune.fraction"):
        apply_values(config, {"prune.fraction": 3.0})


@pytest.mark.parametrize("name, exp", [("rewind", "digits"), ("schedule", "digits"), ("pai", "digits"),
                                       ("rewind", "resnet20"), ("schedule", "lenet300"), ("pai", "vgg16")])
def test_the_shipped_spaces_are_valid_for_the_shipped_experiments(name, exp):
    space = load_space(SPACES / f"{name}.yaml")
    # The OpenLTH recipes train on all 50K CIFAR images: a search on them needs the validation split option.
    overrides = [] if load_config(exp).data.val_size else ["data.val_size=5000"]
    if overrides:
        with pytest.raises(ConfigError, match="data.val_size=N"):
            search_config(load_config(exp), space)
    config = search_config(load_config(exp, overrides), space, overrides)
    trial, values = sample(space, config, fake_suggest({}))
    assert set(values) <= {param.key for param in space.params} and values
    if name == "pai":
        assert space.runner == "baselines" and trial.baseline.density == 0.05
    if name == "rewind":
        assert config.search.multi_objective


def row(level, density, acc, final=None):
    """A level whose final validation accuracy is `final or acc`; its test numbers are different."""
    return {"level": level, "density": density, "final_val_acc": final or acc, "best_test_acc": 0.5,
            "final_test_acc": 0.4}


def test_the_scored_level_is_the_first_at_or_below_the_target_density(tmp_path):
    rows = [row(0, 1.0, 0.9), row(1, 0.5, 0.93), row(2, 0.25, 0.91), row(3, 0.125, 0.8)]
    config = tiny_config(tmp_path, search__target_density=0.25)
    assert scored_row(config, rows)["level"] == 2
    assert trial_values(config, rows, history=None) == [0.91]
    config = tiny_config(tmp_path, search__target_density=0.1)
    assert scored_row(config, rows) is None
    assert trial_values(tiny_config(tmp_path), rows, history=None) == [0.8]  # no target: the last level
    config = tiny_config(tmp_path, search__multi_objective=True, search__target_density=0.25)
    assert trial_values(config, rows, history=None) == [0.8, 0.125]


def test_steps_to_dense_is_the_first_evaluation_matching_the_dense_final_accuracy(tmp_path):
    history = {0: [{"step": 10, "val_acc": 0.5}, {"step": 20, "val_acc": 0.9}, {"step": 30, "val_acc": 0.88}],
               1: [{"step": 10, "val_acc": 0.87}, {"step": 20, "val_acc": 0.95}, {"step": 30, "val_acc": 0.9}],
               2: [{"step": 10, "val_acc": 0.5}, {"step": 20, "val_acc": 0.6}, {"step": 30, "val_acc": 0.7}]}
    for level in history.values():  # test accuracies that would reach the dense level at once
        for record in level:
            record["test_acc"] = 0.99
    rows = [row(0, 1.0, 0.9, final=0.88), row(1, 0.5, 0.95, final=0.9), row(2, 0.25, 0.7)]
    config = tiny_config(tmp_path, search__objective="steps_to_dense")
    lookup = lambda r: history[r["level"]]  # noqa: E731
    assert trial_values(config, rows[:2], lookup) == [20.0]
    assert trial_values(config, rows, lookup) == [60.0]  # never matched: twice the training length
    assert steps_to_dense(history[0], 0.88) == 20.0
    assert directions(config) == ["minimize"]
