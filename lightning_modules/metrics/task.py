"""Per-target metrics of a :class:`~facebench.core.tasks.TaskSpec`, built from torchmetrics so that
every state is reduced correctly under DDP.

:class:`TaskMetrics` updates from ``(probabilities, labels[, votes, ages])`` in the task's layouts
and computes a long table of ``(target, class, metric, value)`` records; :func:`evaluate` does the
same from saved predictions (the result records), so a report never needs the model. Decision
thresholds and their tuning: :mod:`facebench.lightning_modules.metrics.functional`.

Metric names (``class`` is ``""`` for a target-level value, else a class name):

* **binary targets / multi-label classes** (one row set per 0/1 column): ``accuracy``,
  ``balanced_accuracy``, ``precision``, ``recall``, ``f1``, ``cohen_kappa`` at the decision
  threshold; ``auroc``, ``average_precision`` (area under the precision-recall curve), ``ece``
  (expected calibration error of the positive-class probability, torchmetrics
  ``BinaryCalibrationError``, equal-width bins) and ``positive_rate`` (label prevalence).
  Extra threshold sets (``extra_thresholds={"tuned": t}``) repeat the threshold metrics as
  ``accuracy@tuned`` ... and write the thresholds themselves as ``threshold@tuned``.
* **multi-class / ordinal targets**: ``accuracy``, ``balanced_accuracy`` (mean per-class recall),
  ``mean_class_precision`` (the semantic-features paper's "average precision per class": the mean
  over classes of the per-class precision; a class that is never predicted counts 0, as
  ``sklearn.metrics.precision_score(average="macro", zero_division=0)``), ``cohen_kappa``,
  ``auroc`` (one-vs-rest, macro over classes with samples), ``ece`` (top-label); per class
  ``precision``, ``recall``, ``f1``, ``support``, ``auroc`` and the confusion-matrix row
  ``confusion:<predicted class>`` (counts; ``class`` is the true class).
* **ordinal targets** in addition: ``accuracy_within_1`` (predicted bin at most one bin away:
  the semantic-features paper's +-5 years next to exact-bin +-2.5 years, Sec. 4.2.2), ``mae_bins``
  and, when exact ages are given, ``mae_years`` (centre of the predicted bin vs the exact age, see
  :func:`bin_centres`).
* **operating points** (multi-class and multi-label targets, the Flickr paper's ethnicity point,
  Sec. 4.7): per class ``tpr@fpr=F`` (the highest true-positive rate whose false-positive rate is
  at most F on this split, torchmetrics ``*SensitivityAtSpecificity``), ``fpr@fpr=F`` (the rate
  reached) and ``threshold@fpr=F``; per target ``unlabelled@fpr=F``, the share of samples that no
  class reaches at those thresholds ("only 0.44% do not get an ethnicity prediction").
* **rater agreement** (targets with votes, when ``votes`` are passed): ``fleiss_kappa`` (raters
  only; per class the category kappa), ``fleiss_kappa_with_model`` (the model's hard prediction
  added as one more rater), ``rater_accuracy_loo`` (the human ceiling: each rater against the
  majority of the other raters) and ``model_accuracy_loo`` (the model against the same
  targets); per class ``rater_recall_loo`` / ``model_recall_loo``. Cohen's kappa of the model
  against the label (for voted datasets the majority label) is ``cohen_kappa`` above. See
  :mod:`facebench.core.agreement` for the definitions and tie handling. The vote table is used
  as the raters filled it in, over all of ``Target.vote_columns`` (FER+: the 8 emotions, unknown
  and not-a-face); the model's vote goes to its predicted class, so where the other raters'
  majority is "unknown" the model cannot agree (FER+ gives such images no label).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, Metric
from torchmetrics.classification import (BinaryCalibrationError, MulticlassAUROC, MulticlassCalibrationError,
                                         MulticlassConfusionMatrix, MultilabelAUROC, MultilabelAveragePrecision,
                                         MultilabelStatScores)
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat

from facebench.core.tasks import Target, TaskSpec
from facebench.lightning_modules.metrics.agreement import FleissKappa, RaterAgreement
from facebench.lightning_modules.metrics.functional import (COLUMNS, bin_centres, kappa_from_confusion, nan_divide,
                                                  summarize)
from facebench.lightning_modules.metrics.operating_point import MulticlassOperatingPoint, MultilabelOperatingPoint
from facebench.lightning_modules.metrics.target_keys import TargetModuleDict

MISSING = -1


def _quiet(fn: Any, *args: Any) -> Any:
    """Call a torchmetrics compute without its "no positive samples" warnings (those values are
    masked to NaN by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


def _per_label(metric: Any, label_metric: Any, has_both: torch.Tensor) -> torch.Tensor:
    """A multi-label curve metric (AUROC, average precision) per label, NaN where a label lacks one of
    the two classes. torchmetrics' multi-label compute fails on a label with no valid sample at all (a
    partial-label split where no image carries it): then each label with both classes is computed
    alone, with ``label_metric`` (its binary functional form), from the state synced over ranks."""
    nan = torch.full((len(has_both),), float("nan"), dtype=torch.float64)
    if bool(has_both.all()):
        return _quiet(metric.compute).double().cpu().reshape(-1)
    if not bool(has_both.any()):
        return nan
    with metric.sync_context(should_sync=metric._to_sync):   # as its compute would (off: one rank's complete predictions)
        preds, target = dim_zero_cat(metric.preds), dim_zero_cat(metric.target)
    for j in torch.nonzero(has_both).flatten().tolist():
        nan[j] = float(_quiet(lambda: label_metric(preds[:, j], target[:, j].long(), ignore_index=MISSING)))
    return nan


class TaskMetrics(nn.Module):
    """Per-target metrics of a task (see the module docstring for every metric name).

    Args:
        task: the dataset's task.
        auroc: also the ranking metrics that keep every score (AUROC, average precision, ECE,
            operating points); off for cheap counting-only metrics.
        threshold: decision threshold of binary / multi-label columns (a float or one per column).
        extra_thresholds: more named threshold sets (e.g. ``{"tuned": per-column thresholds}``).
        calibration_bins: equal-width bins of the expected calibration error.
        operating_fpr: the false-positive rate of the operating points (Flickr paper: 1%).
    """

    def __init__(self, task: TaskSpec, auroc: bool = True, threshold: float | torch.Tensor = 0.5, *,
                 extra_thresholds: Mapping[str, float | torch.Tensor | np.ndarray] | None = None,
                 calibration_bins: int = 15, operating_fpr: float = 0.01):
        super().__init__()
        self.task, self.with_auroc, self.operating_fpr = task, auroc, operating_fpr
        self.logit_cols, self.label_cols = task.binary_columns()
        n = len(self.logit_cols)
        self.threshold_names = [""] + list(extra_thresholds or {})
        sets = {"": threshold, **(extra_thresholds or {})}
        self.bin_stats = nn.ModuleDict()
        for i, (name, value) in enumerate(sets.items()):
            th = torch.as_tensor(np.asarray(value), dtype=torch.float32).expand(max(n, 1)).clone()
            self.register_buffer(f"threshold_{i}", th, persistent=False)
            if n:   # torchmetrics' argument check refuses num_labels=1 (one binary target), the metric handles it
                self.bin_stats[str(i)] = MultilabelStatScores(num_labels=n, average=None, ignore_index=MISSING, validate_args=n > 1)
        if n and auroc:
            self.bin_auroc = MultilabelAUROC(num_labels=n, average=None, ignore_index=MISSING, validate_args=n > 1)
            self.bin_ap = MultilabelAveragePrecision(num_labels=n, average=None, ignore_index=MISSING, validate_args=n > 1)
            self.bin_ece = nn.ModuleList(BinaryCalibrationError(n_bins=calibration_bins, ignore_index=MISSING) for _ in range(n))
        mc = [t for t in task.targets if t.is_softmax]
        self.mc_names = [t.name for t in mc]
        self.mc_confmat = TargetModuleDict({t.name: MulticlassConfusionMatrix(num_classes=t.n_classes, ignore_index=MISSING) for t in mc})
        self.mc_auroc = TargetModuleDict({t.name: MulticlassAUROC(num_classes=t.n_classes, average=None, ignore_index=MISSING)
                                       for t in mc}) if auroc else None
        self.mc_ece = TargetModuleDict({t.name: MulticlassCalibrationError(num_classes=t.n_classes, n_bins=calibration_bins,
                                                                        ignore_index=MISSING) for t in mc}) if auroc else None
        self.age_mae = TargetModuleDict({t.name: MeanAbsoluteError() for t in mc if t.kind == "ordinal" and t.bin_edges is not None})
        spec = 1.0 - operating_fpr
        self.op_point = TargetModuleDict()
        if auroc:
            for t in task.targets:
                if t.kind == "multiclass":
                    self.op_point[t.name] = MulticlassOperatingPoint(num_classes=t.n_classes, min_specificity=spec, ignore_index=MISSING)
                elif t.kind == "multilabel":
                    self.op_point[t.name] = MultilabelOperatingPoint(num_labels=t.n_classes, min_specificity=spec, ignore_index=MISSING)
        voted = [t for t in task.targets if t.has_votes and t.kind != "multilabel"]
        self.kappa_raters = TargetModuleDict({t.name: FleissKappa(len(t.vote_columns)) for t in voted})
        self.kappa_with_model = TargetModuleDict({t.name: FleissKappa(len(t.vote_columns)) for t in voted})
        self.rater_agreement = TargetModuleDict({t.name: RaterAgreement(len(t.vote_columns)) for t in voted})

    # -- helpers ----------------------------------------------------------------------------------
    def thresholds(self, i: int = 0) -> torch.Tensor:
        return getattr(self, f"threshold_{i}")

    def _binary_columns_names(self) -> list[tuple[str, str]]:
        out = []
        for t in self.task.targets:
            if t.kind == "binary":
                out.append((t.name, ""))
            elif t.kind == "multilabel":
                out += [(t.name, c) for c in t.classes]
        return out

    def _ages_for(self, ages: torch.Tensor | Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """Exact ages per binned ordinal target: a dict, or one array for every such target (a
        dataset with several binnings of the same age, e.g. UTKFace's)."""
        if ages is None:
            return {}
        if isinstance(ages, Mapping):
            return {k: torch.as_tensor(v) for k, v in ages.items() if k in self.age_mae}
        return {name: torch.as_tensor(ages) for name in self.age_mae}

    # -- update / compute -------------------------------------------------------------------------
    def update(self, probs: torch.Tensor, labels: torch.Tensor, votes: Mapping[str, torch.Tensor] | None = None,
               ages: torch.Tensor | Mapping[str, torch.Tensor] | None = None) -> None:
        """``votes``: target -> ``[B, C]`` rater counts; ``ages``: exact ages ``[B]`` (NaN unknown)."""
        hard: dict[str, torch.Tensor] = {}
        if self.logit_cols:
            p = probs[:, self.logit_cols]
            y = labels[:, self.label_cols]
            for i, key in enumerate(self.bin_stats):
                # hard 0/1 predictions (p >= threshold, as TaskSpec.predictions) are counted as given
                self.bin_stats[key].update((p >= self.thresholds(i).to(p)).long(), y)
            if self.with_auroc:
                self.bin_auroc.update(p, y)
                self.bin_ap.update(p, y)
                for j, ece in enumerate(self.bin_ece):
                    ece.update(p[:, j], y[:, j])
            col = 0
            for t in self.task.targets:
                if t.kind == "binary":
                    hard[t.name] = (p[:, col] >= self.thresholds(0)[col].to(p)).long()
                col += t.n_logits if t.is_sigmoid else 0
        age_of = self._ages_for(ages)
        for t, ls, ys in zip(self.task.targets, self.task.logit_slices, self.task.label_slices):
            pt, yt = probs[:, ls], labels[:, ys]
            if t.is_softmax:
                y0 = yt[:, 0]
                self.mc_confmat[t.name].update(pt, y0)
                hard[t.name] = pt.argmax(dim=1)
                if self.with_auroc:
                    self.mc_auroc[t.name].update(pt, y0)
                    self.mc_ece[t.name].update(pt, y0)
                if t.name in age_of:
                    a = age_of[t.name].to(pt.device, torch.float64).reshape(-1)
                    known = torch.isfinite(a)
                    centres = torch.as_tensor(bin_centres(t), dtype=torch.float64, device=pt.device)
                    self.age_mae[t.name].update(centres[hard[t.name]][known], a[known])
            if t.name in self.op_point:
                self.op_point[t.name].update(pt, yt[:, 0] if t.kind == "multiclass" else yt)
        for name, v in (votes or {}).items():
            if name in self.kappa_raters:
                v = torch.as_tensor(v).to(probs.device)
                self.kappa_raters[name].update(v)
                self.kappa_with_model[name].update(v, hard[name])
                self.rater_agreement[name].update(v, hard[name])

    def _binary_rows(self) -> list[dict[str, Any]]:
        names = self._binary_columns_names()
        vals: dict[str, torch.Tensor] = {}
        for i, key in enumerate(self.bin_stats):
            suffix = f"@{self.threshold_names[i]}" if self.threshold_names[i] else ""
            st = self.bin_stats[key].compute().double().cpu()    # [L, 5]: tp, fp, tn, fn, support
            tp, fp, tn, fn = st[:, 0], st[:, 1], st[:, 2], st[:, 3]
            n = tp + fp + tn + fn
            po = nan_divide(tp + tn, n)
            pe = nan_divide((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), n * n)
            vals.update({f"accuracy{suffix}": po, f"balanced_accuracy{suffix}": (nan_divide(tp, tp + fn) + nan_divide(tn, tn + fp)) / 2,
                         f"precision{suffix}": nan_divide(tp, tp + fp), f"recall{suffix}": nan_divide(tp, tp + fn),
                         f"f1{suffix}": nan_divide(2 * tp, 2 * tp + fp + fn), f"cohen_kappa{suffix}": nan_divide(po - pe, 1 - pe)})
            if suffix:
                vals[f"threshold{suffix}"] = self.thresholds(i).double().cpu()
            else:
                vals["positive_rate"] = nan_divide(tp + fn, n)
                vals["positives"], vals["negatives"] = tp + fn, tn + fp     # what each score rests on
                if self.with_auroc:
                    nan = torch.full_like(tp, float("nan"))
                    has_both = (tp + fn > 0) & (tn + fp > 0)
                    vals["auroc"] = torch.where(has_both, _per_label(self.bin_auroc, binary_auroc, has_both), nan)
                    vals["average_precision"] = torch.where(has_both, _per_label(self.bin_ap, binary_average_precision, has_both), nan)
                    vals["ece"] = torch.tensor([float(e.compute()) if n[j] > 0 else math.nan for j, e in enumerate(self.bin_ece)],
                                               dtype=torch.float64)
        return [{"target": t, "class": c, "metric": metric, "value": float(v[j])}
                for metric, v in vals.items() for j, (t, c) in enumerate(names)]

    def _multiclass_rows(self, t: Target) -> list[dict[str, Any]]:
        cm = self.mc_confmat[t.name].compute().double().cpu()      # [C, C]: rows true, columns predicted
        support, predicted, tp = cm.sum(1), cm.sum(0), torch.diagonal(cm)
        total = float(support.sum())
        precision, recall = nan_divide(tp, predicted), nan_divide(tp, support)
        present = (support > 0) | (predicted > 0)
        vals: dict[str, float] = {
            "accuracy": float(tp.sum()) / total if total else math.nan,
            "balanced_accuracy": float(torch.nanmean(recall[support > 0])) if total else math.nan,
            "mean_class_precision": float(torch.nan_to_num(precision, nan=0.0)[present].mean()) if total else math.nan,
            "cohen_kappa": kappa_from_confusion(cm)}
        per_class: dict[str, torch.Tensor] = {"precision": precision, "recall": recall,
                                               "f1": nan_divide(2 * tp, support + predicted), "support": support}
        if t.kind == "ordinal":
            dist = (torch.arange(t.n_classes)[:, None] - torch.arange(t.n_classes)[None, :]).abs().double()
            vals["accuracy_within_1"] = float((cm * (dist <= 1)).sum()) / total if total else math.nan
            vals["mae_bins"] = float((cm * dist).sum()) / total if total else math.nan
            if t.name in self.age_mae and self.age_mae[t.name]._update_count > 0:
                vals["mae_years"] = float(self.age_mae[t.name].compute())
        if self.with_auroc and total:
            au = torch.where(support > 0, _quiet(self.mc_auroc[t.name].compute).double().cpu(), torch.full_like(support, float("nan")))
            vals["auroc"] = float(torch.nanmean(au)) if bool((support > 0).any()) else math.nan
            vals["ece"] = float(self.mc_ece[t.name].compute())
            per_class["auroc"] = au
        rows = [{"target": t.name, "class": "", "metric": k, "value": float(v)} for k, v in vals.items()]
        for k, v in per_class.items():
            rows += [{"target": t.name, "class": c, "metric": k, "value": float(v[j])} for j, c in enumerate(t.classes)]
        for j, pred_cls in enumerate(t.classes):
            rows += [{"target": t.name, "class": c, "metric": f"confusion:{pred_cls}", "value": float(cm[i, j])}
                     for i, c in enumerate(t.classes)]
        return rows

    def _operating_point_rows(self, t: Target) -> list[dict[str, Any]]:
        op = self.op_point[t.name]
        if op._update_count == 0:
            return []
        with op.sync_context(should_sync=op._to_sync):   # every rank's samples, as its compute would gather them
            if not len(dim_zero_cat(op.preds)):
                return []            # no image of the split carries this target's label
        res = _quiet(op.compute)
        tag = f"@fpr={self.operating_fpr:g}"
        rows = [{"target": t.name, "class": "", "metric": f"unlabelled{tag}", "value": float(res["unlabelled"])}]
        for k in ("tpr", "fpr", "threshold"):
            rows += [{"target": t.name, "class": c, "metric": f"{k}{tag}", "value": float(res[k][j])} for j, c in enumerate(t.classes)]
        return rows

    def _agreement_rows(self, t: Target) -> list[dict[str, Any]]:
        if self.kappa_raters[t.name]._update_count == 0:
            return []
        kappa, per_class = self.kappa_raters[t.name].compute()
        if math.isnan(kappa) and np.isnan(per_class).all():
            return []
        kappa_model, _ = self.kappa_with_model[t.name].compute()
        loo = self.rater_agreement[t.name].compute()
        rows = [{"target": t.name, "class": "", "metric": k, "value": float(v)} for k, v in {
            "fleiss_kappa": kappa, "fleiss_kappa_with_model": kappa_model,
            "rater_accuracy_loo": loo["rater_accuracy"], "model_accuracy_loo": loo["model_accuracy"]}.items()]
        for k, v in {"fleiss_kappa": per_class, "rater_recall_loo": loo["rater_recall"], "model_recall_loo": loo["model_recall"]}.items():
            rows += [{"target": t.name, "class": c, "metric": k, "value": float(v[j])} for j, c in enumerate(t.vote_columns)]
        return rows

    def compute(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._binary_rows() if self.logit_cols else []
        for t in self.task.targets:
            if t.name in self.mc_confmat:
                rows += self._multiclass_rows(t)
            if t.name in self.op_point:
                rows += self._operating_point_rows(t)
            if t.name in self.kappa_raters:
                rows += self._agreement_rows(t)
        return rows

    def compute_summary(self) -> dict[str, float]:
        """Means over targets, for progress bars and checkpoint monitoring."""
        return summarize(pd.DataFrame(self.compute(), columns=COLUMNS), self.task)

    def reset(self) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "reset") and hasattr(m, "_defaults"):
                m.reset()


def evaluate(task: TaskSpec, probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
             threshold: float | np.ndarray = 0.5, chunk: int = 4096, *,
             tuned_thresholds: np.ndarray | None = None, votes: Mapping[str, np.ndarray] | None = None,
             ages: np.ndarray | Mapping[str, np.ndarray] | None = None, operating_fpr: float = 0.01,
             calibration_bins: int = 15) -> pd.DataFrame:
    """Metrics from saved predictions: a long ``(target, class, metric, value)`` table.

    ``tuned_thresholds`` (from :func:`tune_thresholds` on another split) adds the ``@tuned`` rows;
    ``votes`` (target -> ``[N, C]`` counts) the agreement rows; ``ages`` the ``mae_years`` row.
    """
    probs_t = torch.as_tensor(np.asarray(probs), dtype=torch.float32)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    extra = {"tuned": torch.as_tensor(np.asarray(tuned_thresholds), dtype=torch.float32)} if tuned_thresholds is not None else None
    metrics = TaskMetrics(task, auroc=True, threshold=torch.as_tensor(np.asarray(threshold), dtype=torch.float32),
                          extra_thresholds=extra, calibration_bins=calibration_bins, operating_fpr=operating_fpr)
    for m in metrics.modules():   # the predictions are complete here: no all-reduce with other ranks
        if isinstance(m, Metric):  # (what the constructor's sync_on_compute=False sets)
            m.sync_on_compute = m._to_sync = False
    votes_t = {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in (votes or {}).items()}
    if isinstance(ages, Mapping):
        ages_t: Any = {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in ages.items()}
    else:
        ages_t = None if ages is None else torch.as_tensor(np.asarray(ages, dtype=np.float64))
    for s in range(0, len(probs_t), chunk):
        sl = slice(s, s + chunk)
        metrics.update(probs_t[sl], labels_t[sl], votes={k: v[sl] for k, v in votes_t.items()},
                       ages=({k: v[sl] for k, v in ages_t.items()} if isinstance(ages_t, dict) else
                             None if ages_t is None else ages_t[sl]))
    return pd.DataFrame(metrics.compute(), columns=COLUMNS)
