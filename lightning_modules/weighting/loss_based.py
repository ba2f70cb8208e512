"""Loss weightings: one scalar from the task losses, with or without state.

``equal`` (the mean: the base task's loss and the default), ``uncertainty`` (Kendall et al. 2018),
``dwa`` (Liu et al. 2019), ``rlw`` (Lin et al. 2022), ``famo`` (Liu et al. 2023) and ``gradnorm``
(Chen et al. 2018; a loss weighting fitted on gradient norms of the last shared layer). All are on
the scale of the mean task loss (:mod:`facebench.lightning_modules.weighting.base`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from facebench.lightning_modules.weighting.base import LossWeighting, StepContext, ddp_mean, register_weighting, run_generator


@register_weighting("equal")
class Equal(LossWeighting):
    """Equal weights: the mean of the task losses, ``L = 1/K sum_i L_i``.

    With one task per target this is exactly the base task's loss (``losses.mean()``), the default
    of every method."""

    paper = ""   # the baseline every paper compares with

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return losses.mean(), torch.full_like(losses.detach(), 1.0 / self.n_tasks)


@register_weighting("uncertainty")
class Uncertainty(LossWeighting):
    """Homoscedastic uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using
    Uncertainty to Weigh Losses for Scene Geometry and Semantics" (CVPR 2018), Section 3.

    The paper weighs task ``i`` by a learnt noise ``sigma_i``: ``1 / (2 sigma_i^2) L_i + log sigma_i``
    for regression and ``1 / sigma_i^2 L_i + log sigma_i`` for classification. We use
    the common form in the log-variance ``s_i = log sigma_i^2`` (learnt instead of ``sigma_i`` for
    numerical stability, as the paper does), one form for every task kind:

        L = 1/K sum_i ( exp(-s_i) L_i + s_i ),

    whose minimum over ``s_i`` for fixed losses is ``s_i* = log L_i`` (weight ``exp(-s_i) = 1 / L_i``).
    The ``1/K`` puts it on the mean-loss scale and leaves ``s*`` unchanged. ``log_vars`` is a
    parameter of the module: the method's optimiser trains it (with the method's weight decay).

    Args:
        init: initial log-variance of every task (0: weights 1, i.e. the mean loss at the start).
    """

    paper = ("Kendall, Gal & Cipolla, \"Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and "
             "Semantics\" (CVPR 2018)")

    def __init__(self, n_tasks: int, init: float = 0.0):
        super().__init__(n_tasks)
        self.log_vars = nn.Parameter(torch.full((self.n_tasks,), float(init)))

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.log_vars.to(losses.dtype)
        precision = torch.exp(-s)
        return (precision * losses + s).mean(), (precision / self.n_tasks).detach()


@register_weighting("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention"
    (CVPR 2019), Section 3, "Dynamic Weight Average".

    From the epoch averages ``L_k(t)`` of each task's training loss, the relative descending rate
    ``w_k(t-1) = L_k(t-1) / L_k(t-2)`` gives ``lambda_k(t) = K exp(w_k(t-1) / T) / sum_i exp(w_i(t-1)
    / T)`` with temperature ``T = 2``; ``lambda_k = 1`` for the first two epochs. Here ``L =
    1/K sum_k lambda_k L_k`` (the mean-loss scale).

    The epoch averages are the mean of the step losses over the epoch's steps and the DDP ranks
    (summed over ranks when an epoch closes, i.e. at the first step of the next epoch, which every
    rank reaches together); the last two are buffers, so a resumed run keeps them.

    Args:
        temperature: ``T`` (paper: 2); larger is closer to equal weights.
    """

    paper = "Liu, Johns & Davison, \"End-to-End Multi-Task Learning with Attention\" (CVPR 2019)"

    def __init__(self, n_tasks: int, temperature: float = 2.0):
        super().__init__(n_tasks)
        if temperature <= 0:
            raise ValueError(f"dwa: temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("epoch_losses", torch.zeros(2, self.n_tasks, dtype=torch.float64))   # [L(t-2), L(t-1)]
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))
        self._epoch: int | None = None
        self._sum: torch.Tensor | None = None      # this epoch's running sums: plain attributes, so that
        self._count = 0                           # DDP's buffer broadcast never overwrites a rank's own

    def _close_epoch(self) -> None:
        assert self._sum is not None
        totals = torch.cat([self._sum, self._sum.new_tensor([float(self._count)])])
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        if float(totals[-1]) > 0:
            self.epoch_losses[0] = self.epoch_losses[1]
            self.epoch_losses[1] = (totals[:-1] / totals[-1]).to(self.epoch_losses)
            self.epochs_seen += 1

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = ctx.epoch if ctx is not None else 0
        if self._epoch is not None and epoch != self._epoch:
            self._close_epoch()
            self._sum, self._count = None, 0
        self._epoch = epoch
        if self._sum is None:
            self._sum = torch.zeros(self.n_tasks, dtype=torch.float64, device=losses.device)
        self._sum += losses.detach().double()
        self._count += 1
        if int(self.epochs_seen) < 2:
            weights = torch.full_like(losses.detach(), 1.0 / self.n_tasks)
        else:
            rate = self.epoch_losses[1] / self.epoch_losses[0].clamp(min=1e-12)
            weights = torch.softmax(rate / self.temperature, dim=0).to(losses)
        return (weights * losses).sum(), weights


