"""The weighting registry and the two kinds of weighting every family module builds on.

A *weighting* decides how the losses of several tasks that share a network train it. It is an
``nn.Module`` (learnable parameters, such as uncertainty weighting's log-variances, are then saved
in checkpoints and optimised by the method's optimiser; running state lives in buffers):

* :class:`LossWeighting` turns the task-loss vector ``[K]`` into one scalar, possibly with state
  across steps or epochs (``equal``, ``uncertainty``, ``dwa``, ``rlw``, ``famo``, ``gradnorm``).
* :class:`GradientWeighting` sees each task's gradient with respect to the parameters all tasks
  share, ``G [K, P]``, and returns the combined shared gradient ``[P]`` and the weights ``[K]``
  that the task-specific parameters' losses get (``pcgrad``, ``mgda``, ``cagrad``, ``imtl``,
  ``nash_mtl``, ``aligned_mtl``). How the combination reaches the optimiser (and DDP) is
  :mod:`facebench.lightning_modules.weighting.objective`.

Scale. Every weighting is expressed on the scale of the *mean* task loss, the base task's loss
(equal weights sum to 1), so that one learning rate serves every weighting: a paper whose weights
sum to K (DWA, GradNorm) or that sums task gradients (PCGrad) is divided by K here, which changes
the step size only, never the direction. Nash-MTL, whose weights are fixed in scale by its
equation, is the exception (said in its docstring).

DDP. Per-task gradients are taken with ``torch.autograd.grad``, which DDP's reducer does not see:
:func:`ddp_mean` averages them (and any loss statistic that a weighting keeps as state) over the
ranks, so that every rank computes the same weights from the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from facebench.core.config import check_options, constructor_options
from facebench.core.registry import Registry


def _load_all() -> None:
    from facebench.lightning_modules.weighting import balance, conflict, loss_based, momentum, pareto, peer  # noqa: F401


WEIGHTINGS: Registry[type["Weighting"]] = Registry("weighting", loader=_load_all, name_attribute="weighting_name")
#: Class decorator registering a :class:`Weighting` by name.
register_weighting = WEIGHTINGS.register
weighting_names = WEIGHTINGS.names


def create_weighting(name: str, n_tasks: int, **kwargs: Any) -> "Weighting":
    """Instantiate a registered weighting for ``n_tasks`` tasks; unknown keyword arguments are named
    in a ``ValueError`` with the allowed ones."""
    cls = WEIGHTINGS.get(name)
    check_options(f"weighting {name!r}", kwargs, cls.option_names())
    return cls(n_tasks, **kwargs)


def weighting_rows() -> list[dict[str, str]]:
    """One row per registered weighting, for ``facebench list weightings``: ``name``, ``kind``
    (``loss`` or ``gradient``), ``implementation`` (``facebench`` or the peer library ``torchjd``),
    ``paper`` (the citation) and ``summary`` (the first paragraph of its docstring)."""
    rows = []
    for name, cls in WEIGHTINGS.items():
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        rows.append({"name": name, "kind": "gradient" if cls.gradient_based else "loss",
                     "implementation": cls.implementation, "paper": cls.paper, "summary": doc})
    return rows


def run_generator(seed: int | None) -> tuple[int, torch.Generator]:
    """``(seed, generator)`` for a weighting's random draws; ``seed=None`` takes the run's seed
    (``torch.initial_seed()`` when the weighting is built, which ``seed_everything`` makes the same
    on every DDP rank), so that every rank draws the same values and each seed of a suite its own."""
    seed = int(torch.initial_seed() if seed is None else seed) % (2 ** 63)
    return seed, torch.Generator().manual_seed(seed)


def ddp_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over the DDP ranks (``t`` itself outside DDP). Every rank gets the same
    tensor, bit for bit, so weights computed from it agree on every rank."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.detach().clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / dist.get_world_size()
    return t.detach()


@dataclass
class StepContext:
    """What a weighting may read besides the losses: the training epoch (DWA), the parameters all
    tasks share (GradNorm's last shared layer), fetched only when asked for, and the shared
    representation when the gradients are taken on it."""

    epoch: int = 0
    shared: Callable[[], Sequence[nn.Parameter]] = field(default=lambda: [])
    #: The shared representation of the batch (``mtl: {gradients: representation}``), else ``None``.
    representation: torch.Tensor | None = None


class Weighting(nn.Module):
    """Base of every weighting: ``n_tasks`` tasks, in the order of the task-loss vector.

    Class attributes say what the training step must provide: ``gradient_based`` (per-task
    gradients on the shared parameters), ``needs_shared`` (the shared parameters themselves),
    ``wants_losses_after_step`` (the task losses of the same batch after the optimiser step).
    """

    weighting_name: ClassVar[str] = ""
    #: The publication the weighting implements: authors, title, venue and year.
    paper: ClassVar[str] = ""
    #: Whose code computes it: ``facebench`` (this package) or ``torchjd`` (the peer library's aggregator).
    implementation: ClassVar[str] = "facebench"
    gradient_based: ClassVar[bool] = False
    needs_shared: ClassVar[bool] = False
    wants_losses_after_step: ClassVar[bool] = False

    def __init__(self, n_tasks: int):
        super().__init__()
        if int(n_tasks) < 1:
            raise ValueError(f"{type(self).__name__}: n_tasks must be at least 1, got {n_tasks}")
        self.n_tasks = int(n_tasks)

    @classmethod
    def option_names(cls) -> set[str]:
        """The keyword arguments ``mtl: {weighting: NAME, ...}`` may give (default: the constructor's)."""
        return constructor_options(cls, Weighting, skip=("self", "n_tasks"))

    def after_step(self, losses: torch.Tensor) -> None:
        """The task losses ``[K]`` (DDP-averaged, detached) of the step's batch after the optimiser
        step; called only when ``wants_losses_after_step``."""

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}"


class LossWeighting(Weighting):
    """Combines the task losses into one training loss."""

    def forward(self, losses: torch.Tensor, ctx: StepContext | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``losses [K]`` (with their graph) -> (scalar loss to minimise, weights ``[K]`` for logging)."""
        raise NotImplementedError


class GradientWeighting(Weighting):
    """Combines the per-task gradients on what the tasks share: the shared parameters (``mtl:
    {gradients: parameters}``, the papers' definition) or the shared representation (``gradients:
    representation``, MGDA-UB's approximation; :mod:`facebench.lightning_modules.weighting.jacobian`).

    ``state_in_gradient_space``: the weighting keeps per-task gradients across steps (DB-MTL's and
    MoCo's moving averages); those live in the parameter space only (a representation is another
    batch's at every step), so such a weighting refuses ``gradients: representation``."""

    gradient_based = True
    state_in_gradient_space: ClassVar[bool] = False

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``grads [K, N]`` (task ``k``'s gradient on the flattened shared parameters or
        representation, DDP-reduced) and ``losses [K]`` (detached, averaged) -> (the combined shared
        gradient ``[N]``, the weights ``[K]`` of the task-specific parameters' losses). Gets only the
        tasks present in the step (:meth:`combine_tasks`)."""
        raise NotImplementedError

    def combine_tasks(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`combine` over every task: tasks whose gradient is zero on every rank (none of their
        targets labelled in the batch) sit out the step with weight 0 (a zero gradient is an absent
        task, not a converged one: MGDA would otherwise stop every task, Nash-MTL and IMTL would
        divide by zero). Weightings with state per task override this to see every row."""
        k = grads.shape[0]
        active = (grads != 0).any(dim=1).nonzero().flatten()
        if len(active) == 0:
            return torch.zeros_like(grads[0]), torch.full((k,), 1.0 / k, dtype=grads.dtype, device=grads.device)
        if len(active) == k:
            shared, weights = self.combine(grads, losses)
            return shared, weights.to(grads.dtype)
        shared, w_active = self.combine(grads[active], losses[active])
        weights = torch.zeros(k, dtype=grads.dtype, device=grads.device)
        weights[active] = w_active.detach().to(grads.dtype)
        return shared, weights


def gram(grads: torch.Tensor) -> torch.Tensor:
    """``G G^T`` in float64 (``[K, K]``): the solvers work on the task gradients' inner products."""
    return (grads @ grads.T).double()


def min_norm_two(v11: torch.Tensor | float, v12: torch.Tensor | float, v22: torch.Tensor | float) -> float:
    """The weight ``gamma`` of ``v1`` in the min-norm point ``gamma v1 + (1 - gamma) v2`` of the segment
    between two vectors, from their inner products (Sener & Koltun 2018, Algorithm 1):
    ``gamma = clip((v2 - v1) . v2 / ||v1 - v2||^2, 0, 1)``."""
    v11, v12, v22 = float(v11), float(v12), float(v22)
    denom = v11 - 2.0 * v12 + v22
    if denom <= 0.0:       # v1 == v2: every point of the segment is the same vector
        return 0.5
    return min(1.0, max(0.0, (v22 - v12) / denom))
