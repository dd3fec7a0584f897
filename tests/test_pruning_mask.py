"""Masks: what is prunable, apply, enforcement under real optimizers, reports, bit-packed save/load."""
import os

import pytest
import torch
from torch import nn

from lottery.pruning.mask import Mask, MaskError, prunable_parameters


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3),
    )


def half_mask(model: nn.Module, seed: int = 0) -> Mask:
    # Offset the seed: a generator seeded like the init would keep exactly the negative weights.
    generator = torch.Generator().manual_seed(1000 + seed)
    return Mask({name: torch.rand(p.shape, generator=generator) < 0.5
                 for name, p in prunable_parameters(model).items()})


def test_prunable_defaults_are_conv_and_linear_weights_in_module_order():
    assert list(prunable_parameters(small_net())) == ["0.weight", "4.weight", "6.weight"]


def test_ignore_include_and_output_patterns():
    model = small_net()
    assert list(prunable_parameters(model, ignore=["output"])) == ["0.weight", "4.weight"]
    assert list(prunable_parameters(model, ignore=["4.*"])) == ["0.weight", "6.weight"]
    assert list(prunable_parameters(model, include=["*.bias"], ignore=["1.bias"])) == [
        "0.weight", "4.weight", "4.bias", "6.weight", "6.bias"]


def test_a_pattern_matching_nothing_is_an_error_naming_it():
    with pytest.raises(MaskError, match="fc9.weight"):
        prunable_parameters(small_net(), ignore=["fc9.weight"])


def test_reports_and_collapse():
    model = small_net()
    mask = Mask.ones(model)
    assert mask.density() == 1.0 and mask.collapsed() == []
    tensors = dict(mask.items())
    tensors["4.weight"] = torch.zeros_like(tensors["4.weight"])
    pruned = Mask(tensors)
    report = pruned.layer_report()
    assert report["4.weight"] == {"total": 2304, "kept": 0, "density": 0.0}
    assert report["0.weight"] == {"total": 36, "kept": 36, "density": 1.0}
    kept, total = pruned.counts()
    assert (kept, total) == (36 + 48, 36 + 2304 + 48)
    assert pruned.collapsed() == ["4.weight"]


def test_apply_zeroes_exactly_the_pruned_weights():
    model = small_net()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    mask = half_mask(model)
    mask.apply(model)
    for name, parameter in model.named_parameters():
        if name in mask:
            assert torch.all(parameter[~mask[name]] == 0)
            assert torch.equal(parameter[mask[name]], before[name][mask[name]])
        else:
            assert torch.equal(parameter, before[name])


OPTIMIZERS = {
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-1),
}


