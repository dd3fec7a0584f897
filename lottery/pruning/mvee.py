"""The Löwner ellipsoid (minimum-volume enclosing ellipsoid, MVEE) and Carathéodory reduction.

Khachiyan's algorithm finds weights u on the points (u >= 0, sum u = 1) that maximise
log det M(u), M(u) = sum_j u_j q_j q_j^T. At the optimum every point has
g_j = q_j^T M^-1 q_j <= D (D = dimension), with equality on the support of u (the contact
points), and {x : x^T M^-1 x <= D} is the MVEE of the symmetric set {±q_j}. We add the
away steps of Todd & Yıldırım (2007), which move weight off interior points so the support
shrinks to the contact points and convergence becomes linear.

An MVEE with a free centre is the centred MVEE of the lifted points [p, 1] in D = d + 1.

Carathéodory's theorem: a convex combination of n points in R^D can be rewritten with at
most D + 1 of them. `caratheodory` performs that reduction exactly (same weighted sum, same
total weight).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

REFRESH_EVERY = 200  # recompute M^-1 from scratch this often, against rank-one update drift
MIN_CONDITION = 1e-7  # smallest / largest singular value below which the points count as degenerate


class MveeError(ValueError):
    """Points whose enclosing ellipsoid is degenerate (they do not span the space)."""


@dataclass(frozen=True)
class KhachiyanResult:
    weights: np.ndarray  # u, one per point, summing to 1
    inverse: np.ndarray  # M(u)^-1
    leverages: np.ndarray  # g_j = q_j^T M^-1 q_j for every point
    iterations: int
    converged: bool

    @property
    def support(self) -> np.ndarray:
        return np.flatnonzero(self.weights > 0)


@dataclass(frozen=True)
class Ellipsoid:
    """{x : (x - center)^T shape (x - center) <= 1}; it encloses every input point exactly."""

    center: np.ndarray
    shape: np.ndarray
    weights: np.ndarray
    iterations: int

    def distances(self, points: np.ndarray) -> np.ndarray:
        """The ellipsoid norm of each point: <= 1 inside, 1 on the boundary."""
        offsets = np.atleast_2d(points) - self.center
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", offsets, self.shape, offsets), 0.0))

    def semi_axes(self) -> np.ndarray:
        """Semi-axis lengths, longest first."""
        return np.sort(1.0 / np.sqrt(np.linalg.eigvalsh(self.shape)))[::-1]

    def log_volume(self) -> float:
        """log of the volume up to the unit ball's constant: -1/2 log det(shape)."""
        return -0.5 * float(np.linalg.slogdet(self.shape)[1])


