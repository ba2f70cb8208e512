"""Gradient weightings that choose task weights from the Gram matrix of the task gradients, with a
Pareto or game-theoretic rationale: ``mgda`` (Sener & Koltun 2018) and ``nash_mtl`` (Navon et al.
2022).

Both update the shared parameters with ``sum_i alpha_i g_i`` and give the task-specific
parameters' losses the same weights ``alpha_i`` (the update the weights define, restricted to each
head, whose gradient involves its own task alone).
"""

from __future__ import annotations

import torch

from facebench.lightning_modules.weighting.base import GradientWeighting, gram, min_norm_two, register_weighting


def min_norm_weights(m: torch.Tensor, max_iter: int = 250, tol: float = 1e-7) -> torch.Tensor:
    """The weights ``alpha`` (on the simplex) of the min-norm point ``sum_i alpha_i g_i`` of the convex
    hull of the task gradients, from their Gram matrix ``m [K, K]`` (float64).

    Two tasks: the exact closed form (:func:`min_norm_two`). More: Frank-Wolfe (Sener & Koltun 2018,
    Algorithm 2): from ``alpha = 1/K``, move towards the vertex ``e_t`` with the smallest ``(m
    alpha)_t`` by the exact line search of Algorithm 1, until the step changes ``alpha`` by less than
    ``tol`` (L1) or after ``max_iter`` steps."""
    k = m.shape[0]
    if k == 1:
        return torch.ones(1, dtype=m.dtype, device=m.device)
    if k == 2:
        gamma = min_norm_two(m[0, 0], m[0, 1], m[1, 1])
        return torch.tensor([gamma, 1.0 - gamma], dtype=m.dtype, device=m.device)
    alpha = torch.full((k,), 1.0 / k, dtype=m.dtype, device=m.device)
    for _ in range(max_iter):
        ma = m @ alpha
        t = int(torch.argmin(ma))
        gamma = min_norm_two(alpha @ ma, ma[t], m[t, t])    # weight kept on the current point
        new = gamma * alpha
        new[t] += 1.0 - gamma
        change = float((new - alpha).abs().sum())
        alpha = new
        if change < tol:
            break
    return alpha


@register_weighting("mgda")
class MGDA(GradientWeighting):
    """Multiple-gradient descent: Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization" (NeurIPS 2018), Section 3.

    The update is the min-norm point of the convex hull of the task gradients, ``sum_i alpha_i g_i``
    with ``alpha`` on the simplex (:func:`min_norm_weights`: the exact two-task solution, Frank-Wolfe
    beyond); it decreases every task's loss unless it is zero (a Pareto-stationary point). The paper's
    MGDA-UB takes the gradients with respect to the shared *representation* to save backward passes;
    here they are the gradients with respect to the shared *parameters* (the problem MGDA-UB
    bounds, Section 3.3), which the training step computes anyway for every gradient weighting. The
    weights sum to 1, so the update is on the mean-loss scale. Algorithm 2 steps each task-specific
    part with its task's unweighted gradient; here each head's loss gets ``alpha_i``, like its share
    of the shared update (Algorithm 2's head step is ``K`` times the mean-loss scale).

    Args:
        max_iter, tol: Frank-Wolfe's iteration limit and stopping change (more than two tasks).
    """

    paper = "Sener & Koltun, \"Multi-Task Learning as Multi-Objective Optimization\" (NeurIPS 2018)"

    def __init__(self, n_tasks: int, max_iter: int = 250, tol: float = 1e-7):
        super().__init__(n_tasks)
        self.max_iter, self.tol = int(max_iter), float(tol)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = min_norm_weights(gram(grads), self.max_iter, self.tol).to(grads)
        return alpha @ grads, alpha


def nash_weights(m: torch.Tensor, max_iter: int = 100, tol: float = 1e-10, ridge: float = 1e-8) -> torch.Tensor:
    """The solution ``alpha > 0`` of ``m alpha = 1 / alpha`` (element-wise), ``m = G G^T`` (float64).

    It is the unique minimiser of the strictly convex ``f(alpha) = 1/2 alpha^T m alpha - sum_i log
    alpha_i`` (its gradient is ``m alpha - 1/alpha``), found by damped Newton steps (Hessian ``m +
    diag(1/alpha^2)``, backtracking that keeps ``alpha > 0`` and decreases ``f``), started at ``alpha_i =
    1 / ||g_i||`` (the solution for orthogonal gradients), until ``max_i |alpha_i (m alpha)_i - 1| <
    tol``. ``ridge`` scales the diagonal by ``1 + ridge`` so that ``f`` stays bounded below when zero is
    in the convex hull of the gradients (where the bargaining problem has no solution); its effect on
    the equation is of relative size ``ridge`` for every task, whatever its gradient's scale."""
    diag = m.diagonal().clamp(min=1e-30)
    m = m + ridge * torch.diag(diag)
    alpha = 1.0 / diag.sqrt()

    def f(a: torch.Tensor) -> float:
        return float(0.5 * a @ m @ a - torch.log(a).sum())

    for _ in range(max_iter):
        ma = m @ alpha
        if float((alpha * ma - 1.0).abs().max()) < tol:
            break
        grad = ma - 1.0 / alpha
        step = torch.linalg.solve(m + torch.diag(1.0 / alpha ** 2), grad)
        f0, slope, t = f(alpha), float(grad @ step), 1.0
        while t > 1e-12:
            new = alpha - t * step
            if bool((new > 0).all()) and f(new) <= f0 - 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            break
        alpha = new
    return alpha


@register_weighting("nash_mtl")
class NashMTL(GradientWeighting):
    """Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task Learning
    as a Bargaining Game" (ICML 2022), Section 3.

    The tasks bargain over the update ``d = sum_i alpha_i g_i``; the Nash bargaining solution has
    weights ``alpha > 0`` with ``(G^T G) alpha = 1 / alpha`` (Section 3), i.e. each task's
    directional derivative is ``g_i . d = 1 / alpha_i``. The paper approximates it by a sequence of
    convex problems solved with cvxpy, which is not installed here: :func:`nash_weights` solves the
    equation itself, exactly (to ``tol``), as the minimiser of a strictly convex function by Newton's
    method, at every step.

    Scale: the equation fixes the weights' scale (scaling every gradient by ``s`` scales ``alpha`` by
    ``1/s`` and leaves ``d`` unchanged), so Nash-MTL is not on the mean-loss scale of the other
    weightings; the authors clip the update's norm (the trainer's ``gradient_clip_val`` does that).

    Args:
        max_iter, tol: Newton's iteration limit and its tolerance on ``alpha_i (G^T G alpha)_i = 1``.
        ridge: the relative diagonal regulariser of :func:`nash_weights`.
    """

    paper = ("Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, \"Multi-Task Learning as a Bargaining "
             "Game\" (ICML 2022)")

    def __init__(self, n_tasks: int, max_iter: int = 100, tol: float = 1e-10, ridge: float = 1e-8):
        super().__init__(n_tasks)
        self.max_iter, self.tol, self.ridge = int(max_iter), float(tol), float(ridge)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = nash_weights(gram(grads), self.max_iter, self.tol, self.ridge).to(grads)
        return alpha @ grads, alpha
