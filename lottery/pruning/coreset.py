"""Data-free structured pruning of neurons and filters with coresets (Tukan, Mualem & Maalouf, NeurIPS 2022).

A layer's output feeds the next layer as z(x) = sum_i u_i act(q_i^T x): neuron i contributes
through its incoming weights q_i (bias and a following BatchNorm folded in) and its
outgoing column u_i. We bound each neuron's sensitivity, the largest share
|q_i^T x| / sum_j |q_j^T x| it can take over all inputs x, keep a sample of neurons drawn
in proportion to that bound, and reweight the next layer's columns so the sum stays
unbiased. The model is rebuilt physically smaller.

The bound (Löwner ellipsoid + Carathéodory, see `sensitivity_bounds`): peel the points in
rounds. In round k, Khachiyan's algorithm gives the Löwner ellipsoid of the remaining
points (of their symmetric hull) and John weights on its contact points; Carathéodory cuts
that contact set S_k to at most D(D+1)/2 + 1 points with the same matrix
M_k = sum_{S_k} c_j q_j q_j^T (sum c_j = 1), and S_k is removed. For every x,
max_{q in S_k} |q^T x| >= sqrt(x^T M_k x) >= |p^T x| / sqrt(p^T M_k^-1 p) (Cauchy-Schwarz), and
the Löwner ellipsoid makes the first inequality as tight as it can be (within sqrt(D)). The
sets S_k are disjoint, so for every point p
  s(p) <= 1 / (1 + sum over rounds k with p not in S_k of (p^T M_k^-1 p)^(-1/2)).

Where we depart from the letter of the paper, and why:
- When a layer has no more neurons than inputs (LeNet-300-100, most conv layers), its
  weight vectors are linearly independent, every one touches the ellipsoid, and the exact
  worst-case bound is 1 for all. We therefore take x in the top-`subspace_dim` principal
  subspace of the weighted points, which keeps the bound informative.
- One sensitivity per neuron for the whole next layer: q_i is scaled by the norm of its
  outgoing column, instead of one coreset per next-layer neuron.
- The bound is taken on pre-activations |q_i^T x|, the surrogate for act(q_i^T x).
- A small uniform share is mixed into the sampling probabilities (`sampling_probabilities`),
  and we draw until exactly round(keep_fraction * n) distinct units appear, so the size of
  the smaller network is known in advance.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from lottery.models.flops import forward_flops
from lottery.pruning.methods import register_method
from lottery.pruning.mvee import MveeError, caratheodory, khachiyan, symmetric_outer

logger = logging.getLogger(__name__)

SAMPLINGS = ("sensitivity", "uniform")


@dataclass(frozen=True)
class CoresetOptions:
    subspace_dim: int = 8  # dimension of the principal subspace the bound is computed in
    tolerance: float = 1e-3  # Khachiyan's relative accuracy
    max_rounds: int = 200  # peeling rounds per layer; points left after them keep the bound so far
    sampling: str = "sensitivity"  # "uniform" is the ablation: same sampler, flat probabilities
    uniform_share: float = 0.05  # defensive mixture: p = (1 - share) s / sum(s) + share / n


@dataclass(frozen=True)
class NeuronSite:
    """Units of `producer` (rows / output channels) read by `consumer`; `norm` is a BatchNorm between."""

    producer: str
    consumer: str
    norm: Optional[str] = None
    spatial: int = 1  # consumer input columns per unit: H*W when a conv output is flattened into a Linear


@dataclass
class CoresetResult:
    model: nn.Module
    kept: dict[str, list[int]] = field(default_factory=dict)
    weights: dict[str, list[float]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0

    def summary(self) -> dict:
        return {"layers": {name: len(kept) for name, kept in self.kept.items()},
                "params_before": self.params_before, "params_after": self.params_after,
                "flops_before": self.flops_before, "flops_after": self.flops_after}


# -- sensitivity ---------------------------------------------------------------------------------

def principal_points(points: np.ndarray, dim: int) -> np.ndarray:
    """Coordinates of the points in their top-`dim` principal (uncentred) subspace."""
    # Eigenvectors of the smaller Gram matrix: cheaper and steadier than an SVD of the points.
    wide = points.shape[0] < points.shape[1]
    values, vectors = np.linalg.eigh(points @ points.T if wide else points.T @ points)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    rank = int((values > values[0] * 1e-20).sum()) if values.size and values[0] > 0 else 0
    dim = min(dim, rank)
    if wide:
        return vectors[:, :dim] * np.sqrt(values[:dim])
    return points @ vectors[:, :dim]


def sensitivity_bounds(points: np.ndarray, options: CoresetOptions = CoresetOptions()) -> np.ndarray:
    """An upper bound in [0, 1] on sup_x |p_i^T x| / sum_j |p_j^T x| for every row p_i (see the module doc),
    with x in the top-`subspace_dim` principal subspace of the points; 0 exactly for zero points."""
    projected = principal_points(np.asarray(points, dtype=np.float64), options.subspace_dim)
    count, dim = projected.shape
    lengths = np.linalg.norm(projected, axis=1)
    live = lengths > 1e-12 * lengths.max(initial=0.0)  # a zero point (a dead unit) never contributes
    bounds_sum = np.zeros(count)
    if dim == 0 or live.sum() <= dim:
        return live.astype(np.float64)
    remaining = np.flatnonzero(live)
    for _ in range(options.max_rounds):
        if len(remaining) <= dim:
            break
        try:
            result = khachiyan(projected[remaining], options.tolerance)
        except MveeError:
            break  # what is left no longer spans the subspace
        support = result.support
        john = caratheodory(symmetric_outer(projected[remaining][support]), result.weights[support])
        # The reduced weights give the same M_k, so M_k^-1 from Khachiyan serves every point,
        # peeled earlier, now, or later: Cauchy-Schwarz needs no containment.
        peeled = remaining[support[john > 0]]
        leverages = np.einsum("ij,jk,ik->i", projected, result.inverse, projected)
        others = np.ones(count, dtype=bool)
        others[peeled] = False
        bounds_sum[others] += 1.0 / np.sqrt(np.maximum(leverages[others], 1e-300))
        remaining = np.setdiff1d(remaining, peeled)
    return np.where(live, 1.0 / (1.0 + bounds_sum), 0.0)


def sampling_probabilities(bounds: np.ndarray, uniform_share: float) -> np.ndarray:
    """Proportional to the bounds, mixed with a little uniform (a defensive mixture, Hesterberg 1995).

    The mixture is itself sampling by valid bounds, each raised by share / (1 - share) * mean(s),
    so the coreset guarantee holds with total sensitivity 1 / (1 - share) times larger; in
    exchange no live unit has a vanishing probability, which would make its weight
    count / (m p) explode and the draw for `keep` distinct units stall. Dead units stay at 0.
    """
    if not 0 <= uniform_share < 1:
        raise ValueError(f"uniform_share must be in [0, 1), got {uniform_share}")
    live = bounds > 0
    if not live.any():
        return np.full(len(bounds), 1.0 / len(bounds))
    mixed = (1 - uniform_share) * bounds / bounds.sum() + uniform_share * live / live.sum()
    return mixed / mixed.sum()


def sample_neurons(probabilities: np.ndarray, keep: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw with replacement until `keep` distinct neurons appear; return them (sorted) and their
    importance weights count_i / (m p_i), m being the number of draws.

    Units of probability 0 are never drawn; when fewer than `keep` units can be, they all stay
    with weight 1 and zero-probability units fill the quota with weight 0.
    """
    count = len(probabilities)
    possible = np.flatnonzero(probabilities > 0)
    if keep >= len(possible):
        padding = np.flatnonzero(probabilities <= 0)[:keep - len(possible)]
        chosen = np.sort(np.concatenate([possible, padding]))
        return chosen, (probabilities[chosen] > 0).astype(np.float64)
    counts = np.zeros(count, dtype=np.int64)
    draws, distinct = 0, 0
    cap = 50 * count * max(1, math.ceil(math.log(count + 1)))
    while distinct < keep and draws < cap:
        for index in rng.choice(count, size=max(keep, 64), p=probabilities):
            draws += 1
            distinct += counts[index] == 0
            counts[index] += 1
            if distinct == keep:
                break
    if distinct < keep:
        logger.warning("sampling stopped after %d draws with %d of %d neurons; adding the most likely rest",
                       draws, distinct, keep)
        unseen = np.flatnonzero((counts == 0) & (probabilities > 0))
        counts[unseen[np.argsort(-probabilities[unseen])][:keep - distinct]] = 1
    chosen = np.flatnonzero(counts)
    return chosen, counts[chosen] / (max(draws, 1) * probabilities[chosen])


