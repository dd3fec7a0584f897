"""GraSP: Hg against a finite-difference Hessian-vector product, and a pin on the sign of the score."""
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
    """Hg ≈ (g(θ + εg) − g(θ − εg)) / 2ε, over the masked prunable weights."""
    parameters = dict(model.named_parameters())
    theta = {n: parameters[n].detach() * mask[n] for n in mask.names}
    g = summed_gradient(model, mask, theta, batches)
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
