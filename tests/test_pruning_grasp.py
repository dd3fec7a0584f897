"""GraSP: Hg against a finite-difference Hessian-vector product, a pin on the sign of the score, and scoring
through the mask (iterative GraSP, or a starting mask that is not all ones) against a hand computation."""
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from lottery.pruning.mask import Mask
from lottery.pruning.prune import PruneSpec, prune
from lottery.pruning.scores import grasp, hessian_gradient_product

TEMPERATURE = 200.0


def tanh_net() -> nn.Module:
    """Smooth, so finite differences of the gradient are accurate; float64 throughout."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)).double()


def data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=generator, dtype=torch.float64),
             torch.randint(0, 4, (16,), generator=generator)) for _ in range(2)]


def some_mask(model) -> Mask:
    generator = torch.Generator().manual_seed(3)
    return Mask({n: torch.rand(f.shape, generator=generator) < 0.8 for n, f in Mask.ones(model).items()})


def summed_gradient(model, mask, weights, batches):
    """∇_w Σ_b L_b(logits / T) at prunable weights `weights` (a dict), written independently."""
    leaves = {n: w.detach().clone().requires_grad_(True) for n, w in weights.items()}
    total = {n: torch.zeros_like(w) for n, w in leaves.items()}
    for inputs, targets in batches:
        loss = F.cross_entropy(functional_call(model, leaves, (inputs,)) / TEMPERATURE, targets)
        for name, grad in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
            total[name] += grad
    return total


def finite_difference_hg(model, mask, batches, epsilon=1e-4):
    """Hg ≈ (g(θ + εg) − g(θ − εg)) / 2ε at the masked weights, with g = m ⊙ ∇L: only survivors move."""
    parameters = dict(model.named_parameters())
    theta = {n: parameters[n].detach() * mask[n] for n in mask.names}
    g = {n: grad * mask[n] for n, grad in summed_gradient(model, mask, theta, batches).items()}
    plus = summed_gradient(model, mask, {n: theta[n] + epsilon * g[n] for n in theta}, batches)
    minus = summed_gradient(model, mask, {n: theta[n] - epsilon * g[n] for n in theta}, batches)
    return {n: (plus[n] - minus[n]) / (2 * epsilon) for n in theta}


def test_hessian_gradient_product_matches_finite_differences():
    model, batches = tanh_net(), data()
    mask = some_mask(model)
    exact = hessian_gradient_product(model, mask, batches, temperature=TEMPERATURE)
    approximate = finite_difference_hg(model, mask, batches)
    for name in mask.names:
        scale = float(approximate[name].abs().max())
        assert scale > 0
        torch.testing.assert_close(exact[name], approximate[name], rtol=1e-5, atol=1e-6 * scale)


def test_grasp_score_is_theta_times_hg():
    model, batches = tanh_net(), data()
    mask = some_mask(model)
    product = hessian_gradient_product(model, mask, batches, temperature=TEMPERATURE)
    scores = grasp(model, mask, batches, temperature=TEMPERATURE)
    for name, parameter in model.named_parameters():
        if name in mask:
            torch.testing.assert_close(scores[name], parameter.detach() * mask[name] * product[name])


def test_sign_pin_grasp_removes_the_highest_paper_score():
    """The paper removes the weights with the highest S = -θ ⊙ Hg. With S computed independently
    (finite differences), the kept set must be exactly the lowest S. Fails if the sign flips."""
    model, batches = tanh_net(), data()
    dense = Mask.ones(model)
    hg = finite_difference_hg(model, dense, batches)
    parameters = dict(model.named_parameters())
    paper_score = torch.cat([(-parameters[n].detach() * hg[n]).flatten() for n in dense.names])
    keep = paper_score.numel() // 2
    expected = torch.zeros_like(paper_score, dtype=torch.bool)
    expected[torch.argsort(paper_score)[:keep]] = True

    result = prune(model, PruneSpec("grasp"), density=keep / paper_score.numel(), batches=batches)
    kept = torch.cat([result.mask[n].flatten() for n in dense.names])
    assert torch.equal(kept, expected)


def test_grasp_pruning_preserves_gradient_flow_better_than_its_inverse():
    """GraSP's purpose: removing the highest -θ⊙Hg keeps the gradient norm larger than removing the lowest."""
    model, batches = tanh_net(), data()
    dense = Mask.ones(model)
    scores = grasp(model, dense, batches, temperature=TEMPERATURE)
    total = dense.counts()[1]
    from lottery.pruning.prune import mask_from_scores

    def gradient_norm(mask):
        parameters = dict(model.named_parameters())
        g = summed_gradient(model, mask, {n: parameters[n].detach() * mask[n] for n in mask.names}, batches)
        return sum(float((g[n] * mask[n]).pow(2).sum()) for n in mask.names)

    density = 1 - 10 / total
    grasp_mask = mask_from_scores(scores, dense, density)
    inverse_mask = mask_from_scores({n: -s for n, s in scores.items()}, dense, density)
    assert gradient_norm(grasp_mask) > gradient_norm(inverse_mask)