# -- the layers of a model -----------------------------------------------------------------------

def neuron_sites(model: nn.Module) -> list[NeuronSite]:
    """Where units can be removed: every hidden conv/linear output read by exactly one next layer."""
    from lottery.models import CifarResNet, CifarVGG, ConvNet, LeNet

    if isinstance(model, LeNet):
        names = list(model.hidden_names) + ["out"]
        return [NeuronSite(a, b) for a, b in zip(names, names[1:])]
    if isinstance(model, ConvNet):
        convs = list(model.conv_names)
        sites = [NeuronSite(a, b) for a, b in zip(convs, convs[1:])]
        last = model.get_submodule(convs[-1])
        sites.append(NeuronSite(convs[-1], "fc1", spatial=model.fc1.in_features // last.out_channels))
        return sites + [NeuronSite("fc1", "fc2"), NeuronSite("fc2", "out")]
    if isinstance(model, CifarVGG):
        convs = [f"features.{name}" for name, m in model.features.named_children() if isinstance(m, nn.Conv2d)]
        norms = [_norm_after(model, name) for name in convs]
        return [NeuronSite(a, b, norm) for a, b, norm in zip(convs, convs[1:] + ["out"], norms)]
    if isinstance(model, CifarResNet):
        blocks = [f"{stage}.{index}" for stage in ("stage1", "stage2", "stage3")
                  for index in range(len(model.get_submodule(stage)))]
        return [NeuronSite(f"{b}.conv1", f"{b}.conv2", _norm_after(model, f"{b}.conv1")) for b in blocks]
    raise ValueError(f"coreset pruning does not know the layer structure of {type(model).__name__}; "
                     "supported: LeNet (lenet_*), ConvNet (conv2/4/6), CifarVGG (vgg*), CifarResNet (resnet*)")


def _norm_after(model: nn.Module, conv: str) -> Optional[str]:
    name = conv.replace("conv", "bn")
    try:
        return name if isinstance(model.get_submodule(name), nn.modules.batchnorm._BatchNorm) else None
    except AttributeError:
        return None


def neuron_points(model: nn.Module, site: NeuronSite) -> np.ndarray:
    """One row per unit: [incoming weights, bias], BatchNorm folded in, times the outgoing column norm."""
    producer, consumer = model.get_submodule(site.producer), model.get_submodule(site.consumer)
    with torch.no_grad():
        weight = producer.weight.detach().double().flatten(1)
        bias = producer.bias.detach().double() if producer.bias is not None else torch.zeros(len(weight),
                                                                                             dtype=torch.float64)
        if site.norm is not None:
            norm = model.get_submodule(site.norm)
            scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
            weight = weight * scale[:, None]
            bias = scale * (bias - norm.running_mean.double()) + norm.bias.detach().double()
        outgoing = _columns(consumer.weight.detach().double(), site.spatial, len(weight)).norm(dim=1)
        return (torch.cat([weight, bias[:, None]], dim=1) * outgoing[:, None]).numpy()


def _columns(weight: torch.Tensor, spatial: int, units: int) -> torch.Tensor:
    """The consumer's weights grouped by unit: (units, everything that unit feeds)."""
    if weight.dim() == 2:
        return weight.reshape(weight.shape[0], units, spatial).transpose(0, 1).flatten(1)
    return weight.transpose(0, 1).flatten(1)


# -- rebuilding smaller layers -------------------------------------------------------------------

def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _like(layer: nn.Module, in_units: int, out_units: int) -> nn.Module:
    options = {"device": layer.weight.device, "dtype": layer.weight.dtype, "bias": layer.bias is not None}
    if isinstance(layer, nn.Linear):
        return nn.Linear(in_units, out_units, **options)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return nn.Conv2d(in_units, out_units, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         padding_mode=layer.padding_mode, **options)
    raise ValueError(f"cannot rebuild {type(layer).__name__} (only Linear and ungrouped Conv2d)")


def _shrink(model: nn.Module, site: NeuronSite, kept: np.ndarray, weights: np.ndarray) -> None:
    keep = torch.as_tensor(kept, dtype=torch.long)
    producer, consumer = model.get_submodule(site.producer), model.get_submodule(site.consumer)
    smaller = _like(producer, producer.weight.shape[1], len(keep))
    columns = (keep[:, None] * site.spatial + torch.arange(site.spatial)).flatten()
    reader = _like(consumer, len(columns), consumer.weight.shape[0])
    scale = torch.as_tensor(weights, dtype=consumer.weight.dtype, device=consumer.weight.device)
    scale = scale.repeat_interleave(site.spatial)
    with torch.no_grad():
        smaller.weight.copy_(producer.weight[keep])
        if producer.bias is not None:
            smaller.bias.copy_(producer.bias[keep])
        picked = consumer.weight[:, columns]
        reader.weight.copy_(picked * scale.reshape(1, -1, *([1] * (picked.dim() - 2))))
        if consumer.bias is not None:
            reader.bias.copy_(consumer.bias)
    _replace(model, site.producer, smaller)
    _replace(model, site.consumer, reader)
    if site.norm is not None:
        _replace(model, site.norm, _shrink_norm(model.get_submodule(site.norm), keep))


def _shrink_norm(norm: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> nn.Module:
    smaller = type(norm)(len(keep), norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
                         device=norm.running_mean.device, dtype=norm.running_mean.dtype)
    state = {name: (tensor[keep] if tensor.dim() else tensor) for name, tensor in norm.state_dict().items()}
    smaller.load_state_dict(state)
    return smaller


# -- counting ------------------------------------------------------------------------------------

def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def count_weights(model: nn.Module) -> int:
    """Conv and linear weights: what a mask's density is measured against."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


# -- the method ----------------------------------------------------------------------------------

def prune_neurons(model: nn.Module, keep_fraction: float, input_shape: tuple[int, ...], seed: int = 0,
                  options: CoresetOptions = CoresetOptions()) -> CoresetResult:
    """A physically smaller copy of `model` with about `keep_fraction` of every hidden layer's units.

    Layers are pruned front to back; each one's points are read after the previous layer's
    reweighting, so they describe the network as it now is. The input model is unchanged.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if options.sampling not in SAMPLINGS:
        raise ValueError(f"coreset sampling must be one of {', '.join(SAMPLINGS)}, got {options.sampling!r}")
    pruned = copy.deepcopy(model)
    rng = np.random.default_rng(seed)
    result = CoresetResult(pruned, params_before=count_parameters(model), flops_before=forward_flops(model, input_shape))
    for site in neuron_sites(pruned):
        points = neuron_points(pruned, site)
        units = len(points)
        if options.sampling == "uniform":
            bounds = np.ones(units)
        else:
            bounds = sensitivity_bounds(points, options)
        keep = max(1, round(keep_fraction * units))
        kept, weights = sample_neurons(sampling_probabilities(bounds, options.uniform_share), keep, rng)
        logger.debug("%s: kept %d of %d units (total sensitivity %.2f)", site.producer, len(kept), units,
                     bounds.sum())
        _shrink(pruned, site, kept, weights)
        result.kept[site.producer] = kept.tolist()
        result.weights[site.producer] = weights.tolist()
    result.params_after = count_parameters(pruned)
    result.flops_after = forward_flops(pruned, input_shape)
    logger.info("coreset pruning kept %.1f%% of parameters and %.1f%% of FLOPs",
                100 * result.params_after / result.params_before, 100 * result.flops_after / result.flops_before)
    return result


def weight_count_after(model: nn.Module, keep_fraction: float) -> tuple[int, int]:
    """(conv/linear weights after pruning at `keep_fraction`, before): it depends only on the counts kept."""
    sizes = {name: list(module.weight.shape) for name, module in model.named_modules()
             if isinstance(module, (nn.Linear, nn.Conv2d))}
    before = sum(math.prod(shape) for shape in sizes.values())
    for site in neuron_sites(model):
        units = sizes[site.producer][0]
        keep = max(1, round(keep_fraction * units))
        sizes[site.producer][0] = keep
        sizes[site.consumer][1] = keep * site.spatial
    return sum(math.prod(shape) for shape in sizes.values()), before


def fraction_for_density(model: nn.Module, density: float) -> float:
    """The neuron keep fraction whose smaller model has about `density` of the conv/linear weights."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if density == 1:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        after, before = weight_count_after(model, middle)
        low, high = (middle, high) if after / before < density else (low, middle)
    return high


@register_method("coreset", "data-free structured pruning: neurons and filters sampled by Löwner-ellipsoid "
                 "sensitivity and removed physically (Tukan et al. 2022)", structured=True)
def coreset_prune(model: nn.Module, input_shape: tuple[int, ...], seed: int, keep_fraction: float | None = None,
                  density: float | None = None) -> nn.Module:
    """The physically smaller model for a neuron `keep_fraction` or a weight `density` (data-free: only the
    input shape is needed)."""
    if (keep_fraction is None) == (density is None):
        raise ValueError("coreset_prune needs exactly one of keep_fraction and density")
    if keep_fraction is None:
        keep_fraction = fraction_for_density(model, density)
    result = prune_neurons(model, keep_fraction, tuple(input_shape), seed=seed)
    logger.info("coreset: %s", result.summary())
    return result.model
