"""Per-subgroup metrics: how a method does on each group of a protected attribute.

The fairness literature on CelebA reports, with ``Male`` / ``Young`` as protected attributes,
worst-group accuracy and equal-opportunity gaps; age and gender work reports the same split by
race. :class:`SubgroupMetrics` is a torchmetrics ``Metric`` whose states are sums (``dist_reduce_fx
="sum"``), so it is right under DDP like the other metrics. Groups come from the *true* label of the
protected target (a binary target gives two groups, a multi-class target one per class); samples
without that label are left out.

For every other binary target (and every class of a multi-label target) ``t`` and group ``g``:

* ``accuracy`` = (TP + TN) / N, ``balanced_accuracy`` = (TPR + TNR) / 2, ``tpr`` = TP / (TP + FN),
  ``support`` = N;

and across the groups of one protected attribute, per target:

* ``worst_group_accuracy`` = min over groups of the accuracy;
* ``accuracy_gap`` = max - min accuracy over groups;
* ``equal_opportunity_difference`` = max - min TPR over groups (Hardt et al. 2016's equal
  opportunity compares true-positive rates); groups without positives are left out of it.

Multi-class targets get per-group ``accuracy`` and ``balanced_accuracy`` (mean per-class recall),
with the same worst-group and gap aggregates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from facebench.core.tasks import TaskSpec

AGGREGATES = ("worst_group_accuracy", "accuracy_gap", "equal_opportunity_difference")


def group_names(task: TaskSpec, protected: str) -> tuple[str, ...]:
    """``"<attribute>=<class>"`` for each group of a protected target."""
    t = task.target(protected)
    if t.kind == "multilabel":
        raise ValueError(f"subgroups: {protected!r} is a {t.kind} target; a protected attribute must be binary or multi-class")
    return tuple(f"{protected}={c}" for c in t.classes)


class SubgroupMetrics(Metric):
    """Per-group confusion counts of every target against one protected target of ``task``.

    ``update(preds, labels)``: hard predictions and labels in the task's label layout (``-1`` =
    missing), e.g. :meth:`TaskSpec.predictions` of the probabilities."""

    full_state_update = False

    def __init__(self, task: TaskSpec, protected: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.task, self.protected = task, protected
        self.groups = group_names(task, protected)
        self.group_slot = task.label_slices[task.names.index(protected)].start
        _, self.binary_label_cols = task.binary_columns()
        self.binary_names = [(t.name, "") if t.kind == "binary" else (t.name, c)
                             for t in task.targets if t.is_sigmoid
                             for c in (t.classes if t.kind == "multilabel" else [""])]
        self.mc_targets = [(t, s.start) for t, s in zip(task.targets, task.label_slices) if t.is_softmax]
        n_groups, n_bin = len(self.groups), len(self.binary_label_cols)
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, torch.zeros(n_bin, n_groups, dtype=torch.long), dist_reduce_fx="sum")
        for t, _ in self.mc_targets:
            self.add_state(f"mc_support_{t.name}", torch.zeros(t.n_classes, n_groups, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"mc_correct_{t.name}", torch.zeros(t.n_classes, n_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        group = labels[:, self.group_slot].long()
        known = group >= 0
        one_hot = torch.zeros(len(group), len(self.groups), dtype=torch.long, device=labels.device)
        one_hot[known, group[known]] = 1
        if self.binary_label_cols:
            y = labels[:, self.binary_label_cols].long()
            p = preds[:, self.binary_label_cols].long()
            valid = (y >= 0).long()
            for name, hit in (("tp", (p == 1) & (y == 1)), ("fp", (p == 1) & (y == 0)),
                              ("tn", (p == 0) & (y == 0)), ("fn", (p == 0) & (y == 1))):
                getattr(self, name).add_((hit.long() * valid).T @ one_hot)
        for t, slot in self.mc_targets:
            y, p = labels[:, slot].long(), preds[:, slot].long()
            valid = y >= 0
            cls = torch.zeros(len(y), t.n_classes, dtype=torch.long, device=labels.device)
            cls[valid, y[valid]] = 1
            getattr(self, f"mc_support_{t.name}").add_(cls.T @ one_hot)
            getattr(self, f"mc_correct_{t.name}").add_((cls * (p == y).long()[:, None]).T @ one_hot)

    def compute(self) -> list[dict[str, Any]]:
        """Long rows: ``target``, ``class``, ``group`` (``""`` for the aggregates), ``metric``, ``value``."""
        rows: list[dict[str, Any]] = []
        tp, fp, tn, fn = (getattr(self, n).double().cpu().numpy() for n in ("tp", "fp", "tn", "fn"))
        with np.errstate(invalid="ignore", divide="ignore"):
            n = tp + fp + tn + fn
            acc = (tp + tn) / n
            tpr = tp / (tp + fn)
            tnr = tn / (tn + fp)
            bal = (tpr + tnr) / 2
        for j, (target, cls) in enumerate(self.binary_names):
            if target == self.protected:
                continue
            per = {"accuracy": acc[j], "balanced_accuracy": bal[j], "tpr": tpr[j], "support": n[j]}
            rows += self._group_rows(target, cls, per)
            rows += self._aggregate_rows(target, cls, acc[j][n[j] > 0], tpr[j][(tp[j] + fn[j]) > 0])
        for t, _ in self.mc_targets:
            if t.name == self.protected:
                continue
            support = getattr(self, f"mc_support_{t.name}").double().cpu().numpy()
            correct = getattr(self, f"mc_correct_{t.name}").double().cpu().numpy()
            total = support.sum(0)
            with np.errstate(invalid="ignore", divide="ignore"):
                accuracy = correct.sum(0) / total
                recall = correct / support
            balanced = np.array([np.nanmean(recall[:, g]) if (support[:, g] > 0).any() else math.nan
                                 for g in range(len(self.groups))])
            rows += self._group_rows(t.name, "", {"accuracy": accuracy, "balanced_accuracy": balanced, "support": total})
            rows += self._aggregate_rows(t.name, "", accuracy[total > 0], np.array([]))
        return rows

    def _group_rows(self, target: str, cls: str, per: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        return [{"target": target, "class": cls, "group": g, "metric": m, "value": float(v[k])}
                for m, v in per.items() for k, g in enumerate(self.groups)]

    def _aggregate_rows(self, target: str, cls: str, accuracies: np.ndarray, tprs: np.ndarray) -> list[dict[str, Any]]:
        nan = math.nan
        values = {"worst_group_accuracy": float(accuracies.min()) if accuracies.size else nan,
                  "accuracy_gap": float(accuracies.max() - accuracies.min()) if accuracies.size > 1 else nan,
                  "equal_opportunity_difference": float(tprs.max() - tprs.min()) if tprs.size > 1 else nan}
        return [{"target": target, "class": cls, "group": "", "metric": m, "value": v} for m, v in values.items()]


def subgroup_rows(task: TaskSpec, probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                  protected: list[str], thresholds: np.ndarray | float = 0.5) -> list[dict[str, Any]]:
    """Rows of :class:`SubgroupMetrics` for each protected attribute present in ``task`` (one
    process; ``protected_attribute`` column added); attributes the task lacks are skipped."""
    probs_t = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    th = thresholds if isinstance(thresholds, float) else torch.as_tensor(np.asarray(thresholds), dtype=torch.float32)
    preds = task.predictions(probs_t, th)
    rows: list[dict[str, Any]] = []
    for name in protected:
        if name not in task.names:
            continue
        metric = SubgroupMetrics(task, name)
        metric.update(preds, labels_t)
        rows += [{"protected_attribute": name, **r} for r in metric.compute()]
    return rows
