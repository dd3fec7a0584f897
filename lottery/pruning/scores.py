"""Saliency scores for pruning at initialisation, one function per method.

CONVENTION: every scorer returns {name: score tensor} where HIGHER = MORE IMPORTANT = KEPT.
Pruning keeps the highest scores. For GraSP the paper's score is S = -θ ⊙ Hg and the paper
removes the HIGHEST S; keeping the highest of -S = θ ⊙ Hg is the same rule, so `grasp`
returns θ ⊙ Hg (tests/test_pruning_grasp.py pins this sign).

Every scorer leaves the model exactly as it found it: parameters, buffers, train/eval modes,
dtypes, requires_grad and .grad. They never write into the model: they run it through
torch.func.functional_call with their own tensors and take gradients with torch.autograd.grad.
The mask is applied in the forward (the weights used are θ ⊙ mask). Scores of masked entries
are meaningless; the selection (selection.py) treats them as -inf so they never come back.

`batches` is a sequence of (inputs, targets) tensor pairs; gradients are summed over them.

BatchNorm mode (baseline.bn_mode): each method defaults to the mode of its reference code, because
the two modes give very different masks on BatchNorm networks (on VGG-16 they share 12-26% of the
kept weights):
- SNIP: eval mode (running statistics), as the original SNIP code (snip-public's prune.py feeds
  is_train=False) and Synaptic-Flow (its --prune-train-mode is off by default);
- GraSP: train mode (batch statistics), as the original GraSP code (it scores a deepcopy of the
  network, still in train mode; its `.eval()` is commented out);
- SynFlow: always eval mode (its objective is the eval-mode network on one all-ones input).
In train mode the running statistics are updated in private copies and the global RNG is restored
afterwards, so dropout leaves no trace.

Iterative scoring (several rounds, or a starting mask that is not all ones) differentiates through
the mask: a pruned weight contributes nothing to the gradient, nor to GraSP's Hessian-gradient
product, as in Synaptic-Flow.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lottery.pruning.mask import Mask, unwrap
from lottery.pruning.methods import ScoringContext, register_method

Scores = dict[str, torch.Tensor]
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


# -- helpers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _modes(model: nn.Module, training: bool):
    """Set every module's train/eval flag for a block, then restore each one exactly."""
    saved = [(module, module.training) for module in model.modules()]
    for module, _ in saved:
        module.training = training
    try:
        yield
    finally:
        for module, flag in saved:
            module.training = flag


@contextlib.contextmanager
def _private_forward(model: nn.Module, training: bool):
    """Mode set, global RNG state (dropout) restored afterwards."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), _modes(model, training):
        yield


def _masked_leaves(model: nn.Module, mask: Mask) -> Scores:
    """Fresh leaf tensors θ ⊙ mask for the prunable weights; the model's own tensors are untouched."""
    parameters = dict(model.named_parameters())
    mask.check_fits(model)
    if not mask.names:
        raise ValueError("the mask has no layers to score")
    return {name: (parameters[name].detach() * mask[name].to(parameters[name].device)).requires_grad_(True)
            for name in mask.names}


def _buffer_copies(model: nn.Module) -> Scores:
    """Copies of the buffers, so train-mode BatchNorm updates its running stats in the copy."""
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


