"""Metrics over a :class:`~datamodules.tasks.TaskSpec`, built from torchmetrics so that every
state is reduced correctly under DDP.

:class:`TaskMetrics` updates from ``(probabilities, labels)`` in the task's layouts and computes a
long table of ``(target, class, metric, value)`` records; :func:`evaluate` does the same from
saved predictions (the result records), so a report never needs the model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.classification import (MulticlassAUROC, MulticlassStatScores, MultilabelAUROC,
                                         MultilabelStatScores)

from datamodules.tasks import TaskSpec

MISSING = -1


def _ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp(min=1), torch.full_like(a, float("nan")))


class TaskMetrics(nn.Module):
    """Per-target metrics of a task.

    Binary targets and multi-label classes (columns): accuracy, balanced accuracy, F1, AUROC at
    threshold ``threshold`` (a float or one per column). Multi-class / ordinal targets: accuracy,
    balanced accuracy (mean per-class recall), one-vs-rest macro AUROC.
    """

    def __init__(self, task: TaskSpec, auroc: bool = True, threshold: float | torch.Tensor = 0.5):
        super().__init__()
        self.task, self.with_auroc = task, auroc
        self.logit_cols, self.label_cols = task.binary_columns()
        n = len(self.logit_cols)
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).expand(max(n, 1)).clone(), persistent=False)
        if n:
            self.bin_stats = MultilabelStatScores(num_labels=n, average=None, ignore_index=MISSING, threshold=0.5)
            self.bin_auroc = MultilabelAUROC(num_labels=n, average=None, ignore_index=MISSING) if auroc else None
        self.mc_names = [t.name for t in task.targets if t.kind in ("multiclass", "ordinal")]
        self.mc_stats = nn.ModuleDict({t.name: MulticlassStatScores(num_classes=t.n_classes, average=None, ignore_index=MISSING)
                                       for t in task.targets if t.kind in ("multiclass", "ordinal")})
        self.mc_auroc = nn.ModuleDict({t.name: MulticlassAUROC(num_classes=t.n_classes, average=None, ignore_index=MISSING)
                                       for t in task.targets if t.kind in ("multiclass", "ordinal")}) if auroc else None

    def _binary_columns_names(self) -> list[tuple[str, str]]:
        out = []
        for t in self.task.targets:
            if t.kind == "binary":
                out.append((t.name, ""))
            elif t.kind == "multilabel":
                out += [(t.name, c) for c in t.classes]
        return out

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        if self.logit_cols:
            p = probs[:, self.logit_cols]
            y = labels[:, self.label_cols]
            # shift by the per-column threshold so that torchmetrics' 0.5 cut applies it
            shifted = (p - self.threshold.to(p) + 0.5).clamp(0, 1)
            self.bin_stats.update(shifted, y)
            if self.bin_auroc is not None:
                self.bin_auroc.update(p, y)
        for t, ls, ys in zip(self.task.targets, self.task.logit_slices, self.task.label_slices):
            if t.kind in ("multiclass", "ordinal"):
                self.mc_stats[t.name].update(probs[:, ls], labels[:, ys.start])
                if self.mc_auroc is not None:
                    self.mc_auroc[t.name].update(probs[:, ls], labels[:, ys.start])

    def compute(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        if self.logit_cols:
            st = self.bin_stats.compute().double()          # [L, 5]: tp, fp, tn, fn, support
            tp, fp, tn, fn = st[:, 0], st[:, 1], st[:, 2], st[:, 3]
            n = tp + fp + tn + fn
            acc = _ratio(tp + tn, n)
            tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
            bal = (tpr + tnr) / 2
            f1 = _ratio(2 * tp, 2 * tp + fp + fn)
            auroc = None
            if self.bin_auroc is not None:
                auroc = self.bin_auroc.compute().double()
                auroc = torch.where((tp + fn > 0) & (tn + fp > 0), auroc, torch.full_like(auroc, float("nan")))
            for j, (name, cls) in enumerate(self._binary_columns_names()):
                vals = {"accuracy": acc[j], "balanced_accuracy": bal[j], "f1": f1[j], "positive_rate": _ratio(tp + fn, n)[j]}
                if auroc is not None:
                    vals["auroc"] = auroc[j]
                rows += [{"target": name, "class": cls, "metric": k, "value": float(v)} for k, v in vals.items()]
        for name in self.mc_names:
            st = self.mc_stats[name].compute().double()     # [C, 5]
            tp, fp, fn, support = st[:, 0], st[:, 1], st[:, 3], st[:, 4]
            total = support.sum()
            recall = _ratio(tp, tp + fn)
            vals = {"accuracy": float(tp.sum() / total) if total > 0 else math.nan,
                    "balanced_accuracy": float(torch.nanmean(recall)) if total > 0 else math.nan}
            if self.mc_auroc is not None:
                au = self.mc_auroc[name].compute().double()
                au = torch.where(support > 0, au, torch.full_like(au, float("nan")))
                vals["auroc"] = float(torch.nanmean(au)) if (support > 0).any() else math.nan
            rows += [{"target": name, "class": "", "metric": k, "value": float(v)} for k, v in vals.items()]
        return rows

    def compute_summary(self) -> dict[str, float]:
        """Means over targets, for progress bars and checkpoint monitoring."""
        df = pd.DataFrame(self.compute())
        if df.empty:
            return {}
        means = df.groupby("metric")["value"].mean()
        return {f"mean_{m}": float(v) for m, v in means.items() if not math.isnan(v) and m != "positive_rate"}

    def reset(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset") and hasattr(m, "_defaults"):
                m.reset()


def evaluate(task: TaskSpec, probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
             threshold: float | np.ndarray = 0.5, chunk: int = 4096) -> pd.DataFrame:
    """Metrics from saved predictions: a long ``(target, class, metric, value)`` table."""
    probs_t = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    metrics = TaskMetrics(task, auroc=True, threshold=torch.as_tensor(threshold, dtype=torch.float32))
    for s in range(0, len(probs_t), chunk):
        metrics.update(probs_t[s:s + chunk], labels_t[s:s + chunk])
    return pd.DataFrame(metrics.compute(), columns=["target", "class", "metric", "value"])