@register_weighting("rlw")
class RandomLossWeighting(LossWeighting):
    """Random loss weighting: Lin, Ye, Zhang & Tsang, "Reasonable Effectiveness of Random
    Weighting: A Litmus Test for Multi-Task Learning" (TMLR 2022).

    At every step the weights are ``lambda = softmax(eps)``, ``eps ~ N(0, I_K)`` (the paper's normal
    sampling distribution), and ``L = sum_k lambda_k L_k`` (already on the mean-loss scale: the
    weights sum to 1). The samples come from a generator seeded with ``seed``, the same on every DDP
    rank, so all ranks draw the same weights (a resumed run restarts the sequence).

    Args:
        seed: seed of the weights' generator; ``None`` (default): the run's seed (:func:`run_generator`).
    """

    paper = ("Lin, Ye, Zhang & Tsang, \"Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task "
             "Learning\" (TMLR 2022)")

    def __init__(self, n_tasks: int, seed: int | None = None):
        super().__init__(n_tasks)
        self.seed, self.generator = run_generator(seed)

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(self.n_tasks, generator=self.generator, dtype=torch.float64)
        weights = torch.softmax(eps, dim=0).to(losses)
        return (weights * losses).sum(), weights


@register_weighting("famo")
class FAMO(LossWeighting):
    """Fast Adaptive Multitask Optimization: Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask
    Optimization" (NeurIPS 2023), Section 3 and Algorithm 1.

    Task logits ``xi`` (zero at the start) give ``z = softmax(xi)``; the step descends

        c sum_i z_i log(l_i - b_i),   c = (sum_i z_i / (l_i - b_i))^{-1}   (treated as a constant),

    i.e. its gradient ``sum_i w_i grad l_i`` with ``w_i = c z_i / (l_i - b_i)`` (weights summing to
    1: the mean-loss scale). The training loss here is ``sum_i w_i l_i`` with ``w`` detached: the
    same gradient, and a loss value that reads like the others. After the step, the decrease of each
    log-loss, ``delta_i = log(l_i,t - b_i) - log(l_i,t+1 - b_i)``, updates the logits: ``xi <- xi -
    beta (J_z^T delta + gamma xi)`` with ``J_z`` the softmax Jacobian (``J_z^T delta = z * (delta -
    z . delta)``), so the tasks whose loss fell least gain weight.

    Algorithm 1 writes a plain gradient step for ``xi``; the authors' code takes it with Adam
    (learning rate ``beta``, ``gamma`` as its weight decay), which is ``update: adam`` (the default)
    here; ``update: sgd`` is Algorithm 1 as written. ``measure: same_batch`` (default) takes
    ``l_t+1`` on the step's own batch right after the optimiser step (a forward pass without gradients,
    batch-norm statistics restored afterwards, as the authors do); ``next_batch`` uses the next
    step's losses instead (no extra forward pass, but the decrease then mixes in the change of batch).
    Losses are averaged over DDP ranks, so every rank keeps the same logits.

    Args:
        lr: ``beta`` (paper: 0.025). weight_decay: ``gamma`` (paper: 0.001).
        min_losses: ``b_i``, a lower bound of every task loss (0 for cross-entropy).
        update: ``"adam"`` or ``"sgd"``. measure: ``"same_batch"`` or ``"next_batch"``.
    """

    paper = "Liu, Feng, Stone & Liu, \"FAMO: Fast Adaptive Multitask Optimization\" (NeurIPS 2023)"

    def __init__(self, n_tasks: int, lr: float = 0.025, weight_decay: float = 1e-3, min_losses: float = 0.0,
                 update: str = "adam", measure: str = "same_batch", eps: float = 1e-8):
        super().__init__(n_tasks)
        if update not in ("adam", "sgd"):
            raise ValueError(f"famo: update must be 'adam' or 'sgd', got {update!r}")
        if measure not in ("same_batch", "next_batch"):
            raise ValueError(f"famo: measure must be 'same_batch' or 'next_batch', got {measure!r}")
        self.lr, self.weight_decay, self.min_losses, self.eps = float(lr), float(weight_decay), float(min_losses), float(eps)
        self.update, self.measure = update, measure
        self.wants_losses_after_step = measure == "same_batch"
        self.register_buffer("logits", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("exp_avg", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("exp_avg_sq", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_losses", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("has_last", torch.zeros((), dtype=torch.bool))

    def _shifted(self, losses: torch.Tensor) -> torch.Tensor:
        return (losses.double() - self.min_losses).clamp(min=self.eps)

    @torch.no_grad()
    def _update_logits(self, new_losses: torch.Tensor) -> None:
        if not bool(self.has_last):
            return
        delta = torch.log(self.last_losses) - torch.log(self._shifted(new_losses.to(self.logits.device)))
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum()) + self.weight_decay * self.logits
        if self.update == "sgd":
            self.logits -= self.lr * grad
        else:   # Adam (Kingma & Ba), its default betas and epsilon
            b1, b2 = 0.9, 0.999
            self.steps += 1
            t = int(self.steps)
            self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
            self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (self.exp_avg_sq / (1 - b2 ** t)).sqrt() + 1e-8
            self.logits -= self.lr * (self.exp_avg / (1 - b1 ** t)) / denom
        self.has_last.fill_(False)

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        current = ddp_mean(losses.detach())
        if self.measure == "next_batch":
            self._update_logits(current)
        shifted = self._shifted(current)
        z = torch.softmax(self.logits, dim=0)
        c = 1.0 / (z / shifted).sum()
        weights = (c * z / shifted).to(losses)
        self.last_losses.copy_(shifted)
        self.has_last.fill_(True)
        return (weights * losses).sum(), weights

    def after_step(self, losses: torch.Tensor) -> None:
        self._update_logits(losses)


@register_weighting("gradnorm")
class GradNorm(LossWeighting):
    """GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
    Adaptive Loss Balancing in Deep Multitask Networks" (ICML 2018), Section 3 and Algorithm 1.

    Learnt weights ``w_i`` (1 at the start) weigh the losses. On ``W``, the weights of the last
    shared layer, ``G_i = ||grad_W w_i L_i||`` and their mean ``G_bar``; with the inverse training
    rates ``r_i = L~_i / mean_j L~_j``, ``L~_i = L_i(t) / L_i(0)``, the gradient loss ``L_grad =
    sum_i |G_i - G_bar r_i^alpha|`` (its target ``G_bar r_i^alpha`` held constant) is
    differentiated with respect to the ``w_i`` only, and after each step the weights are
    renormalised to sum to ``K`` (done at the start of the next step, before they are used).

    The network gets the gradient of ``1/K sum_i w_i L_i`` (the mean-loss scale); the ``w_i`` get
    the gradient of ``L_grad`` (the returned loss carries it with a value of exactly zero, so the
    logged loss is the weighted loss). ``W`` is the last parameter with at least two dimensions among
    the method's ``shared_parameters()`` (a layer's weight, not a bias or a norm's scale). The
    gradients on ``W`` and the losses are averaged over DDP ranks before use, and ``L_i(0)`` (the
    first step's losses) is a buffer.

    Args:
        alpha: the asymmetry ``alpha`` (paper: 0.12 to 1.5 by problem; larger pulls the training
            rates together harder).
    """

    paper = ("Chen, Badrinarayanan, Lee & Rabinovich, \"GradNorm: Gradient Normalization for Adaptive Loss Balancing in "
             "Deep Multitask Networks\" (ICML 2018)")

    needs_shared = True

    def __init__(self, n_tasks: int, alpha: float = 1.5):
        super().__init__(n_tasks)
        self.alpha = float(alpha)
        self.task_weights = nn.Parameter(torch.ones(self.n_tasks))
        self.register_buffer("initial_losses", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("has_initial", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def last_shared_layer(shared: list[nn.Parameter]) -> nn.Parameter:
        layers = [p for p in shared if p.requires_grad and p.dim() >= 2]
        if not layers:
            raise ValueError("gradnorm: the method's shared_parameters() hold no trainable layer weight "
                             "(a parameter with at least 2 dimensions)")
        return layers[-1]

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx is None:
            raise ValueError("gradnorm needs the step context (the shared parameters)")
        with torch.no_grad():   # Algorithm 1's renormalisation of the previous step's update
            self.task_weights.clamp_(min=1e-6)
            self.task_weights.mul_(self.n_tasks / self.task_weights.sum())
        layer = self.last_shared_layer(list(ctx.shared()))
        norms = []
        for i in range(self.n_tasks):
            (g,) = torch.autograd.grad(losses[i], layer, retain_graph=True, allow_unused=True)
            norms.append(torch.zeros_like(layer).reshape(-1) if g is None else g.reshape(-1))
        norms = ddp_mean(torch.stack(norms)).norm(dim=1).to(losses.dtype)       # ||grad_W L_i|| [K]
        current = ddp_mean(losses.detach()).double()
        if not bool(self.has_initial):
            self.initial_losses.copy_(current)
            self.has_initial.fill_(True)
        ratio = current / self.initial_losses.clamp(min=1e-12)
        rate = (ratio / ratio.mean()).to(losses.dtype)
        w = self.task_weights.to(losses.dtype)
        g_norms = w * norms
        target = (g_norms.mean() * rate ** self.alpha).detach()
        grad_loss = (g_norms - target).abs().sum()
        weights = (w / self.n_tasks).detach()
        loss = (weights * losses).sum()
        return loss + (grad_loss - grad_loss.detach()), weights

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, alpha={self.alpha}"


@register_weighting("gls")
class GeometricLoss(LossWeighting):
    """Geometric loss strategy: Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning" (CVPR Workshops 2019),
    Section 3.2.

    ``L = (prod_i L_i)^(1/K)``, the geometric mean of the task losses, computed as ``exp(mean_i log
    L_i)`` (the product of 40 small losses underflows float32). Its gradient is ``sum_i w_i grad
    L_i`` with ``w_i = L / (K L_i)``: a task's weight is inverse to its loss, so every task's
    relative decrease counts the same; equal losses give ``1/K`` each (the mean-loss scale).

    Args:
        eps: added to every loss before the logarithm (a zero loss).
    """

    paper = ("Chennupati, Sistu, Yogamani & Rawashdeh, \"MultiNet++: Multi-Stream Feature Aggregation and Geometric "
             "Loss Strategy for Multi-Task Learning\" (CVPR Workshops 2019)")

    def __init__(self, n_tasks: int, eps: float = 1e-12):
        super().__init__(n_tasks)
        self.eps = float(eps)

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        loss = torch.exp(torch.log(losses + self.eps).mean())
        return loss, (loss / (self.n_tasks * (losses + self.eps))).detach()


@register_weighting("stch")
class SmoothTchebycheff(LossWeighting):
    """Smooth Tchebycheff scalarisation: Lin, Zhang, Zhang, Liu, Zhang & Zhang, "Smooth Tchebycheff
    Scalarization for Multi-Objective Optimization" (ICML 2024), Section 3, as its multi-task code
    and LibMTL apply it.

    The Tchebycheff scalarisation ``max_i (f_i - z_i)`` trains the worst task; its smooth form
    ``mu log sum_i exp((f_i - z_i) / mu)`` is differentiable and tends to it as ``mu -> 0``. On
    losses of different scales the objectives are ``f_i = log(L_i / n_i)``, the log-loss relative to
    a reference ``n_i``, the mean loss of the warm-up epochs, and the ideal point ``z`` is 0 in these
    units. During the warm-up the training loss is ``1/K sum_i log L_i`` (every task's log-loss alike);
    then ``L = mu (log sum_i exp(f_i / mu) - log K)``, whose weights are ``softmax_i(f / mu) / L_i``:
    at equal relative losses ``1 / (K L_i)``, as in the warm-up, and the more weight the worse a task
    does relative to its reference. LibMTL sums the log-losses and multiplies the objective by ``K``;
    dividing both by ``K`` puts them on the mean-loss scale (:mod:`facebench.lightning_modules.weighting.base`),
    and the constant ``- log K`` makes equal objectives give ``L = f``.

    The reference is the mean over the warm-up epochs' steps of the losses averaged over the DDP
    ranks, kept in buffers (a resumed run keeps it).

    Args:
        mu: the smoothing (default 1.0; the paper tunes it per problem); smaller is closer to
            training the worst task alone.
        warmup_epochs: epochs of log-loss training that fix the reference losses (at least 1).
        eps: added to the losses before the logarithm.
    """

    paper = ("Lin, Zhang, Zhang, Liu, Zhang & Zhang, \"Smooth Tchebycheff Scalarization for Multi-Objective "
             "Optimization\" (ICML 2024)")

    def __init__(self, n_tasks: int, mu: float = 1.0, warmup_epochs: int = 1, eps: float = 1e-20):
        super().__init__(n_tasks)
        if mu <= 0 or int(warmup_epochs) < 1:
            raise ValueError(f"stch: mu must be positive and warmup_epochs at least 1, got {mu}, {warmup_epochs}")
        self.mu, self.warmup_epochs, self.eps = float(mu), int(warmup_epochs), float(eps)
        self.register_buffer("reference_sum", torch.zeros(self.n_tasks, dtype=torch.float64))
        self.register_buffer("reference_count", torch.zeros((), dtype=torch.long))

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        epoch = ctx.epoch if ctx is not None else 0
        logs = torch.log(losses + self.eps)
        if epoch < self.warmup_epochs or int(self.reference_count) == 0:
            self.reference_sum += ddp_mean(losses.detach()).double()
            self.reference_count += 1
            return logs.mean(), (1.0 / (self.n_tasks * (losses.detach() + self.eps)))
        reference = (self.reference_sum / self.reference_count).to(losses.dtype)
        f = logs - torch.log(reference + self.eps)
        loss = self.mu * (torch.logsumexp(f / self.mu, dim=0) - math.log(self.n_tasks))
        return loss, torch.softmax(f.detach() / self.mu, dim=0) / (losses.detach() + self.eps)
