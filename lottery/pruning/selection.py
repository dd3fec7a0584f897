"""Exact top-k selection over score tensors: the one place where scores become kept weights.

Rules: masked entries never come back (they count as -inf); exactly `count` entries are kept;
ties at the threshold go to the earlier layer (mask order), then the lower flat index. The
threshold is found without a global sort: a strided sample brackets it, two counting passes
confirm the bracket, and only the values in the band are gathered and searched exactly.
That keeps a round of SynFlow on VGG-16 (14.7M scores) to a few passes over memory, where a
global sort or kthvalue over all scores would cost seconds per round.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from lottery.pruning.mask import Mask, MaskError, matching_names

SAMPLE_SIZE = 1 << 16
EXACT_BELOW = 1 << 20  # up to this many candidates, skip the sample and search them all


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _flat_scores(scores: dict, names: Sequence[str], mask: Mask) -> tuple[list, list]:
    """Per-layer flat scores in one common dtype (so comparisons are exact) and flat alive flags."""
    missing = [name for name in names if name not in scores]
    if missing:
        raise MaskError(f"no scores for layers {', '.join(missing)}")
    dtype = scores[names[0]].dtype
    for name in names[1:]:
        dtype = torch.promote_types(dtype, scores[name].dtype)
    values, alive = [], []
    for name in names:
        score = scores[name].detach()
        if score.shape != mask[name].shape:
            raise MaskError(f"scores for {name} have shape {tuple(score.shape)}, mask {tuple(mask[name].shape)}")
        keep = mask[name].to(score.device)
        # The sum is a cheap first check; NaN at pruned entries (0 * inf) does not matter.
        if torch.isnan(score.sum()) and bool((torch.isnan(score) & keep).any()):
            raise ValueError(f"scores for {name} contain NaN")
        values.append(score.to(dtype).flatten())
        alive.append(keep.flatten())
    return values, alive


def _count(flags: list) -> int:
    return sum(int(torch.count_nonzero(flag)) for flag in flags)


def _split(values: list, alive: list, upper: float, lower: float) -> tuple[list, list]:
    """Per layer: alive & (value > upper), and alive & (lower <= value <= upper)."""
    above, band = [], []
    for value, keep in zip(values, alive):
        high = torch.gt(value, upper)
        high &= keep
        middle = torch.ge(value, lower)
        middle &= keep
        middle ^= high  # high is a subset of middle here, so this removes it
        above.append(high)
        band.append(middle)
    return above, band


def _bounds(values: list, alive: list, k: int, available: int):
    """Candidate (upper, lower) brackets for the k-th largest, from a strided sample, widening; last (+inf, -inf)."""
    if available > EXACT_BELOW:
        stride = max(1, sum(value.numel() for value in values) // SAMPLE_SIZE)
        sample = torch.cat([value[::stride][keep[::stride]] for value, keep in zip(values, alive)])
        sample = torch.sort(sample, descending=True).values
        size, share = sample.numel(), k / available
        position = share * size
        margin = 4.0 * math.sqrt(size * share * (1 - share)) + 32
        while position - margin >= 0 or position + margin < size:
            upper_index, lower_index = int(position - margin), int(position + margin)
            yield (sample[upper_index].item() if upper_index >= 0 else math.inf,
                   sample[lower_index].item() if lower_index < size else -math.inf)
            margin *= 8
    yield math.inf, -math.inf


def top_k(values: list, alive: list, k: int, available: int) -> list[torch.Tensor]:
    """Flags for exactly the k highest alive values (1 <= k <= available); ties to earlier layers, lower indices.

    Two comparison passes split the alive entries into above / band / below a bracket that is
    confirmed to hold the k-th largest; everything after that touches only the small band.
    """
    for upper, lower in _bounds(values, alive, k, available):
        above, band = _split(values, alive, upper, lower)
        count_above = _count(above)
        if count_above < k <= count_above + _count(band):
            break
    band_values = [value[flags] for value, flags in zip(values, band)]
    rank = k - count_above  # the threshold's rank within the band, from the top
    joined = torch.cat(band_values)
    threshold = torch.kthvalue(joined.cpu(), joined.numel() - rank + 1).values.item()
    chosen = [part > threshold for part in band_values]
    missing = rank - _count(chosen)
    for part, picked in zip(band_values, chosen):
        ties = (part == threshold).nonzero().flatten()[:max(missing, 0)]
        picked[ties] = True
        missing -= ties.numel()
    return [high.masked_scatter_(flags, picked) for high, flags, picked in zip(above, band, chosen)]


def keep_top(scores: dict, mask: Mask, names: Sequence[str], count: int) -> dict[str, torch.Tensor]:
    """New bool tensors for `names`: exactly `count` of the alive entries, those with the highest scores."""
    names = list(names)
    if not names:
        return {}
    values, alive = _flat_scores(scores, names, mask)
    available = _count(alive)
    if not 0 <= count <= available:
        raise MaskError(f"cannot keep {count} weights in {', '.join(names)}: only {available} are unpruned "
                        "(pruned weights never come back)")
    if count in (0, available):
        kept = [keep.clone() if count else torch.zeros_like(keep) for keep in alive]
    else:
        kept = top_k(values, alive, count, available)
    return {name: flags.reshape(mask[name].shape).to(mask[name].device) for name, flags in zip(names, kept)}


def rate_overrides(names: list[str], layer_rates: dict | None) -> dict[str, float]:
    """{layer: rate} from fnmatch patterns ("output" = the last layer). Conflicting matches are errors."""
    rates: dict[str, float] = {}
    for pattern, rate in (layer_rates or {}).items():
        if not 0.0 <= float(rate) <= 1.0:
            raise MaskError(f"prune.layer_rates.{pattern}: rate must be in [0, 1], got {rate}")
        for name in matching_names(names, [pattern], names[-1] if names else None, "prune.layer_rates"):
            if name in rates and rates[name] != float(rate):
                raise MaskError(f"prune.layer_rates: layer {name} matched by patterns with rates {rates[name]} and {rate}")
            rates[name] = float(rate)
    return rates


def layerwise_quotas(sizes: dict[str, int], available: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` kept weights over layers in proportion to their sizes, capped at what each has left.

    Capped layers keep everything they have; the rest share the remainder. Integer parts are
    apportioned by largest remainder (earlier layer first on ties), so the sum is exact.
    """
    quotas: dict[str, int] = {}
    free, remaining = list(sizes), total
    while free:
        share = remaining / sum(sizes[name] for name in free)
        capped = [name for name in free if share * sizes[name] > available[name]]
        if not capped:
            break
        for name in capped:
            quotas[name] = available[name]
            remaining -= available[name]
            free.remove(name)
    if not free:
        return quotas
    share = remaining / sum(sizes[name] for name in free)
    ideal = {name: share * sizes[name] for name in free}
    for name in free:
        quotas[name] = min(int(math.floor(ideal[name])), available[name])
    leftover = remaining - sum(quotas[name] for name in free)
    order = sorted(free, key=lambda name: -(ideal[name] - math.floor(ideal[name])))
    for name in order:
        if leftover <= 0:
            break
        if quotas[name] < available[name]:
            quotas[name] += 1
            leftover -= 1
    return quotas