def _train(model, mask, optimizer_name, steps, enforce):
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    enforcer = mask.enforcer(model) if enforce else None
    mask.apply(model)
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for _ in range(steps):
        inputs, targets = torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        if enforcer is not None:
            enforcer()
        pruned = [p.detach()[~mask[n]] for n, p in model.named_parameters() if n in mask]
        worst = max(worst, max(float(values.abs().max()) for values in pruned))
    return worst


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_enforcer_keeps_pruned_weights_exactly_zero_over_many_steps(optimizer_name):
    model = small_net()
    mask = half_mask(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert _train(model, mask, optimizer_name, 60, enforce=True) == 0.0
    # The kept weights did train.
    assert any(not torch.equal(p[mask[n]], start[n][mask[n]]) for n, p in model.named_parameters() if n in mask)


def test_without_the_enforcer_pruned_weights_revive():
    model = small_net()
    assert _train(model, half_mask(model), "adam", 5, enforce=False) > 0.0


def test_save_load_roundtrip_and_atomic_write(tmp_path):
    model = small_net()
    mask = half_mask(model)
    path = tmp_path / "mask.pt"
    mask.save(path)
    loaded = Mask.load(path, model)
    assert loaded.equals(mask) and loaded.names == mask.names
    assert sorted(os.listdir(tmp_path)) == ["mask.pt"]
    dense = Mask.ones(model)
    dense.save(path)
    assert Mask.load(path).equals(dense)


@pytest.mark.parametrize("name, shape", [("lenet_300_100", (1, 28, 28)), ("resnet20", (3, 32, 32))])
def test_at_most_1_01_bits_per_prunable_weight(tmp_path, name, shape):
    from lottery.config import ModelConfig
    from lottery.models import build_model

    model = build_model(ModelConfig(name=name), shape, 10, seed=0)
    mask = half_mask(model, seed=3)  # random at density 0.5: incompressible, the worst case
    path = tmp_path / "mask.bin"
    mask.save(path)
    bits_per_weight = path.stat().st_size * 8 / mask.counts()[1]
    assert bits_per_weight <= 1.01, bits_per_weight
    assert Mask.load(path, model).equals(mask)


def test_corrupted_truncated_and_foreign_files_are_clear_errors(tmp_path):
    model = small_net()
    path = tmp_path / "mask.pt"
    half_mask(model).save(path)
    data = bytearray(path.read_bytes())

    corrupted = tmp_path / "corrupted.pt"
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(MaskError, match="corrupted"):
        Mask.load(corrupted)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(bytes(data[:-10]))
    with pytest.raises(MaskError, match="truncated"):
        Mask.load(truncated)
    truncated.write_bytes(bytes(data[:6]))
    with pytest.raises(MaskError, match="truncated"):
        Mask.load(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"a": torch.ones(3)}, foreign)
    with pytest.raises(MaskError, match="not a lottery mask"):
        Mask.load(foreign)
    with pytest.raises(MaskError, match="does not exist"):
        Mask.load(tmp_path / "missing.pt")


def test_mismatched_model_names_the_layers(tmp_path):
    path = tmp_path / "mask.pt"
    half_mask(small_net()).save(path)
    wider = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 32), nn.ReLU(), nn.Linear(32, 3))
    with pytest.raises(MaskError, match=r"4\.weight"):
        Mask.load(path, wider)
    renamed = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.Flatten(), nn.Linear(144, 16))
    with pytest.raises(MaskError, match="not in the model"):
        Mask.load(path, renamed)
    model = small_net()
    Mask.ones(model, ignore=["output"]).save(path)
    with pytest.raises(MaskError, match=r"missing from mask: \['6.weight'\]"):
        Mask.load(path, model, ignore=[])
    assert Mask.load(path, model, ignore=["output"]).names == ["0.weight", "4.weight"]


def test_apply_to_a_model_of_the_wrong_shape_fails():
    with pytest.raises(MaskError, match="shapes differ"):
        half_mask(small_net()).apply(nn.Sequential(
            nn.Conv2d(1, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(),
            nn.Linear(5 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)))


def test_wrapped_models_use_the_inner_names():
    model = small_net()
    wrapped = nn.DataParallel(model)
    mask = half_mask(model)
    assert Mask.ones(wrapped).names == Mask.ones(model).names
    mask.apply(wrapped)
    mask.enforcer(wrapped)()
    assert all(torch.all(p.detach()[~mask[n]] == 0) for n, p in model.named_parameters() if n in mask)


def test_flat_join_is_a_view_for_consecutive_layers_and_a_copy_otherwise():
    from lottery.pruning.mask import join_flat

    model = small_net()
    mask = half_mask(model)
    flat = mask.flat()
    assert flat.numel() == mask.counts()[1] and int(flat.sum()) == mask.counts()[0]
    tiled = Mask.from_flat(flat.clone(), mask)
    assert tiled.equals(mask)
    joined = tiled.flat()
    assert joined.data_ptr() == tiled["0.weight"].data_ptr()  # no copy
    reordered = [tiled["4.weight"], tiled["0.weight"]]
    assert torch.equal(join_flat(reordered), torch.cat([t.flatten() for t in reordered]))
