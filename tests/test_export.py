import math

import pytest
import torch

from lottery.cli import main
from lottery.config import ModelConfig
from lottery.workflows.export import (SparseLinear, export_level, export_state, load_exported, masked_state,
                            sparse_inference_model)
from lottery.run.files import torch_load
from lottery.models import build_model
from lottery.pruning.mask import Mask, MaskError
from lottery.workflows.ticket import run_ticket
from tests.helpers import tiny_config, tiny_dataset, tiny_model



@pytest.fixture(scope="module")
def ticket_run(tmp_path_factory):
    """A finished two-level ticket on synthetic data: level 2 keeps 25% of the prunable weights."""
    config = tiny_config(tmp_path_factory.mktemp("export"), **{"ticket.levels": 2, "prune.fraction": 0.5,
                                                               "train.steps": "20it", "train.eval_every": "20it"})
    return config, run_ticket(config).run_dir


def _random_mask(model, density, generator):
    return Mask({name: torch.rand(t.shape, generator=generator) < density for name, t in Mask.ones(model).items()})


def _plain_model(config):
    return tiny_model(config, tiny_dataset(config)).eval()


def test_dense_export_is_a_plain_state_dict_with_the_same_outputs(ticket_run, tmp_path):
    config, run_dir = ticket_run
    out = tmp_path / "dense.pt"
    summary = export_level(run_dir, 2, "dense", out)
    assert summary["density"] == pytest.approx(0.25, abs=0.01)
    state = torch.load(out, weights_only=True)  # nothing but tensors
    reference, exported = _plain_model(config), _plain_model(config)
    reference.load_state_dict(torch_load(run_dir / "level_02" / "final.pt"))
    exported.load_state_dict(state)  # strict: exactly the plain model's keys
    mask = Mask.load(run_dir / "level_02" / "mask.pt", exported)
    for name, keep in mask.items():
        assert torch.count_nonzero(state[name][~keep]) == 0
    inputs = torch.randn(16, *tiny_dataset(config).input_shape)
    with torch.no_grad():
        assert torch.equal(exported(inputs), reference(inputs))


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
def test_sparse_export_round_trips_exactly_and_is_smaller(ticket_run, tmp_path):
    config, run_dir = ticket_run
    out = tmp_path / "sparse.pt"
    summary = export_level(run_dir, 2, "sparse", out)
    raw = torch.load(out, weights_only=True)
    mask = Mask.load(run_dir / "level_02" / "mask.pt")
    for name in mask.names:
        tensor = raw["state_dict"][name]
        assert tensor.layout == torch.sparse_csr and tensor.col_indices().dtype == torch.int32
        assert tensor.values().numel() <= int(mask[name].sum())
    assert summary["tensor_bytes"] < 0.7 * summary["dense_tensor_bytes"]
    expected = masked_state(torch_load(run_dir / "level_02" / "final.pt"), mask)
    loaded = load_exported(out)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)
    model, reference = _plain_model(config), _plain_model(config)
    model.load_state_dict(loaded)
    reference.load_state_dict(torch_load(run_dir / "level_02" / "final.pt"))
    inputs = torch.randn(16, *tiny_dataset(config).input_shape)
    with torch.no_grad():
        assert torch.equal(model(inputs), reference(inputs))


def test_conv_weights_round_trip_through_csr():
    model = build_model(ModelConfig(name="conv2", width=8), (3, 8, 8), 10, 0)
    generator = torch.Generator().manual_seed(0)
    mask = _random_mask(model, 0.2, generator)
    exported = export_state(model.state_dict(), mask, "sparse")
    assert exported["state_dict"]["conv1.weight"].shape == (8, 27)
    loaded = load_exported(exported)
    assert loaded["conv1.weight"].shape == (8, 3, 3, 3)
    assert all(torch.equal(loaded[name], value) for name, value in masked_state(model.state_dict(), mask).items())


def test_sparse_inference_model_matches_the_dense_one():
    model = build_model(ModelConfig(name="lenet_300_100"), (1, 28, 28), 10, 0).eval()
    generator = torch.Generator().manual_seed(1)
    mask = _random_mask(model, 0.05, generator)
    model.load_state_dict(masked_state(model.state_dict(), mask))
    sparse = sparse_inference_model(model, export_state(model.state_dict(), mask, "sparse"))
    assert isinstance(sparse.fc1, SparseLinear) and isinstance(sparse.out, SparseLinear)
    with torch.no_grad():
        for batch in (1, 7):
            inputs = torch.randn(batch, 1, 28, 28, generator=generator)
            assert torch.allclose(sparse(inputs), model(inputs), atol=1e-5)
    layer = SparseLinear(model.fc2.weight.detach(), None)
    with torch.no_grad():
        assert torch.allclose(layer(torch.ones(2, 3, 300)), torch.ones(2, 3, 300) @ model.fc2.weight.T, atol=1e-5)


def test_mismatched_masks_and_missing_levels_are_named(ticket_run, tmp_path):
    config, run_dir = ticket_run
    with pytest.raises(FileNotFoundError, match="level_07.*final.pt"):
        export_level(run_dir, 7, "dense", tmp_path / "x.pt")
    state = torch_load(run_dir / "level_01" / "final.pt")
    with pytest.raises(MaskError, match="not in the weights: ghost.weight"):
        export_state(state, Mask({"ghost.weight": torch.ones(2, 2, dtype=torch.bool)}), "dense")
    with pytest.raises(ValueError, match="--format"):
        export_state(state, Mask({}), "zip")


def test_cli_export_writes_the_file_and_reports_errors(ticket_run, tmp_path, capsys):
    _, run_dir = ticket_run
    out = tmp_path / "cli.pt"
    assert main(["export", str(run_dir), "--level", "1", "--format", "sparse", "--out", str(out)]) == 0
    assert out.is_file() and "written as sparse" in capsys.readouterr().out
    assert main(["export", str(run_dir), "--level", "9", "--out", str(tmp_path / "none.pt")]) == 1
    assert "level_09" in capsys.readouterr().err


def test_benchmark_reports_every_case_with_agreeing_outputs():
    from lottery.benchmarks.sparse_export import pruned_models, run

    dense, sparse, facts = pruned_models(0.9)
    assert facts["density"] == pytest.approx(0.1, abs=0.002)
    entries = run(quick=True)
    expected = [f"sparse_export_speedup_s{s}_b{b}" for s in (90, 95, 98) for b in (1, 64)]
    assert [entry.name for entry in entries] == expected
    for entry in entries:
        assert entry.unit == "x" and math.isfinite(entry.value) and entry.value > 0
        assert entry.details["max_abs_difference"] < 1e-4
        assert entry.details["dense_us"] > 0 and entry.details["sparse_us"] > 0
    assert torch.get_num_threads() >= 1
