"""From scores to masks: exact counts and ties, no revival, IMP fractions and rates, schedules, collapse."""
import importlib
import logging
import math

import pytest
import torch
from torch import nn

from lottery.pruning import selection
from lottery.pruning.mask import Mask, MaskError
from lottery.pruning.prune import (PruneSpec, critical_compression, mask_from_scores, prune, prune_fraction,
                                   schedule_density)
from lottery.pruning.scores import snip


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10), nn.ReLU(), nn.Linear(10, 4))


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 20, generator=generator), torch.randint(0, 4, (16,), generator=generator))]


def constant_scores(mask):
    return {name: torch.ones(flags.shape) for name, flags in mask.items()}


def reference_top_k(scores, mask, names, count):
    """Stable sort (score descending, then layer order and index): the tie rule, the slow way."""
    flat = torch.cat([torch.where(mask[n].flatten(), scores[n].flatten().double(), -math.inf) for n in names])
    order = torch.sort(flat, descending=True, stable=True).indices[:count]
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    kept[order] = True
    return kept


def test_all_equal_scores_give_exact_counts_and_lowest_indices_first():
    model = mlp()
    mask = Mask.ones(model)
    total = mask.counts()[1]
    for density in (0.5, 0.123, 0.01):
        result = mask_from_scores(constant_scores(mask), mask, density)
        assert result.counts()[0] == round(density * total)
        flat = torch.cat([result[n].flatten() for n in mask.names])
        assert torch.equal(flat, reference_top_k(constant_scores(mask), mask, mask.names, round(density * total)))


def test_layerwise_exact_counts_with_ties():
    model = mlp()
    mask = Mask.ones(model)
    result = mask_from_scores(constant_scores(mask), mask, 0.3, scope="layerwise")
    assert result.counts()[0] == round(0.3 * mask.counts()[1])
    for name, info in result.layer_report().items():
        assert abs(info["kept"] - 0.3 * info["total"]) <= 1, name


