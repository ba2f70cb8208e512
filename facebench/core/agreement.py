"""Agreement between raters, and between a model and raters, from per-class vote counts: the
pure functions (torchmetrics' ``functional`` style) behind the rater-agreement metrics
(:mod:`facebench.lightning_modules.metrics.agreement`), ``facebench inspect`` and
``facebench analyze rater-agreement``.

Everything here reads a vote table ``counts`` ``[N subjects, C classes]``: how many raters put
subject ``i`` in class ``j`` (the ``votes`` of a datamodule's sample table, e.g. FER+'s 10 rater
votes per image, or FAD's 3 per trait).

* :func:`fleiss_kappa` / :func:`category_kappas`: Fleiss' kappa (Fleiss 1971, "Measuring nominal
  scale agreement among many raters", eqs. for P_i, p_j, kappa and the category kappas kappa_j);
  the FAD paper reports it per trait (Table 2). :func:`kappa_sums` / :func:`kappa_from_sums` split
  it into sums over subjects and the final formula (sums add up over batches and DDP ranks).
* :func:`loo_majority_agreement`: the **human ceiling**, each rater's accuracy against the
  majority of the *other* raters (leave one rater out), and a model's accuracy against exactly
  the same targets. It is computed exactly from the count table: a rater who voted ``c`` on
  subject ``i`` is compared with ``argmax(counts[i] - e_c)``. Again in two parts:
  :func:`loo_sums` / :func:`loo_from_sums`.

Conventions (documented choices where the papers leave details open):

* **Unequal numbers of ratings** per subject (e.g. FER+ votes for "unknown" / "not a face" left
  out of the emotion classes): the kappas use the generalisation of Fleiss, Levin & Paik
  (*Statistical Methods for Rates and Proportions*, 3rd ed., ch. 18, unequal numbers of ratings
  per subject), ``kappa_j = 1 - sum_i n_ij (n_i - n_ij) / n_i / (N (n_bar - 1) p_j q_j)`` with
  ``n_bar`` the mean number of ratings and ``p_j`` the share of all ratings in class ``j``; the
  overall kappa is ``1 - sum_j D_j / (N (n_bar - 1) sum_j p_j q_j)``, i.e. the ``p_j q_j``-weighted
  mean of the category kappas. With a constant number of raters both are exactly Fleiss (1971)
  (and ``statsmodels.stats.inter_rater.fleiss_kappa``).
* Subjects with fewer than two ratings carry no agreement information and are left out
  (``min_ratings``).
* **Ties** in the leave-one-out majority are credited fractionally: when ``k`` classes tie for
  the others' majority, agreeing with one of them counts ``1/k`` (the expected accuracy under a
  uniformly random tie-break), and the class ``m`` is the target with weight ``1/k``. Nothing is
  dropped, and rater and model are scored against identical (fractional) targets.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

MIN_RATINGS = 2


# ------------------------------------------------------------------------------------------------
# Fleiss' kappa
# ------------------------------------------------------------------------------------------------
def as_count_tensor(counts: Any, name: str = "counts") -> torch.Tensor:
    """A ``[N, C]`` vote-count table as float64 (numpy or torch input), checked."""
    t = torch.as_tensor(np.asarray(counts.detach().cpu() if isinstance(counts, torch.Tensor) else counts),
                        dtype=torch.float64)
    if t.ndim != 2 or t.shape[1] < 2:
        raise ValueError(f"{name}: expected a [subjects, classes] count table with at least 2 classes, got shape {tuple(t.shape)}")
    if t.numel() and (bool((t < 0).any()) or not bool(torch.equal(t, t.round()))):
        raise ValueError(f"{name}: vote counts must be non-negative integers")
    return t


def kappa_sums(counts: torch.Tensor, min_ratings: int = MIN_RATINGS) -> dict[str, torch.Tensor]:
    """The sufficient statistics of (generalised) Fleiss' kappa over the subjects of ``counts``
    with at least ``min_ratings`` ratings (the others are left out): ``subjects`` N, ``ratings``
    sum_i n_i, ``class_ratings`` [C] sum_i n_ij and ``disagreement`` [C] sum_i n_ij (n_i - n_ij) /
    n_i. Sums over batches give the sums over the union."""
    counts = counts.to(torch.float64)
    n = counts.sum(dim=1)
    keep = n >= min_ratings
    c, n = counts[keep], n[keep]
    return {"subjects": keep.sum().to(torch.float64), "ratings": n.sum(), "class_ratings": c.sum(dim=0),
            "disagreement": (c * (n[:, None] - c) / n[:, None]).sum(dim=0)}


def kappa_from_sums(subjects: torch.Tensor, ratings: torch.Tensor, class_ratings: torch.Tensor,
                    disagreement: torch.Tensor) -> tuple[float, np.ndarray]:
    """(overall kappa, per-category kappas) from :func:`kappa_sums` (NaN where undefined: no
    subjects, or a category no rater used / every rater used)."""
    subjects, ratings = float(subjects), float(ratings)
    n_cls = class_ratings.numel()
    if subjects == 0 or ratings - subjects <= 0:
        return math.nan, np.full(n_cls, np.nan)
    p = (class_ratings / ratings).double()
    pq = p * (1 - p)
    scale = ratings - subjects            # N (n_bar - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = (1 - disagreement.double() / (scale * pq)).numpy()
    per[pq.numpy() <= 0] = np.nan
    total_pq = float(pq.sum())
    overall = 1 - float(disagreement.sum()) / (scale * total_pq) if total_pq > 0 else math.nan
    return overall, per


def fleiss_kappa(counts: Any, min_ratings: int = MIN_RATINGS) -> float:
    """Fleiss' kappa of a ``[N, C]`` vote-count table (numpy or torch); see the module notes for
    unequal numbers of ratings per subject."""
    return kappa_from_sums(**kappa_sums(as_count_tensor(counts), min_ratings))[0]


def category_kappas(counts: Any, min_ratings: int = MIN_RATINGS) -> np.ndarray:
    """Fleiss' (1971) category kappas ``kappa_j`` (agreement on "class j or not"), one per column."""
    return kappa_from_sums(**kappa_sums(as_count_tensor(counts), min_ratings))[1]