def _loss(model: nn.Module, leaves: Scores, inputs, targets, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of logits / T, with the leaves as prunable weights and private buffer copies."""
    reference = next(iter(leaves.values()))
    inputs = inputs.to(reference.device, reference.dtype) if inputs.is_floating_point() else inputs.to(reference.device)
    logits = functional_call(model, {**_buffer_copies(model), **leaves}, (inputs,), strict=False)
    return F.cross_entropy(logits / temperature, targets.to(reference.device))


def _summed_gradient(model, leaves: Scores, batches: Batches, training: bool, temperature: float = 1.0) -> Scores:
    """g = Σ_batches ∇_θ L(batch), over the masked prunable weights."""
    names = list(leaves)
    total = {name: torch.zeros_like(leaf) for name, leaf in leaves.items()}
    with _private_forward(model, training):
        for inputs, targets in batches:
            loss = _loss(model, leaves, inputs, targets, temperature)
            for name, grad in zip(names, torch.autograd.grad(loss, [leaves[n] for n in names], allow_unused=True)):
                if grad is not None:  # None: a layer the forward does not use
                    total[name] += grad
    return total


def _require_batches(batches, method: str) -> list:
    batches = list(batches) if batches is not None else []
    if not batches:
        raise ValueError(f"{method} needs data: pass batches=[(inputs, targets), ...]")
    return batches


# -- the scorers --------------------------------------------------------------------------------
def magnitude(model: nn.Module, mask: Mask, batches: Batches | None = None, **kw) -> Scores:
    """|θ|  (magnitude at init, or of trained weights for IMP)."""
    model = unwrap(model)
    parameters = dict(model.named_parameters())
    return {name: parameters[name].detach().abs() for name in mask.names}


def random(model: nn.Module, mask: Mask, batches: Batches | None = None,
           generator: torch.Generator | None = None, seed: int = 0, **kw) -> Scores:
    """Uniform random scores from `generator` (or a fresh one seeded with `seed`), drawn on the CPU."""
    model = unwrap(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    parameters = dict(model.named_parameters())
    return {name: torch.rand(mask[name].shape, generator=generator, dtype=torch.float64).to(parameters[name].device)
            for name in mask.names}


def snip(model: nn.Module, mask: Mask, batches: Batches, train_mode: bool = False, **kw) -> Scores:
    """SNIP (Lee et al. 2019): |g ⊙ θ|, g = ∇L summed over the batches, with the mask in the forward.

    BatchNorm uses running statistics (eval mode, as the original code) unless train_mode=True; the
    model's running stats are not touched either way.
    """
    model = unwrap(model)
    batches = _require_batches(batches, "snip")
    leaves = _masked_leaves(model, mask)
    gradient = _summed_gradient(model, leaves, batches, train_mode)
    return {name: (gradient[name] * leaves[name].detach()).abs() for name in leaves}


def hessian_gradient_product(model: nn.Module, mask: Mask, batches: Batches, temperature: float = 200.0,
                             train_mode: bool = True) -> Scores:
    """Hg over the surviving prunable weights: g = Σ ∇L(logits/T) (held fixed), Hg = Σ ∇(g · ∇L) by double
    backward, both through the mask: the gradient of a pruned weight is zero, so it adds nothing to g · ∇L
    (Synaptic-Flow differentiates through the mask the same way)."""
    model = unwrap(model)
    batches = _require_batches(batches, "grasp")
    leaves = _masked_leaves(model, mask)
    names = list(leaves)
    gradient = _summed_gradient(model, leaves, batches, train_mode, temperature)
    for name in names:  # ∂L/∂θ = m ⊙ ∂L/∂(θ ⊙ m): survivors only
        gradient[name] *= mask[name].to(gradient[name].device)
    product = {name: torch.zeros_like(leaf) for name, leaf in leaves.items()}
    with _private_forward(model, train_mode):
        for inputs, targets in batches:
            loss = _loss(model, leaves, inputs, targets, temperature)
            grads = torch.autograd.grad(loss, [leaves[n] for n in names], create_graph=True, allow_unused=True)
            inner = sum((grad * gradient[name]).sum() for name, grad in zip(names, grads) if grad is not None)
            if not torch.is_tensor(inner) or not inner.requires_grad:
                continue  # no prunable weight reaches this loss
            for name, hg in zip(names, torch.autograd.grad(inner, [leaves[n] for n in names], allow_unused=True)):
                if hg is not None:
                    product[name] += hg
    return product


def grasp(model: nn.Module, mask: Mask, batches: Batches, temperature: float = 200.0,
          train_mode: bool = True, **kw) -> Scores:
    """GraSP (Wang et al. 2020): paper score S = -θ ⊙ Hg, remove the highest S.

    Returned as θ ⊙ Hg = -S so that, like every scorer here, the highest scores are kept.
    """
    model = unwrap(model)
    product = hessian_gradient_product(model, mask, batches, temperature, train_mode)
    parameters = dict(model.named_parameters())
    return {name: parameters[name].detach() * mask[name].to(hg.device) * hg for name, hg in product.items()}


class SynFlow:
    """SynFlow (Tanaka et al. 2020) prepared once for many rounds.

    The network is run in float64 on |θ| for every parameter and floating buffer, BatchNorm in
    eval mode, on an all-ones input of batch size 1; R = Σ output; score = |θ ⊙ ∂R/∂θ|.
    float64 matters: R reaches ~1e141 on ResNet-110, beyond float32's ~3e38.

    Cost: the |θ| copies are made once, and the prunable ones live in one flat buffer, so a
    round is one forward, one backward and a handful of whole-buffer operations (no fresh
    weight-sized allocations, which cost a round of page faults each on the CPU). Scores come
    back as views of one flat tensor, which the selection then uses without copying. With
    reuse_scores=True that tensor is reused: each call overwrites the previous call's scores
    (the iterative prune loop consumes them before rescoring); otherwise it is fresh per call.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float64,
                 reuse_scores: bool = False):
        model = unwrap(model)
        self.model, self.input_shape, self.dtype = model, tuple(int(s) for s in input_shape), dtype
        self.reuse_scores = reuse_scores
        with torch.no_grad():
            self.absolute = {name: _absolute(tensor, dtype)
                             for name, tensor in [*model.named_parameters(), *model.named_buffers()]}
        self.device = next(iter(self.absolute.values())).device if self.absolute else torch.device("cpu")
        self._names: list[str] = []

    def _lay_out(self, names: list[str]) -> None:
        """Move the prunable |θ| into one flat buffer (views stay in self.absolute), plus two work buffers."""
        with torch.no_grad():
            flat = torch.cat([self.absolute[name].reshape(-1) for name in names])
        for name, part in zip(names, flat.split([self.absolute[name].numel() for name in names])):
            self.absolute[name] = part.view(self.absolute[name].shape)
        self._names, self._flat = names, flat
        self._factor, self._masked, self._scores = torch.empty_like(flat), torch.empty_like(flat), None

    def objective(self, weights: Scores) -> torch.Tensor:
        """R = 1ᵀ f(1; |θ|), with `weights` overriding the prunable |θ|."""
        ones = torch.ones((1, *self.input_shape), dtype=self.dtype, device=self.device)
        with _modes(self.model, training=False):
            return functional_call(self.model, {**self.absolute, **weights}, (ones,), strict=False).sum()

    def __call__(self, mask: Mask) -> Scores:
        mask.check_fits(self.model)
        names = mask.names
        if not names:
            raise ValueError("the mask has no layers to score")
        if names != self._names:
            self._lay_out(names)
        sizes = [mask[name].numel() for name in names]
        with torch.no_grad():
            # A float factor multiplies faster than a bool mask (no per-element type promotion).
            self._factor.copy_(mask.flat())
            torch.mul(self._flat, self._factor, out=self._masked)
        weights = {name: part.view(mask[name].shape).detach().requires_grad_(True)
                   for name, part in zip(names, self._masked.split(sizes))}
        gradients = torch.autograd.grad(self.objective(weights), list(weights.values()), allow_unused=True)
        flat = self._scores if self.reuse_scores and self._scores is not None else torch.empty_like(self._masked)
        self._scores = flat
        scores = {name: part.view(mask[name].shape) for name, part in zip(names, flat.split(sizes))}
        for name, grad in zip(names, gradients):
            if grad is None:  # a layer the forward does not use
                scores[name].zero_()
            else:
                torch.mul(grad, weights[name].detach(), out=scores[name])
        flat.abs_()
        return scores


