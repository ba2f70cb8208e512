"""Per-task gradients for the gradient weightings: where they are taken (the shared parameters or the
shared representation), how (one batched backward pass or one pass per task), and how they are
reduced over DDP ranks and handed back to the optimiser.

* :func:`task_jacobian`: the Jacobian ``[K, N]`` of the ``K`` task losses with respect to some
  tensors, flattened. ``batched``: one vectorised backward pass, ``torch.autograd.grad(losses,
  inputs, grad_outputs=I_K, is_grads_batched=True)`` (vmap over the backward graph, which the
  forward pass built once); ``loop``: one ``torch.autograd.grad`` per task on the same graph. Both give
  the same rows to float tolerance (tests/test_mtl_gradients.py). ``auto`` picks ``batched`` on
  accelerators, and on the CPU ``loop`` for the shared parameters and ``batched`` for the shared
  representation: through the trunk, vmap's backward runs the convolution and batch-norm backward
  kernels once per task all the same (their batching rules fall back to a per-task loop) and then
  stacks the results, 1.6x the loop's time for ``mtl_cnn`` at 40 tasks; through the small heads the
  one vmapped pass is the faster (benchmarks/perf/RESULTS.md, "Multi-task weightings: per-task
  gradients"). Either way the per-task gradients on the parameters cost ``K`` backward passes of the
  trunk's arithmetic: vectorising saves launches and Python, which matter on accelerators, not
  arithmetic, which is what a CPU spends.
* :class:`ParameterGradients` (``mtl: {gradients: parameters}``, the default and the papers'
  definition): rows are the gradients on the flattened shared parameters (``P`` columns), averaged
  over the ranks (:func:`~facebench.lightning_modules.weighting.base.ddp_mean`).
* :class:`RepresentationGradients` (``gradients: representation``): rows are the gradients on the
  shared representation ``h``, the output of the layers all tasks share (MGDA-UB, Sener & Koltun
  2018, sec. 3.3; LibMTL's ``rep_grad``). The per-task backward passes then run through the heads
  only and the trunk is traversed once, by the combined gradient. It is an approximation: a
  weighting sees ``dL_k/dh`` instead of ``dL_k/dtheta = (dh/dtheta)^T dL_k/dh``, so inner products
  and norms (MGDA's min-norm point, PCGrad's conflicts) are those of the representation's gradients,
  not of the parameters' (Sener & Koltun bound the one by the other, Theorem 1, for MGDA only).
  Under DDP the representation of the global batch is every rank's ``h`` side by side: the rows
  are gathered from all ranks (``[K, sum_r n_r]``, each rank's block divided by the number of ranks,
  the gradient of the global mean loss), combined on every rank alike, and each rank takes its own
  block back.

Both hand the combination back the same way (:mod:`facebench.lightning_modules.weighting.objective`): a
``surrogate(c)`` term of value zero whose backward adds ``c`` to the gradient of what the rows were
taken on, so that DDP's all-reduce of the parameters' gradients yields the combined gradient.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn

from facebench.lightning_modules.weighting.base import ddp_mean

#: How :func:`task_jacobian` takes the rows.
JACOBIAN_MODES = ("auto", "batched", "loop")


def resolve_mode(mode: str, device: torch.device, cpu_choice: str = "loop") -> str:
    """``batched`` or ``loop`` for ``mode``; ``auto``: batched on accelerators, ``cpu_choice`` on the CPU."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"mtl.jacobian must be one of {', '.join(JACOBIAN_MODES)}, got {mode!r}")
    if mode == "auto":
        return cpu_choice if device.type == "cpu" else "batched"
    return mode


def _flat(grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor], batch: int | None) -> torch.Tensor:
    """Rows from per-input gradients (``None``: an input a loss does not reach, a zero block);
    ``batch``: the leading dimension of batched gradients."""
    lead = () if batch is None else (batch,)
    parts = [(x.new_zeros(lead + tuple(x.shape)) if g is None else g).reshape(*lead, -1) for g, x in zip(grads, inputs)]
    return torch.cat(parts, dim=-1)


