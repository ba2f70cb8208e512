"""Gradient weightings that balance the task gradients in closed form: ``imtl`` (IMTL-G, Liu et al.
2021) and ``aligned_mtl`` (Senushkin et al. 2023).

Both update the shared parameters with ``sum_i alpha_i g_i`` and give the task-specific parameters'
losses the same weights ``alpha_i`` (the update the weights define, restricted to each head).
"""

from __future__ import annotations

import torch

from facebench.lightning_modules.weighting.base import GradientWeighting, gram, register_weighting


def imtl_weights(m: torch.Tensor) -> torch.Tensor:
    """IMTL-G's weights ``alpha [K]`` (summing to 1) from the Gram matrix ``m = G G^T`` (float64).

    With unit gradients ``u_i = g_i / ||g_i||``, the aggregate ``g = sum_i alpha_i g_i`` must have
    equal projections ``g . u_i`` on every ``u_i``: ``g . (u_1 - u_j) = 0`` for ``j = 2..K``. Writing
    ``g = g_1 - D alpha_{2:K}`` with ``D = [g_1 - g_2, ..., g_1 - g_K]`` and ``U = [u_1 - u_2, ...,
    u_1 - u_K]`` gives ``(U^T D) alpha_{2:K} = U^T g_1`` and ``alpha_1 = 1 - sum_{j>1} alpha_j`` (the
    paper's ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}`` in row-vector form). Every product is an entry of
    ``q = diag(1 / ||g_i||) m`` (``q_ik = u_i . g_k``)."""
    k = m.shape[0]
    if k == 1:
        return torch.ones(1, dtype=m.dtype, device=m.device)
    q = m / m.diagonal().clamp(min=1e-30).sqrt()[:, None]
    a = q[0, 0] - q[0, 1:][None, :] - q[1:, 0][:, None] + q[1:, 1:]       # (u_1 - u_j) . (g_1 - g_k)
    b = q[0, 0] - q[1:, 0]                                                 # (u_1 - u_j) . g_1
    try:
        rest = torch.linalg.solve(a, b)
    except RuntimeError:      # singular (two tasks with parallel gradients): least-norm solution
        rest = torch.linalg.pinv(a) @ b
    return torch.cat([(1.0 - rest.sum()).reshape(1), rest])


@register_weighting("imtl")
class IMTL(GradientWeighting):
    """IMTL-G, the gradient balance of impartial multi-task learning: Liu, Li, Kuang, Xue, Chen, Yang,
    Liao & Zhang, "Towards Impartial Multi-task Learning" (ICLR 2021), Section 3 (IMTL-G).

    The shared update ``g = sum_i alpha_i g_i`` (weights summing to 1: the mean-loss scale) has equal
    projections on every task's unit gradient, so that no task dominates the update's direction;
    the weights are the closed form of :func:`imtl_weights`. (The paper's IMTL-L, which learns loss
    scales, and the hybrid IMTL are not part of this weighting.)"""

    paper = ("Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, \"Towards Impartial Multi-task Learning\" (ICLR 2021), "
             "IMTL-G")

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = imtl_weights(gram(grads)).to(grads)
        return alpha @ grads, alpha


def alignment_matrix(m: torch.Tensor, rank_tol: float = 1e-10) -> torch.Tensor:
    """Aligned-MTL's ``B [K, K]`` from ``m = G G^T`` (float64): with the eigendecomposition ``m = V
    Lambda V^T``, ``B = sqrt(lambda_min) V Lambda^{-1/2} V^T`` over the eigenvalues above ``rank_tol *
    lambda_max`` (the gradient matrix's non-zero singular values). The aligned gradients ``B G`` (row
    ``i``: ``sum_j B_ij g_j``) are orthogonal with equal norms ``sqrt(lambda_min)``: ``(B G)(B G)^T =
    lambda_min I`` when ``G`` has full rank, a condition number of 1."""
    lam, v = torch.linalg.eigh(m)
    keep = lam > rank_tol * float(lam.max().clamp(min=0.0))
    if not bool(keep.any()):
        return torch.zeros_like(m)
    lam, v = lam[keep], v[:, keep]
    return float(lam.min().sqrt()) * (v / lam.sqrt()) @ v.T


@register_weighting("aligned_mtl")
class AlignedMTL(GradientWeighting):
    """Aligned-MTL: Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component Alignment for
    Multi-Task Learning" (CVPR 2023), Section 4 and Algorithm 1.

    The gradient matrix ``G`` is replaced by its principal-component alignment ``G^ = B G``
    (:func:`alignment_matrix`): the principal components of the task gradients rescaled to one
    length, the smallest singular value ``sigma_min`` of ``G``, so that the linear system has
    condition number 1 and no task dominates. The update is ``G^ w`` with the task weights ``w = 1/K``
    (equal preference, mean-loss scale), i.e. ``sum_i alpha_i g_i`` with ``alpha = B w``.

    Args:
        rank_tol: eigenvalues of ``G G^T`` below ``rank_tol * lambda_max`` count as zero.
    """

    paper = ("Senushkin, Patakin, Kuznetsov & Konushin, \"Independent Component Alignment for Multi-Task Learning\" "
             "(CVPR 2023)")

    def __init__(self, n_tasks: int, rank_tol: float = 1e-10):
        super().__init__(n_tasks)
        self.rank_tol = float(rank_tol)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = grads.shape[0]
        b = alignment_matrix(gram(grads), self.rank_tol)
        alpha = (b @ torch.full((k,), 1.0 / k, dtype=b.dtype, device=b.device)).to(grads)
        return alpha @ grads, alpha
