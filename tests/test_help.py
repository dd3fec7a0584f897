"""`--help` teaches the config: generated from the schema, its rules and the registries, so it cannot go stale."""
from __future__ import annotations

import re

import pytest

from lottery.cli import main
from lottery.cli.commands import COMMANDS
from lottery.cli.help import KEY_HELP
from lottery.cli.parser import build_parser
from lottery.config import Config, flatten, known_experiments
from lottery.config.schema import CHOICES
from lottery.config.validation import RANGES
from lottery.pruning.methods import METHODS
from lottery.search.space import known_spaces

CONFIG_COMMANDS = ("train", "ticket", "branch", "baselines", "prune", "search", "instability")


def help_of(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_the_top_level_help_lists_every_command_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a plain terminal
    summaries = {action.dest: action.help for action in build_parser()._subparsers._group_actions[0]._choices_actions}
    assert sorted(summaries) == sorted(COMMANDS)
    lines = help_of(capsys).splitlines()
    for name, summary in summaries.items():
        assert any(re.fullmatch(rf"\s+{name}\s+{re.escape(summary)}", line) for line in lines), name


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_says_what_it_runs(command, capsys):
    text = help_of(capsys, command)
    description = text.split("\n\n")[1]
    assert len(description.split()) >= 8, description  # the summary and what the command does


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_a_config_command_lists_the_experiments_and_every_key_with_type_default_and_choices(command, capsys):
    text = " ".join(help_of(capsys, command).split())  # argparse wraps; compare without line breaks
    for name in known_experiments():
        assert name in text
    defaults = flatten(Config())
    for key, default in defaults.items():
        assert f"{key}: " in text, key
        if default != "???":
            assert f"default {default!r}" in text.split(f"{key}: ", 1)[1].split(" — ")[0], key
    for key, options in CHOICES.items():
        assert f"one of {', '.join(options)}" in text.split(f"{key}: ", 1)[1], key
    for key, check in RANGES.items():
        assert check.valid in text.split(f"{key}: ", 1)[1].split(" — ")[0], key
    for method in METHODS:  # the registries too
        assert method in text.split("baseline.method: ", 1)[1].split(" — ")[0]
    assert "model.init: str, default 'kaiming_normal', one of kaiming_normal" in text
    assert "never inf or nan" in text and "5e-4" in text


def test_every_schema_key_has_a_description_and_no_description_is_stale():
    assert sorted(KEY_HELP) == sorted(flatten(Config()))


def test_the_flags_have_help_and_list_what_is_registered(capsys):
    baselines = " ".join(help_of(capsys, "baselines").split())
    for flag in ("--methods", "--densities", "--at"):
        assert re.search(rf"{flag} \S+ \w", baselines), flag
    assert "coreset" in baselines.split("--methods", 2)[2]
    branch = " ".join(help_of(capsys, "branch").split())
    assert "ticket levels to branch from, e.g. 1-5" in branch and "reinit: the level's mask" in branch
    prune = " ".join(help_of(capsys, "prune").split())
    for method in METHODS:
        assert f"{method}: " in prune.split("--method", 2)[2], method
    search = " ".join(help_of(capsys, "search").split())
    assert all(space in search for space in known_spaces()) and known_spaces()
    sync = " ".join(help_of(capsys, "sync").split())
    assert "nothing to sync" in sync and "--force" in sync
