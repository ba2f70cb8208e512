"""Operating points as torchmetrics ``Metric`` objects (the Flickr paper's multi-target ethnicity
point, Sec. 4.7): per class the threshold with the highest true-positive rate whose false-positive
rate is at most a target (torchmetrics ``*SensitivityAtSpecificity``), plus the false-positive rate
reached and the share of samples that no class reaches at those thresholds."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassSensitivityAtSpecificity, MultilabelSensitivityAtSpecificity
from torchmetrics.utilities import dim_zero_cat

from facebench.lightning_modules.metrics.functional import nan_divide


class _OperatingPointMixin:
    """Adds, at the thresholds torchmetrics picks (highest TPR with FPR <= ``1 - min_specificity``),
    the false-positive rate reached and the share of samples that no class reaches."""

    def _op_targets(self, target: torch.Tensor, n: int) -> torch.Tensor:
        raise NotImplementedError

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        tpr, thr = super().compute()  # type: ignore[misc]
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)  # type: ignore[attr-defined]
        target = self._op_targets(target, preds.shape[1])
        positive = preds >= thr[None, :]
        negatives = (target == 0).sum(0)
        fpr = nan_divide((positive & (target == 0)).sum(0).double(), negatives.double())
        tpr = torch.where((target == 1).any(0), tpr.double(), torch.full_like(tpr.double(), float("nan")))
        unlabelled = (~positive.any(1)).double().mean() if len(preds) else torch.tensor(float("nan"))
        return {"tpr": tpr, "fpr": fpr, "threshold": thr.double(), "unlabelled": unlabelled}

class MulticlassOperatingPoint(_OperatingPointMixin, MulticlassSensitivityAtSpecificity):
    """One-vs-rest operating point per class of a multi-class target."""

    def _op_targets(self, target: torch.Tensor, n: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(target.long(), n)

class MultilabelOperatingPoint(_OperatingPointMixin, MultilabelSensitivityAtSpecificity):
    """Operating point per class of a multi-label target (missing labels are neither)."""

    def _op_targets(self, target: torch.Tensor, n: int) -> torch.Tensor:
        return target
