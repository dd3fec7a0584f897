"""Exact top-k selection over score tensors: the one place where scores become kept weights.

Rules: masked entries never come back (they count as -inf); exactly `count` entries are kept;
ties at the threshold go to the earlier layer (mask order), then the lower flat index. All
layers are handled as one flat tensor. The threshold is found without a global sort: a strided
sample brackets it, two counting passes confirm the bracket, and only the values in the band
are gathered and searched exactly.
That keeps a round of SynFlow on VGG-16 (14.7M scores) to a few passes over memory, where a
global sort or kthvalue over all scores would cost seconds per round.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from lottery.pruning.mask import Mask, MaskError, join_flat, matching_names

SAMPLE_SIZE = 1 << 16
EXACT_BELOW = 1 << 20  # up to this many candidates, skip the sample and search them all


def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _joined_scores(scores: dict, names: Sequence[str], mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
    """All the layers' scores as one flat tensor in one dtype (so comparisons are exact), and the alive flags."""
    missing = [name for name in names if name not in scores]
    if missing:
        raise MaskError(f"no scores for layers {', '.join(missing)}")
    dtype = scores[names[0]].dtype
    for name in names[1:]:
        dtype = torch.promote_types(dtype, scores[name].dtype)
    for name in names:
        if scores[name].shape != mask[name].shape:
            raise MaskError(f"scores for {name} have shape {tuple(scores[name].shape)}, mask {tuple(mask[name].shape)}")
    values = join_flat([scores[name].detach().to(dtype) for name in names])
    alive = join_flat([mask[name] for name in names]).to(values.device)
    # The sum is a cheap first check; NaN at pruned entries (0 * inf) does not matter.
    if torch.isnan(values.sum()):
        bad = [name for name in names if bool((torch.isnan(scores[name]) & mask[name].to(values.device)).any())]
        if bad:
            raise ValueError(f"scores for {', '.join(bad)} contain NaN")
    return values, alive


def _bounds(values: torch.Tensor, alive: torch.Tensor, k: int, available: int):
    """Candidate (upper, lower) brackets for the k-th largest, from a strided sample, widening; last (+inf, -inf)."""
    if available > EXACT_BELOW:
        stride = max(1, values.numel() // SAMPLE_SIZE)
        sample = torch.sort(values[::stride][alive[::stride]], descending=True).values
        size, share = sample.numel(), k / available
        position = share * size
        margin = 4.0 * math.sqrt(size * share * (1 - share)) + 32
        while position - margin >= 0 or position + margin < size:
            upper_index, lower_index = int(position - margin), int(position + margin)
            yield (sample[upper_index].item() if upper_index >= 0 else math.inf,
                   sample[lower_index].item() if lower_index < size else -math.inf)
            margin *= 8
    yield math.inf, -math.inf


def top_k(values: torch.Tensor, alive: torch.Tensor, k: int, available: int) -> torch.Tensor:
    """Flags for exactly the k highest alive values (1 <= k <= available); ties go to lower indices.

    Two comparison passes split the alive entries into above / band / below a bracket confirmed
    to hold the k-th largest; everything after that touches only the small band.
    """
    for upper, lower in _bounds(values, alive, k, available):
        above = torch.gt(values, upper)
        above &= alive
        count_above = int(torch.count_nonzero(above))
        if count_above >= k:
            continue
        band = torch.ge(values, lower)
        band &= alive
        band ^= above  # above is a subset of band here: this leaves lower <= value <= upper
        if count_above + int(torch.count_nonzero(band)) >= k:
            break
    band_index = band.nonzero().flatten()
    band_values = values[band_index]
    rank = k - count_above  # the threshold's rank within the band, from the top
    threshold = torch.kthvalue(band_values.cpu(), band_values.numel() - rank + 1).values.item()
    chosen = band_values > threshold
    missing = rank - int(torch.count_nonzero(chosen))
    if missing > 0:
        chosen[(band_values == threshold).nonzero().flatten()[:missing]] = True
    above[band_index[chosen]] = True
    return above


def keep_top(scores: dict, mask: Mask, names: Sequence[str], count: int,
             available: int | None = None) -> dict[str, torch.Tensor]:
    """New bool tensors for `names`: exactly `count` of the alive entries, those with the highest scores.

    They are views of one flat tensor, so the next round joins them without a copy. `available`
    (the number of alive entries) may be passed in when the caller has counted it already.
    """
    names = list(names)
    if not names:
        return {}
    values, alive = _joined_scores(scores, names, mask)
    available = int(torch.count_nonzero(alive)) if available is None else available
    if not 0 <= count <= available:
        raise MaskError(f"cannot keep {count} weights in {', '.join(names)}: only {available} are unpruned "
                        "(pruned weights never come back)")
    if count in (0, available):
        kept = alive.clone() if count else torch.zeros_like(alive)
    else:
        kept = top_k(values, alive, count, available)
    kept = kept.to(mask[names[0]].device)
    parts = kept.split([mask[name].numel() for name in names])
    return {name: part.view(mask[name].shape) for name, part in zip(names, parts)}


def rate_overrides(names: list[str], layer_rates: dict | None) -> dict[str, float]:
    """{layer: rate} from fnmatch patterns ("output" = the last layer). Conflicting matches are errors."""
    rates: dict[str, float] = {}
    for pattern, rate in (layer_rates or {}).items():
        if not 0.0 <= float(rate) <= 1.0:
            raise MaskError(f"prune.layer_rates.{pattern}: rate must be in [0, 1], got {rate}")
        for name in matching_names(names, [pattern], names[-1] if names else None, "prune.layer_rates"):
            if name in rates and rates[name] != float(rate):
                raise MaskError(f"prune.layer_rates: layer {name} is matched by patterns with rates "
                                f"{rates[name]} and {rate}")
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