def grasp_by_hand(model, mask, batches, through_mask=True):
    """θ ⊙ Hg at the network's weights θ ⊙ m.

    through_mask=True: every derivative is taken with respect to θ (the chain rule through the mask, as
    Synaptic-Flow does), so pruned weights have zero gradient and add nothing to Hg. through_mask=False is
    the bug this guards against: derivatives with respect to θ ⊙ m, so pruned weights' gradients enter
    g · ∇L and reach the survivors' Hg.
    """
    parameters = dict(model.named_parameters())
    if through_mask:
        leaves = {n: parameters[n].detach().clone().requires_grad_(True) for n in mask.names}
    else:
        leaves = {n: (parameters[n].detach() * mask[n]).requires_grad_(True) for n in mask.names}

    def loss(inputs, targets):
        weights = {n: leaves[n] * mask[n] for n in leaves} if through_mask else leaves
        return F.cross_entropy(functional_call(model, weights, (inputs,)) / TEMPERATURE, targets)

    g = {n: torch.zeros_like(t) for n, t in leaves.items()}
    for inputs, targets in batches:
        for name, grad in zip(leaves, torch.autograd.grad(loss(inputs, targets), list(leaves.values()))):
            g[name] += grad
    hg = {n: torch.zeros_like(t) for n, t in leaves.items()}
    for inputs, targets in batches:
        grads = torch.autograd.grad(loss(inputs, targets), list(leaves.values()), create_graph=True)
        inner = sum((grad * g[name]).sum() for name, grad in zip(leaves, grads))
        for name, value in zip(leaves, torch.autograd.grad(inner, list(leaves.values()))):
            hg[name] += value
    return {n: parameters[n].detach() * mask[n] * hg[n] for n in leaves}


def test_grasp_from_a_partial_mask_equals_the_masked_hand_computation():
    model, batches = tanh_net(), data()
    mask = some_mask(model)
    scores = grasp(model, mask, batches, temperature=TEMPERATURE)
    expected = grasp_by_hand(model, mask, batches)
    wrong = grasp_by_hand(model, mask, batches, through_mask=False)
    for name in mask.names:
        alive = mask[name]
        torch.testing.assert_close(scores[name][alive], expected[name][alive], rtol=1e-9, atol=1e-15)
    # The check can fail: with the pruned weights' gradients in g, the survivors' scores are different.
    worst = max(float(((wrong[n] - expected[n])[mask[n]]).abs().max() / expected[n][mask[n]].abs().max())
                for n in mask.names)
    assert worst > 0.01


def test_iterative_grasp_rescoring_uses_only_the_survivors():
    """Two rounds: round 1 scores the full network, round 2 rescores through round 1's mask. Both rounds
    computed by hand must select exactly the mask `prune` returns."""
    from lottery.pruning.prune import mask_from_scores, schedule_density

    model, batches = tanh_net(), data()
    dense = Mask.ones(model)
    target = 0.3
    result = prune(model, PruneSpec("grasp", rounds=2), density=target, batches=batches)

    first = mask_from_scores(grasp_by_hand(model, dense, batches), dense,
                             schedule_density(1.0, target, 1, 2))
    second = mask_from_scores(grasp_by_hand(model, first, batches), first, target)
    assert all(torch.equal(result.mask[n], second[n]) for n in dense.names)
    # ... and the unmasked computation selects a different second round, so the comparison has teeth.
    wrong = mask_from_scores(grasp_by_hand(model, first, batches, through_mask=False), first, target)
    assert any(not torch.equal(wrong[n], second[n]) for n in dense.names)
