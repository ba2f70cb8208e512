"""The task's training loss, one value per target (reduction "none" over targets).

:func:`target_losses` is the loss every method starts from: sigmoid cross-entropy for binary and
multi-label targets (MCNN eq. 1, the FAD paper's eq. 3) and softmax cross-entropy for multi-class
and ordinal ones, each averaged over the samples that carry that target's label (``-1`` is
ignored). It returns the ``[T]`` vector, so a method decides how targets are combined: the base
task averages them (equal weights), methods made of independent networks sum them (one scale per
network), and a multi-task weighting can weigh them.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from facebench.core.tasks import MISSING, TaskSpec


def target_losses(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor,
                  soft_targets: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-target losses ``[T]`` in the task's target order.

    ``soft_targets`` maps a multi-class target's name to a ``[B, C]`` distribution (FER+
    "probability" targets): its loss is the cross-entropy against that distribution, averaged over
    the rows whose distribution is not all zero (all zero: no soft label for that sample). A target
    without any label in the batch contributes a zero that still depends on the logits (so every
    parameter keeps a gradient, of zero)."""
    soft_targets = soft_targets or {}
    losses = []
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        z, y = logits[:, ls].float(), labels[:, ys]
        if t.is_sigmoid:
            mask = y >= 0
            if not mask.any():
                losses.append(z.sum() * 0.0)
                continue
            per = F.binary_cross_entropy_with_logits(z, y.clamp(min=0).float(), reduction="none")
            losses.append((per * mask).sum() / mask.sum())
        elif t.name in soft_targets:
            q = soft_targets[t.name].float()
            has = q.sum(dim=1) > 0            # an all-zero row carries no soft label (unknown, another dataset's sample)
            if not has.any():
                losses.append(z.sum() * 0.0)
                continue
            losses.append(-(q[has] * torch.log_softmax(z[has], dim=1)).sum(dim=1).mean())
        else:
            y = y[:, 0]
            if (y < 0).all():
                losses.append(z.sum() * 0.0)
                continue
            losses.append(F.cross_entropy(z, y, ignore_index=MISSING))
    return torch.stack(losses)


class TargetLossMean(Metric):
    """Mean per-target loss over an epoch (validation), summed over DDP ranks: ``update(losses [T],
    n)`` with the batch's per-target means and its size; ``compute()`` gives ``[T]``."""

    full_state_update = False

    def __init__(self, n_targets: int, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros(n_targets, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses: torch.Tensor, n: int) -> None:
        self.total += losses.detach().double() * n
        self.count += n

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)
