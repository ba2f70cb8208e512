"""Pure metric functions over a :class:`~facebench.core.tasks.TaskSpec` (torchmetrics'
``functional`` style): metric-name conventions, Cohen's kappa of a confusion matrix, ordinal bin
centres, the summary of a metrics table, decision-threshold tuning and reading votes / ages from a
predictions record. The rater-agreement functions (Fleiss' kappa, the human ceiling) are in
:mod:`facebench.core.agreement`, where the datamodules' ``describe`` can use them too.

Decision thresholds: ``threshold`` (default 0.5) gives the plain names; :func:`tune_thresholds`
picks per binary column the threshold that maximises **balanced accuracy** on a split (the
records tune on ``val`` and apply on every split: ``accuracy@tuned`` on test is an honest
number). Balanced accuracy is the default criterion because it does not depend on prevalence:
an accuracy-optimal threshold on a rare attribute (CelebA's Bald: 2%) degenerates towards the
majority answer, and a prevalence-free threshold transfers to a split with another prevalence.
``criterion="accuracy"`` is available.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from facebench.core.tasks import Target, TaskSpec

COLUMNS = ["target", "class", "metric", "value"]

#: Metrics averaged over targets by :func:`summarize` (progress bars, checkpoint monitors, run status).
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1", "auroc", "average_precision", "cohen_kappa", "ece",
                   "mean_class_precision", "accuracy_within_1", "mae_bins", "mae_years")

#: Lower is better for these (everything else: higher is better); see :func:`lower_is_better`.
LOWER_IS_BETTER = frozenset({"ece", "mae_bins", "mae_years", "unlabelled", "fpr"})

THRESHOLD_CRITERIA = ("balanced_accuracy", "accuracy")


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (a ``@...`` suffix names the threshold set
    or operating point and does not change the direction)."""
    return metric.split("@", 1)[0] in LOWER_IS_BETTER


def nan_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` elementwise, NaN where ``b`` is 0 (a rate with no samples)."""
    return torch.where(b > 0, a / b.clamp(min=1e-300), torch.full_like(a, float("nan")))


def bin_centres(target: Target) -> np.ndarray:
    """Centres in years of an ordinal target's bins; the open last bin gets the width of the bin
    before it (e.g. edges 0, 5, ..., 60 -> the 60+ bin's centre is 62.5)."""
    if target.bin_edges is None:
        raise ValueError(f"target {target.name!r} has no bin_edges (an ordinal age target needs them)")
    e = np.asarray(target.bin_edges, dtype=np.float64)
    if len(e) == 1:
        return e.copy()
    upper = np.append(e[1:], e[-1] + (e[-1] - e[-2]))
    return (e + upper) / 2


def kappa_from_confusion(confmat: torch.Tensor) -> float:
    """Cohen's kappa of a ``[C, C]`` confusion matrix (rows: reference, columns: prediction)."""
    cm = confmat.double()
    n = cm.sum()
    if n <= 0:
        return math.nan
    po = torch.trace(cm) / n
    pe = (cm.sum(0) * cm.sum(1)).sum() / n ** 2
    return float((po - pe) / (1 - pe)) if pe < 1 else math.nan


def summarize(rows: pd.DataFrame, task: TaskSpec | None = None) -> dict[str, float]:
    """``mean_<metric>`` over targets of the :data:`SUMMARY_METRICS`: target-level rows (class
    ``""``) and the per-class rows of multi-label targets (each class is a 0/1 output)."""
    if rows.empty:
        return {}
    multilabel = {t.name for t in task.targets if t.kind == "multilabel"} if task is not None else set()
    level = (rows["class"].fillna("").astype(str) == "") | rows["target"].isin(multilabel)
    sel = rows[level & rows["metric"].isin(SUMMARY_METRICS)]
    means = sel.groupby("metric")["value"].mean()
    return {f"mean_{m}": float(v) for m, v in means.items() if not math.isnan(v)}


def tune_thresholds(task: TaskSpec, probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                    criterion: str = "balanced_accuracy") -> np.ndarray:
    """Per binary / multi-label column, the threshold maximising ``criterion`` on these predictions.

    Both criteria are linear in ROC space, so the optimum is a vertex of the ROC curve
    (``sklearn.metrics.roc_curve``); the threshold returned is the midpoint between the score
    at that vertex and the next lower score (so it separates the same samples and transfers
    better to new ones). Among equally good vertices the one nearest 0.5 wins. A column whose
    labels hold a single class keeps 0.5.
    """
    from sklearn.metrics import roc_curve

    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(f"threshold criterion {criterion!r} is not one of {THRESHOLD_CRITERIA}")
    logit_cols, label_cols = task.binary_columns()
    p_all, y_all = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    out = np.full(len(logit_cols), 0.5)
    for j, (lc, yc) in enumerate(zip(logit_cols, label_cols)):
        keep = y_all[:, yc] >= 0
        y, p = y_all[keep, yc], p_all[keep, lc]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
        score = (tpr + 1 - fpr) / 2 if criterion == "balanced_accuracy" else (tpr * n_pos + (1 - fpr) * n_neg) / (n_pos + n_neg)
        below = np.append(thr[1:], 0.0)                    # next lower score (0 below the lowest)
        above = np.where(np.isinf(thr), 1.0, thr)
        cand = np.where(np.isinf(thr), (1.0 + thr[min(1, len(thr) - 1)]) / 2, (above + below) / 2)
        best = np.flatnonzero(np.isclose(score, score.max(), rtol=0, atol=1e-12))
        out[j] = float(cand[best[np.argmin(np.abs(cand[best] - 0.5))]])
    return out


def votes_of(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``votes/<target>`` arrays of a predictions record, by target name."""
    return {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("votes/")}


def ages_of(arrays: Mapping[str, np.ndarray], task: TaskSpec) -> dict[str, np.ndarray]:
    """Exact ages of a predictions record per binned ordinal target: ``age/<target>``, else ``age``."""
    out = {}
    for t in task.targets:
        if t.kind == "ordinal" and t.bin_edges is not None:
            a = arrays.get(f"age/{t.name}", arrays.get("age"))
            if a is not None:
                out[t.name] = np.asarray(a, dtype=np.float64)
    return out