def _gram_inverse(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    gram = points.T @ (points * weights[:, None])
    try:
        return np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        raise MveeError("the points do not span the space: their ellipsoid is degenerate") from None


def khachiyan(points: np.ndarray, tol: float = 1e-7, max_iter: int = 100_000) -> KhachiyanResult:
    """Weights of the centred MVEE of {±q_j} (rows of `points`), to relative accuracy `tol`.

    Stops when max_j g_j <= D (1 + tol) and min over the support g_j >= D (1 - tol): then the
    ellipsoid's volume is within a factor (1 + tol)^(D/2) of the minimum.
    """
    points = np.asarray(points, dtype=np.float64)
    count, dim = points.shape
    if count == 0 or dim == 0:
        raise MveeError(f"need at least one point in at least one dimension, got shape {points.shape}")
    singular = np.linalg.svd(points, compute_uv=False)
    if len(singular) < dim or singular[-1] <= MIN_CONDITION * singular[0]:
        raise MveeError(f"{count} points do not span R^{dim} well enough (singular values "
                        f"{singular[0]:.3g} .. {singular[-1] if len(singular) == dim else 0.0:.3g})")
    weights = np.full(count, 1.0 / count)
    inverse = _gram_inverse(points, weights)
    leverages = np.einsum("ij,jk,ik->i", points, inverse, points)
    iteration, converged = 0, False
    while iteration < max_iter:
        if iteration % REFRESH_EVERY == REFRESH_EVERY - 1:
            inverse = _gram_inverse(points, weights)
            leverages = np.einsum("ij,jk,ik->i", points, inverse, points)
        toward = int(np.argmax(leverages))
        alive = np.flatnonzero(weights > 0)
        if len(alive) == 0:
            raise MveeError("Khachiyan's algorithm lost every weight: the points are nearly degenerate")
        away = int(alive[np.argmin(leverages[alive])])
        gain_toward = leverages[toward] / dim - 1.0
        gain_away = 1.0 - leverages[away] / dim
        if max(gain_toward, gain_away) <= tol:
            converged = True
            break
        drop = False
        if gain_toward >= gain_away:
            index = toward
            step = (leverages[index] - dim) / (dim * (leverages[index] - 1.0))
        else:
            # A negative step; at its bound -u/(1-u) the point leaves the support.
            index, kappa = away, leverages[away]
            bound = -weights[index] / (1.0 - weights[index])
            step = bound if kappa <= 1.0 else max((kappa - dim) / (dim * (kappa - 1.0)), bound)
            drop = step == bound
        inverse, leverages = _rank_one_update(points, inverse, leverages, index, step)
        if not np.isfinite(leverages).all():
            raise MveeError("Khachiyan's algorithm lost precision: the points are nearly degenerate")
        weights *= 1.0 - step
        weights[index] += step
        if drop:
            weights[index] = 0.0
        np.maximum(weights, 0.0, out=weights)
        iteration += 1
    if not converged:
        logger.warning("Khachiyan's algorithm stopped after %d iterations above tolerance %g", iteration, tol)
    weights /= weights.sum()
    inverse = _gram_inverse(points, weights)
    leverages = np.einsum("ij,jk,ik->i", points, inverse, points)
    return KhachiyanResult(weights, inverse, leverages, iteration, converged)


def _rank_one_update(points, inverse, leverages, index, step):
    """M' = (1 - step) M + step q q^T, by Sherman-Morrison on M^-1 and on every g_j."""
    row = points[index]
    projected = inverse @ row
    kappa = float(row @ projected)
    ratio = step / (1.0 - step)
    denominator = 1.0 + ratio * kappa
    cross = points @ projected
    inverse = (inverse - (ratio / denominator) * np.outer(projected, projected)) / (1.0 - step)
    leverages = (leverages - (ratio / denominator) * cross * cross) / (1.0 - step)
    return inverse, leverages


def centered_mvee(points: np.ndarray, tol: float = 1e-7, max_iter: int = 100_000) -> Ellipsoid:
    """The MVEE of the symmetric set {±p}: centred at 0, shape M^-1 / max_j g_j."""
    result = khachiyan(points, tol, max_iter)
    shape = result.inverse / result.leverages.max()
    return Ellipsoid(np.zeros(points.shape[1]), shape, result.weights, result.iterations)


def mvee(points: np.ndarray, tol: float = 1e-7, max_iter: int = 100_000) -> Ellipsoid:
    """The Löwner ellipsoid of the points (rows), with its centre, via the lifting [p, 1]."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) < points.shape[1] + 1:
        raise MveeError(f"need at least d + 1 points in R^d, got shape {points.shape}")
    lifted = np.hstack([points, np.ones((len(points), 1))])
    result = khachiyan(lifted, tol, max_iter)
    center = result.weights @ points
    scatter = points.T @ (points * result.weights[:, None]) - np.outer(center, center)
    shape = np.linalg.inv(scatter) / points.shape[1]
    offsets = points - center
    largest = np.einsum("ij,jk,ik->i", offsets, shape, offsets).max()
    return Ellipsoid(center, shape / max(largest, 1.0), result.weights, result.iterations)


def caratheodory(points: np.ndarray, weights: np.ndarray, atol: float = 1e-12) -> np.ndarray:
    """New non-negative weights, on at most D + 1 of the points, with the same sum and weighted sum.

    Each step takes D + 2 supported points, finds an affine dependency v (sum v = 0,
    sum v_i x_i = 0) and moves along it until a weight reaches zero.
    """
    points = np.asarray(points, dtype=np.float64)
    weights = np.array(weights, dtype=np.float64)
    if points.shape[0] != weights.shape[0]:
        raise ValueError(f"{points.shape[0]} points but {weights.shape[0]} weights")
    if (weights < 0).any():
        raise ValueError("Carathéodory needs non-negative weights")
    limit = points.shape[1] + 1
    weights[weights <= atol * max(weights.max(initial=0.0), 1.0)] = 0.0
    while True:
        support = np.flatnonzero(weights > 0)
        if len(support) <= limit:
            return weights
        chosen = support[:limit + 1]
        system = np.vstack([points[chosen].T, np.ones(len(chosen))])
        dependency = np.linalg.svd(system)[2][-1]
        if dependency.max() <= 0:
            dependency = -dependency
        positive = dependency > 0
        ratios = weights[chosen][positive] / dependency[positive]
        pivot = int(np.argmin(ratios))
        weights[chosen] -= ratios[pivot] * dependency
        weights[chosen[np.flatnonzero(positive)[pivot]]] = 0.0
        np.maximum(weights, 0.0, out=weights)


def symmetric_outer(points: np.ndarray) -> np.ndarray:
    """Each row q mapped to the upper triangle of q q^T: the space where John's weights live."""
    rows, cols = np.triu_indices(points.shape[1])
    return points[:, rows] * points[:, cols]
