
import pytest
import yaml

from lottery.cli import main
from lottery.config import (
    Config, ConfigError, config_hash, experiment_path, flatten, from_yaml, known_experiments, load_config, to_yaml,
)
from lottery.workflows.preflight import check_names

CONTRACT_KEYS = [
    "seed", "model.name", "data.name", "data.path", "data.root", "data.download", "data.subset", "data.val_size",
    "train.steps", "train.batch_size", "train.optimizer", "train.lr", "train.momentum", "train.weight_decay",
    "train.milestones", "train.gamma", "train.warmup", "train.eval_every", "train.device",
    "prune.fraction", "prune.scope", "prune.layer_rates", "prune.ignore", "baseline.method", "baseline.rounds",
    "ticket.levels", "ticket.rewind_step", "track.enabled", "track.uri", "run.root",
]


def test_contract_keys_exist():
    flat = flatten(Config())
    missing = [key for key in CONTRACT_KEYS if key not in flat]
    assert missing == []


def test_defaults(monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    config = Config()
    assert config.data.root == "./data"
    assert config.data.download is True  # torchvision fetches the public datasets when their files are missing
    assert config.data.subset is None
    assert config.run.root == "./runs"
    monkeypatch.setenv("DATA_ROOT", "/somewhere")
    assert Config().data.root == "/somewhere"


@pytest.mark.parametrize("name", known_experiments())
def test_every_experiment_loads_and_says_where_it_comes_from(name):
    config = load_config(name)
    check_names(config)
    assert config.exp == name
    first_line = experiment_path(name).read_text().splitlines()[0]
    assert first_line.startswith("#")


def test_overrides_apply_with_types():
    config = load_config("resnet20", ["train.batch_size=256", "train.steps=2ep", "prune.layer_rates={out: 0.1}",
                                      "data.subset=100", "train.lr=1"])
    assert config.train.batch_size == 256
    assert config.train.steps == "2ep"
    assert config.prune.layer_rates == {"out": 0.1}
    assert config.data.subset == 100
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_experiment_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {name: lenet_10}\ndata: {name: synthetic}\n")
    config = load_config(str(path))
    assert config.exp == "mine"
    assert config.model.name == "lenet_10"


def test_resnet20_matches_openlth():
    config = load_config("resnet20")
    assert (config.train.lr, config.train.momentum, config.train.weight_decay) == (0.1, 0.9, 1e-4)
    assert config.train.batch_size == 128 and config.train.steps == "160ep"
    assert config.train.milestones == ["80ep", "120ep"] and config.train.gamma == 0.1
    assert config.prune.scope == "global" and config.prune.fraction == 0.2


def test_lenet300_matches_lth():
    config = load_config("lenet300")
    assert config.train.optimizer == "adam" and config.train.lr == 0.0012
    assert config.train.batch_size == 60 and config.train.steps == "50000it"
    assert config.model.init == "glorot_normal" and config.data.val_size == 5000


BAD_CASES = [
    ("train.bacth_size=3", "train.bacth_size"),
    ("train.batch_size=abc", "train.batch_size"),
    ("train.steps=10epochs", "train.steps"),
    ("ticket.rewind_step=x", "ticket.rewind_step"),
    ("prune.fraction=1.5", "prune.fraction"),
    ("prune.fraction=0", "prune.fraction"),
    ("baseline.density=2", "baseline.density"),
    ("model.name=resnet21", "model.name"),
    ("data.name=imagenet22k", "data.name"),
    ("train.optimizer=rmsprop", "train.optimizer"),
    ("train.milestones=[80ep, soon]", "train.milestones"),
]


@pytest.mark.parametrize("override, key", BAD_CASES)
def test_bad_config_exits_2_names_key_and_writes_nothing(override, key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--exp", "digits", override, f"run.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert key in err
    assert "command line" in err or "digits.yaml" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        check_names(load_config("digits", ["model.name=resnet21"]))
    assert "resnet20" in str(error.value) and "lenet" in str(error.value)
    with pytest.raises(ConfigError) as error:
        check_names(load_config("digits", ["data.name=imagenet22k"]))
    assert "mnist" in str(error.value) and "digits" in str(error.value)
    with pytest.raises(ConfigError) as error:
        check_names(load_config("digits", ["baseline.method=snap"]))
    assert "synflow" in str(error.value) and "coreset" in str(error.value)


def test_missing_required_field_names_key_and_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "nomodel.yaml"
    path.write_text("data: {name: synthetic}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--exp", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.name" in err and str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nomodel.yaml"]


def test_wrong_type_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {name: lenet_10}\ndata: {name: synthetic}\ntrain: {lr: fast}\n")
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    assert "train.lr" in str(error.value) and str(path) in str(error.value)


def test_yaml_round_trip_and_hash():
    config = load_config("resnet20", ["seed=3", "prune.layer_rates={out: 0.1}"])
    again = from_yaml(to_yaml(config))
    assert again == config
    assert config_hash(again) == config_hash(config)
    assert yaml.safe_load(to_yaml(config))["train"]["milestones"] == ["80ep", "120ep"]


def test_hash_ignores_what_does_not_change_the_computation():
    base = load_config("digits")
    assert len(config_hash(base)) == 8
    assert config_hash(load_config("digits", ["seed=5", "ticket.levels=9", "track.enabled=false"])) == config_hash(base)
    assert config_hash(load_config("digits", ["train.lr=0.5"])) != config_hash(base)
    assert config_hash(load_config("digits", ["prune.fraction=0.3"])) != config_hash(base)


def test_baseline_settings_never_move_the_run_directory():
    """The ticket never reads baseline.*: changing one keeps the ticket's run directory (the other side, that a
    baseline honours the change in a folder of its own, is tests/test_baselines.py)."""
    base = load_config("digits")
    for override in ("baseline.rounds=7", "baseline.method=snip", "baseline.samples_per_class=3",
                     "baseline.isometry=true", "baseline.grasp_temperature=50", "baseline.schedule=linear"):
        assert config_hash(load_config("digits", [override])) == config_hash(base), override


def test_the_ticket_keys_that_moved_are_refused_by_name():
    with pytest.raises(ConfigError, match="prune.method.*unknown key.*prune.fraction"):
        load_config("digits", ["prune.method=synflow"])


def test_on_off_words_survive_yaml():
    config = load_config("digits", ["train.progress=off", "train.channels_last=on", "train.amp=off"])
    assert (config.train.progress, config.train.channels_last, config.train.amp) == ("off", "on", "off")
