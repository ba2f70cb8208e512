"""Gradient weightings that keep moving averages of the per-task gradients: ``db_mtl`` (Lin et al.
2023) and ``moco`` (Fernando et al. 2023), written from their papers and LibMTL's implementations
(the defaults are LibMTL's command-line defaults).

Their state is one vector per task in the space of the shared parameters (a buffer ``[K, P]``, saved
in checkpoints), so they take ``mtl: {gradients: parameters}`` only (``state_in_gradient_space``): a
representation's gradient belongs to one batch's samples and cannot be averaged across steps. They
see every task's row: an absent task's (no label in the batch) gradient is zero, its moving average
is then left as it was and it sits out the step (weight 0).
"""

from __future__ import annotations

import torch

from facebench.lightning_modules.weighting.base import GradientWeighting, register_weighting


class _MovingAverageWeighting(GradientWeighting):
    """Shared by both: the ``[K, P]`` buffer (allocated at the first step, when ``P`` is known) and
    the step count."""

    state_in_gradient_space = True

    def __init__(self, n_tasks: int):
        super().__init__(n_tasks)
        self.register_buffer("average", torch.zeros(0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):   # noqa: ANN001 (torch's signature)
        key = prefix + "average"
        if key in state_dict:          # a checkpoint's buffer has its P; ours is empty until the first step
            self.average = torch.zeros_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _state(self, grads: torch.Tensor) -> torch.Tensor:
        if self.average.shape != grads.shape:
            self.average = torch.zeros_like(grads)
        self.steps += 1
        return self.average

    def combine_tasks(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        present = (grads != 0).any(dim=1)
        if not bool(present.any()):
            k = grads.shape[0]
            return torch.zeros_like(grads[0]), torch.full((k,), 1.0 / k, dtype=grads.dtype, device=grads.device)
        return self.combine_present(grads, losses, present)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.combine_tasks(grads, losses)

    def combine_present(self, grads: torch.Tensor, losses: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


@register_weighting("db_mtl")
class DualBalancing(_MovingAverageWeighting):
    """Dual-balancing multi-task learning (DB-MTL): Lin, Ye, Xu, Shi, Zhang & Kwok, "Dual-Balancing for
    Multi-Task Learning" (arXiv 2308.12029, 2023), Section 3, Algorithm 1.

    Loss-scale balancing: every task trains its log-loss, whose gradient is ``g_i / L_i``.
    Gradient-magnitude balancing: each task's log-loss gradient enters a moving average ``m_i <- b
    m_i + (1 - b) g_i / L_i`` with ``b = beta / t^sigma`` at step ``t``, and the update is ``sum_i
    (max_j ||m_j|| / ||m_i||) m_i``: every task's averaged gradient rescaled to the largest norm. That
    sum is divided by ``K`` here (the mean-loss scale). The task-specific parameters' losses are
    weighted ``1 / (K L_i)``: each head trains its own log-loss (LibMTL), on the same scale.

    Args:
        beta, beta_sigma: the moving average's ``beta`` and its decay exponent ``sigma``
            (LibMTL: 0.9 and 0).
        eps: added to the losses and to the norms (LibMTL: 1e-8).
    """

    paper = "Lin, Ye, Xu, Shi, Zhang & Kwok, \"Dual-Balancing for Multi-Task Learning\" (arXiv 2308.12029, 2023)"

    def __init__(self, n_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8):
        super().__init__(n_tasks)
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)

    def combine_present(self, grads: torch.Tensor, losses: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = grads.shape[0]
        average = self._state(grads)
        log_grads = grads / (losses.to(grads.dtype)[:, None] + self.eps)
        b = self.beta / float(self.steps) ** self.beta_sigma
        average[present] = log_grads[present] + b * (average[present] - log_grads[present])
        norms = average.norm(dim=1)
        scale = torch.where(present, norms[present].max() / (norms + self.eps), torch.zeros_like(norms))
        weights = torch.where(present, 1.0 / (k * (losses.to(grads.dtype) + self.eps)), torch.zeros_like(norms))
        return (scale @ average) / k, weights


@register_weighting("moco")
class MoCo(_MovingAverageWeighting):
    """MoCo: Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach" (ICLR 2023), Algorithm 1.

    MGDA's weights from stochastic gradients are biased; MoCo tracks each task's gradient with a
    moving average ``y_i <- y_i - b_t (y_i - g_i)`` and takes a projected gradient step on the weights,
    ``lambda <- softmax(lambda - c_t (Y Y^T + rho I) lambda)`` (LibMTL's softmax in place of the
    paper's projection onto the simplex), with ``b_t = beta / t^beta_sigma`` and ``c_t = gamma /
    t^gamma_sigma``; the update is ``Y^T lambda`` (weights on the simplex: the mean-loss scale). As in
    the authors' code (and LibMTL), each gradient is first normalised to the task's loss, ``g_i
    L_i / ||g_i||``. The task-specific parameters' losses get the weights ``lambda``.

    Args:
        beta, beta_sigma, gamma, gamma_sigma, rho: LibMTL's defaults 0.5, 0.5, 0.1, 0.5, 0.
    """

    paper = ("Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, \"Mitigating Gradient Bias in Multi-objective "
             "Learning: A Provably Convergent Approach\" (ICLR 2023)")

    def __init__(self, n_tasks: int, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1,
                 gamma_sigma: float = 0.5, rho: float = 0.0):
        super().__init__(n_tasks)
        self.beta, self.beta_sigma, self.gamma, self.gamma_sigma, self.rho = (
            float(beta), float(beta_sigma), float(gamma), float(gamma_sigma), float(rho))
        self.register_buffer("lambdas", torch.full((self.n_tasks,), 1.0 / self.n_tasks, dtype=torch.float64))

    def combine_present(self, grads: torch.Tensor, losses: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self._state(grads)
        t = float(self.steps)
        scaled = grads / (grads.norm(dim=1, keepdim=True) + 1e-8) * losses.to(grads.dtype)[:, None]
        y[present] = y[present] - self.beta / t ** self.beta_sigma * (y[present] - scaled[present])
        yy = (y @ y.T).double() + self.rho * torch.eye(len(y), dtype=torch.float64, device=y.device)
        logits = self.lambdas - self.gamma / t ** self.gamma_sigma * (yy @ self.lambdas)
        logits = logits.masked_fill(~present, float("-inf"))      # an absent task sits out
        self.lambdas = torch.softmax(logits, dim=0)
        weights = self.lambdas.to(grads.dtype)
        return weights @ y, weights