def test_large_selection_matches_a_full_sort_with_many_ties(monkeypatch):
    """The sampled-bracket path (used above EXACT_BELOW candidates) against a plain stable sort."""
    monkeypatch.setattr(selection, "EXACT_BELOW", 1000)
    generator = torch.Generator().manual_seed(0)
    shapes = {"a": (300, 100), "b": (50, 40, 3), "c": (7,)}
    scores = {n: torch.randint(0, 500, s, generator=generator).float() for n, s in shapes.items()}
    scores["b"] = scores["b"].double()  # mixed dtypes are compared exactly
    mask = Mask({n: torch.rand(s, generator=generator) < 0.8 for n, s in shapes.items()})
    available = mask.counts()[0]
    brackets, bands = [], []
    original_bounds = selection._bounds

    def recording_bounds(*args):
        for bracket in original_bounds(*args):
            brackets.append(bracket)
            yield bracket

    monkeypatch.setattr(selection, "_bounds", recording_bounds)
    values = torch.cat([scores[n].double().flatten() for n in shapes])
    alive = torch.cat([mask[n].flatten() for n in shapes])
    for count in (1, 37, available // 3, available // 2, available - 1):
        kept = selection.keep_top(scores, mask, list(shapes), count)
        upper, lower = brackets[-1]  # the bracket the selection settled on
        bands.append(int(((values >= lower) & (values <= upper) & alive).sum()))
        flat = torch.cat([kept[n].flatten() for n in shapes])
        assert torch.equal(flat, reference_top_k(scores, mask, list(shapes), count)), count
    # The middle targets were found inside a narrow band, not by falling back to every value.
    assert bands[2] < available / 5 and bands[3] < available / 5


def test_masked_entries_never_come_back():
    model = mlp()
    mask = Mask.ones(model)
    first = mask_from_scores({n: torch.rand(f.shape) for n, f in mask.items()}, mask, 0.5)
    # Scores that favour exactly the pruned weights cannot revive them.
    favour_pruned = {n: (~first[n]).float() * 100 for n in first.names}
    second = mask_from_scores(favour_pruned, first, 0.25)
    assert all(not bool((second[n] & ~first[n]).any()) for n in first.names)
    assert second.counts()[0] == round(0.25 * mask.counts()[1])
    with pytest.raises(MaskError, match="never come back"):
        selection.keep_top(favour_pruned, first, first.names, first.counts()[0] + 1)


def test_iterative_snip_never_revives_and_hits_the_target(monkeypatch):
    prune_module = importlib.import_module("lottery.pruning.prune")  # the attribute `prune` is the function
    model = mlp()
    masks = []

    def recording(scores, mask, names, count, available=None):
        masks.append(mask)
        return selection.keep_top(scores, mask, names, count, available)

    monkeypatch.setattr(prune_module, "keep_top", recording)
    result = prune(model, PruneSpec("snip", rounds=5), density=0.05, batches=data())
    masks.append(result.mask)
    for previous, current in zip(masks, masks[1:]):
        assert all(not bool((current[n] & ~previous[n]).any()) for n in current.names)
    assert result.mask.counts()[0] == round(0.05 * result.mask.counts()[1])
    assert len({m.counts()[0] for m in masks}) == 6  # five rounds, each pruning further


def test_nan_scores_are_refused():
    model = mlp()
    mask = Mask.ones(model)
    scores = {n: torch.rand(f.shape) for n, f in mask.items()}
    scores["2.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="2.weight"):
        mask_from_scores(scores, mask, 0.5)


def test_imp_fraction_compounds_with_the_output_layer_at_its_own_rate():
    model = mlp()
    mask = Mask.ones(model)
    sizes = {n: f.numel() for n, f in mask.items()}
    hidden_total = sizes["0.weight"] + sizes["2.weight"]
    for level in range(1, 6):
        previous = mask
        result = prune_fraction(model, mask, 0.2, layer_rates={"output": 0.1})
        mask = result.mask
        report = mask.layer_report()
        previous_report = previous.layer_report()
        hidden_before = previous_report["0.weight"]["kept"] + previous_report["2.weight"]["kept"]
        assert report["0.weight"]["kept"] + report["2.weight"]["kept"] == hidden_before - round(hidden_before * 0.2)
        out_before = previous_report["4.weight"]["kept"]
        assert report["4.weight"]["kept"] == out_before - math.floor(out_before * 0.1 + 0.5)
        assert all(not bool((mask[n] & ~previous[n]).any()) for n in mask.names)
        hidden_density = (report["0.weight"]["kept"] + report["2.weight"]["kept"]) / hidden_total
        assert abs(hidden_density - 0.8 ** level) < 5 * level / hidden_total
        assert abs(report["4.weight"]["density"] - 0.9 ** level) < 5 * level / sizes["4.weight"]
    # Magnitude: every kept hidden weight is at least as large as every pruned one.
    weights = torch.cat([model[i].weight.detach().abs().flatten() for i in (0, 2)])
    kept = torch.cat([mask[f"{i}.weight"].flatten() for i in (0, 2)])
    assert float(weights[kept].min()) >= float(weights[~kept].max())


def test_imp_layerwise_prunes_each_layer_by_the_fraction():
    model = mlp()
    result = prune_fraction(model, Mask.ones(model), 0.3, scope="layerwise")
    for name, info in result.layers.items():
        assert info["kept"] == info["total"] - math.floor(info["total"] * 0.3 + 0.5), name


def test_layer_rates_in_mask_from_scores_and_unmatched_patterns():
    model = mlp()
    mask = Mask.ones(model)
    scores = {n: torch.rand(f.shape) for n, f in mask.items()}
    result = mask_from_scores(scores, mask, 0.5, layer_rates={"4.weight": 0.0})
    assert result.layer_report()["4.weight"]["density"] == 1.0
    assert result.counts()[0] == round(0.5 * mask.counts()[1])
    with pytest.raises(MaskError, match="fc9"):
        mask_from_scores(scores, mask, 0.5, layer_rates={"fc9.*": 0.1})


def test_schedules():
    assert schedule_density(1.0, 0.01, 50, 100) == pytest.approx(0.1)
    assert schedule_density(1.0, 0.01, 100, 100) == 0.01
    assert schedule_density(1.0, 0.2, 1, 4, "linear") == pytest.approx(0.8)
    with pytest.raises(ValueError, match="schedule"):
        schedule_density(1.0, 0.2, 1, 4, "cosine")


def test_prune_accepts_compression_and_reports():
    model = mlp()
    result = prune(model, PruneSpec("magnitude"), compression=1.0)
    assert result.mask.counts()[0] == round(result.mask.counts()[1] / 10)
    assert result.compression == pytest.approx(-math.log10(result.density))
    with pytest.raises(ValueError, match="exactly one"):
        prune(model, PruneSpec("magnitude"), density=0.1, compression=1.0)
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune(model, PruneSpec("obd"), density=0.1)


def collapsing_net() -> nn.Module:
    """Layer 1's weights are all far smaller than layer 0's: global magnitude empties layer 1 first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.ReLU(), nn.Linear(10, 20, bias=False))
    with torch.no_grad():
        model[0].weight.uniform_(1.0, 2.0)
        model[2].weight.uniform_(0.001, 0.002)
    return model


def test_collapse_is_detected_and_logged(caplog):
    model = collapsing_net()
    with caplog.at_level(logging.WARNING):
        result = prune(model, PruneSpec("magnitude"), density=100 / 300)
    assert result.collapsed == ["2.weight"] and result.layers["2.weight"]["kept"] == 0
    assert "2.weight" in caplog.text
    assert prune(model, PruneSpec("magnitude"), density=101 / 300).collapsed == []


def test_critical_compression_bisects_to_the_collapse_boundary():
    model = collapsing_net()
    # Collapse exactly when round(300 * 10^-c) <= 100, i.e. c >= log10(300 / 100.5).
    boundary = math.log10(300 / 100.5)
    search = critical_compression(model, PruneSpec("magnitude"), tol=0.01)
    critical = search.compression
    assert boundary - 0.01 <= critical < boundary <= critical + search.precision
    assert search.precision <= 0.01
    assert prune(model, PruneSpec("magnitude"), compression=critical).collapsed == []
    assert prune(model, PruneSpec("magnitude"), compression=critical + 0.01).collapsed == ["2.weight"]
    # The reported compression is the last probe that did not collapse; no probe at density 1 or 0; no -0.0.
    probes = [compression for compression, _ in search.probes]
    assert critical == max(c for c, collapsed in search.probes if not collapsed)
    assert all(0 < c < math.log10(300) for c in probes) and len(set(probes)) == len(probes)


def test_compression_of_a_dense_network_is_zero_not_minus_zero():
    from lottery.pruning.collapse import compression_of

    assert math.copysign(1.0, compression_of(1.0)) == 1.0 and compression_of(0.0) == math.inf


def test_snip_scores_masked_entries_but_selection_ignores_them():
    model = mlp()
    first = prune(model, PruneSpec("magnitude"), density=0.5).mask
    scores = snip(model, first, data())
    second = mask_from_scores(scores, first, 0.4)
    assert all(not bool((second[n] & ~first[n]).any()) for n in first.names)