def task_jacobian(losses: torch.Tensor, inputs: Sequence[torch.Tensor], mode: str = "auto",
                  cpu_choice: str = "loop") -> torch.Tensor:
    """``[K, N]``: row ``k`` is ``d losses[k] / d inputs``, the inputs flattened and concatenated
    (``N`` their total size). The graph is kept (the step's backward pass follows). ``cpu_choice``:
    what ``auto`` means on the CPU (:func:`resolve_mode`)."""
    inputs = list(inputs)
    k = losses.shape[0]
    if resolve_mode(mode, losses.device, cpu_choice) == "loop":
        rows = [_flat(torch.autograd.grad(losses[i], inputs, retain_graph=True, allow_unused=True), inputs, None)
                for i in range(k)]
        return torch.stack(rows)
    eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
    with warnings.catch_warnings():   # vmap's "performance drop" notes on ops without a batching rule
        warnings.filterwarnings("ignore", message=".*There is a performance drop.*")
        grads = torch.autograd.grad(losses, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
    return _flat(grads, inputs, k)


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class ParameterGradients:
    """Rows on the shared parameters (``gradients: parameters``)."""

    name = "parameters"
    #: ``jacobian: auto`` on the CPU: the trunk's backward kernels gain nothing from vmap there.
    cpu_choice = "loop"

    def __init__(self, params: Sequence[nn.Parameter]):
        self.params = [p for p in params if p.requires_grad]

    @property
    def inputs(self) -> list[torch.Tensor]:
        return list(self.params)

    def reduce(self, jac: torch.Tensor) -> torch.Tensor:
        """The global rows: the mean over the ranks (the gradient of the global mean loss)."""
        return ddp_mean(jac)

    def surrogate(self, correction: torch.Tensor) -> torch.Tensor:
        """``sum_p < p - p.detach(), c_p >``: value zero, adds ``c`` (``[P]``, the same on every rank)
        to the shared parameters' gradient; DDP's mean keeps it as it is."""
        out = correction.new_zeros(())
        for p, c in zip(self.params, correction.split([p.numel() for p in self.params])):
            out = out + ((p - p.detach()) * c.view(p.shape).to(p.dtype)).sum()
        return out


class RepresentationGradients:
    """Rows on the shared representation ``h`` (``gradients: representation``; module docstring)."""

    name = "representation"
    #: ``jacobian: auto`` on the CPU: through the small heads, one vmapped pass beats K passes (whose
    #: cost is Python and graph traversal, K^2 per-target nodes), 1.22x vs 1.6x equal's step at 40 tasks.
    cpu_choice = "batched"

    def __init__(self, representation: torch.Tensor):
        self.h = representation
        self.world = _world()
        self.offset, self.size = 0, representation.numel()

    @property
    def inputs(self) -> list[torch.Tensor]:
        return [self.h]

    def reduce(self, jac: torch.Tensor) -> torch.Tensor:
        """Every rank's rows side by side, each divided by the number of ranks (DDP averages the
        ranks' gradients, so that is the global mean loss's gradient); remembers this rank's block."""
        if self.world == 1:
            return jac.detach()
        from torchmetrics.utilities.distributed import gather_all_tensors

        blocks = gather_all_tensors(jac.detach().T.contiguous())     # [n_r, K] per rank, n_r may differ
        rank = torch.distributed.get_rank()
        self.offset = sum(b.shape[0] for b in blocks[:rank])
        return torch.cat(blocks).T / self.world

    def surrogate(self, correction: torch.Tensor) -> torch.Tensor:
        """``< h - h.detach(), R c_r >`` with ``c_r`` this rank's block of ``c``: value zero, adds
        ``R c_r`` to ``h``'s gradient, which DDP's mean over the ``R`` ranks turns into ``c``."""
        c = correction[self.offset:self.offset + self.size] * self.world
        return ((self.h - self.h.detach()) * c.view(self.h.shape).to(self.h.dtype)).sum()
