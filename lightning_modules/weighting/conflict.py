"""Gradient weightings that resolve conflicts around the average gradient: ``pcgrad`` (Yu et al.
2020) and ``cagrad`` (Liu et al. 2021).

Both change the *shared* parameters' update only: a task-specific parameter's gradient involves its
own task alone, so it has nothing to conflict with, and its loss keeps the weight of the average
(``1/K``, the mean-loss scale of :mod:`facebench.lightning_modules.weighting.base`).
"""

from __future__ import annotations

import numpy as np
import torch

from facebench.lightning_modules.weighting.base import GradientWeighting, gram, register_weighting, run_generator


def project_conflicting(grads: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """PCGrad's projection (Yu et al. 2020, Algorithm 1): for every task ``i``, in a random order of
    the other tasks ``j``, whenever ``g_i^PC . g_j < 0`` replace ``g_i^PC`` by its projection on the
    normal plane of ``g_j``: ``g_i^PC <- g_i^PC - (g_i^PC . g_j / ||g_j||^2) g_j``. Returns the
    projected gradients ``[K, P]`` (projections are onto the *original* ``g_j``, as in the paper)."""
    k = grads.shape[0]
    out = grads.clone()
    sq = (grads * grads).sum(dim=1)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i or float(sq[j]) == 0.0:
                continue
            dot = out[i] @ grads[j]
            if float(dot) < 0.0:
                out[i] = out[i] - (dot / sq[j]) * grads[j]
    return out


@register_weighting("pcgrad")
class PCGrad(GradientWeighting):
    """Projecting Conflicting Gradients: Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery
    for Multi-Task Learning" (NeurIPS 2020), Algorithm 1.

    Each task gradient is projected off the gradients it conflicts with
    (:func:`project_conflicting`), the other tasks taken in a random order drawn anew at every step
    and for every task; the update is the sum of the projected gradients, divided by ``K`` here (the
    mean-loss scale). The order comes from a generator seeded with ``seed``: every DDP rank draws the
    same orders from the same (averaged) gradients.

    Args:
        seed: seed of the task-order generator; ``None`` (default): the run's seed (:func:`run_generator`).
    """

    paper = ("Yu, Kumar, Gupta, Levine, Hausman & Finn, \"Gradient Surgery for Multi-Task Learning\" "
             "(NeurIPS 2020)")

    def __init__(self, n_tasks: int, seed: int | None = None):
        super().__init__(n_tasks)
        self.seed, self.generator = run_generator(seed)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = grads.shape[0]
        projected = project_conflicting(grads, self.generator)
        return projected.sum(dim=0) / k, torch.full((k,), 1.0 / k, dtype=grads.dtype, device=grads.device)


def cagrad_direction_weights(m: np.ndarray, c: float) -> np.ndarray:
    """Coefficients ``a [K]`` of CAGrad's update ``d = sum_i a_i g_i`` from the Gram matrix ``m =
    G G^T`` (Liu et al. 2021, Section 3 and Algorithm 1).

    With ``g_0`` the average gradient and ``phi = c^2 ||g_0||^2``, the dual ``min_{w in simplex}
    g_w . g_0 + sqrt(phi) ||g_w||`` (``g_w = sum_i w_i g_i``) is solved by SLSQP on the simplex (in
    inner products only: ``g_w . g_0 = w . m 1/K``, ``||g_w||^2 = w^T m w``); the update is ``d = g_0 +
    sqrt(phi) / ||g_w|| g_w``, i.e. ``a = 1/K + sqrt(phi) / ||g_w|| w``."""
    from scipy.optimize import minimize

    k = m.shape[0]
    b = m.mean(axis=1)                       # g_i . g_0
    g0_sq = max(float(b.mean()), 0.0)        # ||g_0||^2
    sqrt_phi = c * np.sqrt(g0_sq)
    if sqrt_phi == 0.0 or k == 1:
        return np.full(k, 1.0 / k)

    def objective(w: np.ndarray) -> float:
        return float(w @ b + sqrt_phi * np.sqrt(max(w @ m @ w, 0.0) + 1e-20))

    def gradient(w: np.ndarray) -> np.ndarray:
        return b + sqrt_phi * (m @ w) / np.sqrt(max(w @ m @ w, 0.0) + 1e-20)

    res = minimize(objective, np.full(k, 1.0 / k), jac=gradient, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                   constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
                   options={"maxiter": 200, "ftol": 1e-12})
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum()
    gw_norm = np.sqrt(max(w @ m @ w, 0.0))
    if gw_norm == 0.0:
        return np.full(k, 1.0 / k)
    return 1.0 / k + (sqrt_phi / gw_norm) * w


@register_weighting("cagrad")
class CAGrad(GradientWeighting):
    """Conflict-Averse Gradient descent: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient
    Descent for Multi-task Learning" (NeurIPS 2021), Section 3 and Algorithm 1.

    The update maximises the worst task's local improvement within a ball of radius ``c ||g_0||``
    around the average gradient ``g_0`` (:func:`cagrad_direction_weights`); ``c = 0`` is the average
    gradient, larger ``c`` moves towards MGDA's min-norm direction. The paper's update is used as
    written (``d = g_0 + sqrt(phi) / ||g_w|| g_w``, mean-loss scale); ``rescale: true`` divides it by
    ``1 + c^2`` (an option of the authors' implementation, not in the paper).

    Args:
        c: the ball's radius relative to ``||g_0||`` (paper: 0.4 for the vision benchmarks).
        rescale: divide the update by ``1 + c^2``.
    """

    paper = "Liu, Liu, Jin, Stone & Liu, \"Conflict-Averse Gradient Descent for Multi-task Learning\" (NeurIPS 2021)"

    def __init__(self, n_tasks: int, c: float = 0.4, rescale: bool = False):
        super().__init__(n_tasks)
        if c < 0:
            raise ValueError(f"cagrad: c must be non-negative, got {c}")
        self.c, self.rescale = float(c), bool(rescale)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = grads.shape[0]
        a = cagrad_direction_weights(gram(grads).cpu().numpy(), self.c)
        if self.rescale:
            a = a / (1.0 + self.c ** 2)
        coeffs = torch.as_tensor(a, dtype=grads.dtype, device=grads.device)
        return coeffs @ grads, torch.full((k,), 1.0 / k, dtype=grads.dtype, device=grads.device)