def add_rater(counts: Any, predictions: Any) -> torch.Tensor:
    """The vote table with one more rater (e.g. a model) who voted ``predictions[i]`` on subject i."""
    t = as_count_tensor(counts)
    pred = torch.as_tensor(np.asarray(predictions), dtype=torch.long).reshape(-1)
    if pred.numel() != t.shape[0]:
        raise ValueError(f"{pred.numel()} predictions for {t.shape[0]} subjects")
    return t + torch.nn.functional.one_hot(pred, t.shape[1]).to(t)


# ------------------------------------------------------------------------------------------------
# leave-one-rater-out majority (the human ceiling)
# ------------------------------------------------------------------------------------------------
def loo_sums(counts: torch.Tensor, predictions: torch.Tensor | None = None,
             min_ratings: int = MIN_RATINGS) -> dict[str, torch.Tensor]:
    """Sufficient statistics of the leave-one-rater-out comparison, per class ``[C]``, over the
    subjects with at least ``min_ratings`` ratings:

    * ``votes[c]``: ratings of class c (pairs subject x rater whose rater voted c);
    * ``target_mass[m]``: how often m is the majority of the other raters (ties split 1/k);
    * ``rater_hits[m]``: of those, how often the left-out rater voted m;
    * ``model_hits[m]``: of those, how often the model predicted m (zeros without predictions).
    """
    counts = counts.to(torch.float64)
    n = counts.sum(dim=1)
    keep = n >= min_ratings
    counts = counts[keep]
    n_cls = counts.shape[1]
    zeros = torch.zeros(n_cls, dtype=torch.float64, device=counts.device)
    out = {"votes": counts.sum(dim=0), "target_mass": zeros.clone(), "rater_hits": zeros.clone(), "model_hits": zeros.clone()}
    pred_onehot = None
    if predictions is not None:
        pred_onehot = torch.nn.functional.one_hot(predictions.to(counts.device).long()[keep], n_cls).to(torch.float64)
    for c in range(n_cls):
        voted = counts[:, c]
        if not bool((voted > 0).any()):
            continue
        others = counts.clone()
        others[:, c] -= 1
        tied = (others == others.max(dim=1, keepdim=True).values).to(torch.float64)
        share = tied / tied.sum(dim=1, keepdim=True)            # target distribution of the others' majority
        weighted = voted[:, None] * share                        # [N, C]: mass per target class
        out["target_mass"] += weighted.sum(dim=0)
        out["rater_hits"][c] += weighted[:, c].sum()
        if pred_onehot is not None:
            out["model_hits"] += (weighted * pred_onehot).sum(dim=0)
    return out


def loo_majority_agreement(counts: Any, predictions: Any = None, min_ratings: int = MIN_RATINGS) -> dict[str, Any]:
    """The human ceiling of a vote table: ``rater_accuracy`` (each rater against the majority of
    the others, over all ratings), ``rater_recall[m]`` (when the others' majority is m, how often
    the left-out rater says m) and, with ``predictions`` [N], the model's ``model_accuracy`` /
    ``model_recall`` against the very same targets."""
    s = loo_sums(as_count_tensor(counts), None if predictions is None else torch.as_tensor(np.asarray(predictions)),
                 min_ratings)
    return loo_from_sums(**s, with_model=predictions is not None)


def loo_from_sums(votes: torch.Tensor, target_mass: torch.Tensor, rater_hits: torch.Tensor, model_hits: torch.Tensor,
                  with_model: bool = True) -> dict[str, Any]:
    """:func:`loo_majority_agreement`'s dict from :func:`loo_sums`: ``ratings`` (their number),
    accuracies over all ratings, recalls per target class (NaN where a class is never the others'
    majority); the model's entries only ``with_model``."""
    total = float(votes.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        mass = target_mass.double().numpy()
        out: dict[str, Any] = {"ratings": total,
                               "rater_accuracy": float(rater_hits.sum()) / total if total > 0 else math.nan,
                               "rater_recall": np.where(mass > 0, rater_hits.double().numpy() / mass, np.nan)}
        if with_model:
            out["model_accuracy"] = float(model_hits.sum()) / total if total > 0 else math.nan
            out["model_recall"] = np.where(mass > 0, model_hits.double().numpy() / mass, np.nan)
    return out
