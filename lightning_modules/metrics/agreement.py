"""Rater agreement as torchmetrics ``Metric`` objects: :class:`FleissKappa` and
:class:`RaterAgreement` (the leave-one-rater-out human ceiling, with a model scored against the
same targets). Their states are sums only (``dist_reduce_fx="sum"``), so they are exact under DDP;
the formulas, conventions and tie handling are those of :mod:`facebench.core.agreement`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from facebench.core.agreement import MIN_RATINGS, kappa_from_sums, kappa_sums, loo_from_sums, loo_sums


class _SummedStatistics(Metric):
    """A Metric whose states are sums of per-batch sufficient statistics (``STATES``: name ->
    per-class or scalar), reduced with ``sum`` across DDP ranks: exact under DDP."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    STATES: dict[str, bool] = {}

    def __init__(self, num_classes: int, min_ratings: int = MIN_RATINGS, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes, self.min_ratings = num_classes, min_ratings
        for name, per_class in self.STATES.items():
            self.add_state(name, torch.zeros(num_classes if per_class else (), dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, sums: dict[str, torch.Tensor]) -> None:
        for k, v in sums.items():
            setattr(self, k, getattr(self, k) + v.to(self.device))

    def _states(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).cpu() for k in self.STATES}


class FleissKappa(_SummedStatistics):
    """Fleiss' kappa accumulated over batches of vote counts ``[B, C]``; ``compute()`` returns
    ``(kappa, category kappas [C])``."""

    STATES = {"subjects": False, "ratings": False, "class_ratings": True, "disagreement": True}

    def update(self, counts: torch.Tensor, extra_rater: torch.Tensor | None = None) -> None:
        """``extra_rater`` [B]: one more vote per subject (the model as a rater)."""
        counts = counts.to(torch.float64)
        if extra_rater is not None:
            counts = counts + torch.nn.functional.one_hot(extra_rater.long(), self.num_classes).to(counts)
        self._accumulate(kappa_sums(counts, self.min_ratings))

    def compute(self) -> tuple[float, np.ndarray]:
        return kappa_from_sums(**self._states())


class RaterAgreement(_SummedStatistics):
    """Human ceiling and model accuracy against the leave-one-rater-out majority, accumulated from
    ``update(counts [B, C], predictions [B])``; ``compute()`` returns
    :func:`~facebench.core.agreement.loo_from_sums`'s dict."""

    STATES = {"votes": True, "target_mass": True, "rater_hits": True, "model_hits": True}

    def update(self, counts: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        self._accumulate(loo_sums(counts, predictions, self.min_ratings))

    def compute(self) -> dict[str, Any]:
        return loo_from_sums(**self._states())