def _absolute(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.detach().to(dtype).abs() if tensor.is_floating_point() else tensor.detach().clone()


def synflow(model: nn.Module, mask: Mask, batches: Batches | None = None, input_shape: Sequence[int] | None = None,
            dtype: torch.dtype = torch.float64, **kw) -> Scores:
    """SynFlow, one round: |θ ⊙ ∂R/∂θ| with R the output sum of the |θ| network on ones. Uses no data."""
    return SynFlow(model, infer_input_shape(batches, input_shape, "synflow"), dtype)(mask)


def infer_input_shape(batches, input_shape, method: str) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(input_shape)
    if batches:
        return tuple(next(iter(batches))[0].shape[1:])
    raise ValueError(f"{method} needs input_shape=(channels, height, width) or batches to read it from")


# -- the registry entries: how each method's scorer is built for one pruning run ----------------------
# Registration order is the order `lottery baselines` runs them in by default.

@register_method("synflow", "|θ ⊙ ∂R/∂θ|, R the output sum of the |θ| network on an all-ones input (no data)",
                 default_rounds=100)
def _synflow(context: ScoringContext):
    # The loop scores, selects, then rescores: each round's scores may overwrite the last's.
    return SynFlow(context.model, infer_input_shape(context.batches, context.input_shape, "synflow"),
                   reuse_scores=True)


@register_method("snip", "|g ⊙ θ|, g the loss gradient summed over the pruning batches", needs_data=True,
                 settings=("samples_per_class", "batch"), bn_mode="eval")
def _snip(context: ScoringContext):
    train_mode = context.spec.effective_bn_mode == "train"
    return lambda mask: snip(context.model, mask, context.batches, train_mode=train_mode)


@register_method("grasp", "θ ⊙ Hg kept highest, i.e. the paper's -θ ⊙ Hg removed highest, logits / T",
                 needs_data=True, settings=("samples_per_class", "batch", "grasp_temperature"), bn_mode="train")
def _grasp(context: ScoringContext):
    train_mode = context.spec.effective_bn_mode == "train"
    return lambda mask: grasp(context.model, mask, context.batches, temperature=context.spec.temperature,
                              train_mode=train_mode)


@register_method("magnitude", "|θ|, the magnitude of the weights (at θ0 or θk)")
def _magnitude(context: ScoringContext):
    return lambda mask: magnitude(context.model, mask)


@register_method("random", "uniform random scores (equal expected density in every layer)")
def _random(context: ScoringContext):
    generator = torch.Generator().manual_seed(context.spec.seed)
    return lambda mask: random(context.model, mask, generator=generator)
