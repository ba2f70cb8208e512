"""Agreement between raters, and between a model and raters, from per-class vote counts.

Everything here reads a vote table ``counts`` ``[N subjects, C classes]``: how many raters put
subject ``i`` in class ``j`` (the ``votes`` of :class:`~datamodules.base.SampleTable`, e.g. FER+'s
10 rater votes per image, or FAD's 3 per trait).

* :func:`fleiss_kappa` / :func:`category_kappas`: Fleiss' kappa (Fleiss 1971, "Measuring nominal
  scale agreement among many raters", eqs. for P_i, p_j, kappa and the category kappas kappa_j);
  the FAD paper reports it per trait (Table 2).
* :func:`loo_majority_agreement`: the **human ceiling**, each rater's accuracy against the
  majority of the *other* raters (leave one rater out), and a model's accuracy against exactly
  the same targets. It is computed exactly from the count table: a rater who voted ``c`` on
  subject ``i`` is compared with ``argmax(counts[i] - e_c)``.
* :class:`FleissKappa` and :class:`RaterAgreement`: the same as torchmetrics ``Metric`` objects
  holding only sums (``dist_reduce_fx="sum"``), so they are exact under DDP.
* ``facebench analyze rater-agreement``: per-class kappa and the human-ceiling table of a
  dataset's votes (e.g. FER+), printed and written to a CSV.

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

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics import Metric

from lightning_modules.registry import register_analysis

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
    """The sufficient statistics of (generalised) Fleiss' kappa over the subjects of ``counts``:
    ``subjects`` N, ``ratings`` sum_i n_i, ``class_ratings`` [C] sum_i n_ij and ``disagreement``
    [C] sum_i n_ij (n_i - n_ij) / n_i. Sums over batches give the sums over the union."""
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
    """Sufficient statistics of the leave-one-rater-out comparison, per class ``[C]``:

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


# ------------------------------------------------------------------------------------------------
# torchmetrics Metrics (sums only: exact under DDP)
# ------------------------------------------------------------------------------------------------
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
    ``update(counts [B, C], predictions [B])``; ``compute()`` returns :func:`loo_from_sums`'s dict."""

    STATES = {"votes": True, "target_mass": True, "rater_hits": True, "model_hits": True}

    def update(self, counts: torch.Tensor, predictions: torch.Tensor | None = None) -> None:
        self._accumulate(loo_sums(counts, predictions, self.min_ratings))

    def compute(self) -> dict[str, Any]:
        return loo_from_sums(**self._states())


# ------------------------------------------------------------------------------------------------
# facebench analyze rater-agreement
# ------------------------------------------------------------------------------------------------
def agreement_table(counts: Any, classes: Sequence[str], min_ratings: int = MIN_RATINGS) -> pd.DataFrame:
    """One row per class and an ``all`` row: subjects, ratings, share of the ratings, Fleiss'
    (category) kappa, the human ceiling (``rater_agreement_loo``: rater against the majority of
    the others; per class the rater's recall of that majority class) and ``majority_share``
    (subjects whose plain majority is the class, ties split)."""
    t = as_count_tensor(counts)
    sums = kappa_sums(t, min_ratings)
    kappa, per_class = kappa_from_sums(**sums)
    loo = loo_majority_agreement(t, None, min_ratings)
    kept = t[t.sum(dim=1) >= min_ratings]
    tied = (kept == kept.max(dim=1, keepdim=True).values).double()
    majority = (tied / tied.sum(dim=1, keepdim=True)).sum(dim=0).numpy()
    ratings = sums["class_ratings"].numpy()
    n_sub = int(sums["subjects"])
    rows = [{"class": c, "subjects": n_sub, "ratings": int(ratings[j]),
             "rating_share": ratings[j] / max(ratings.sum(), 1), "majority_share": majority[j] / max(n_sub, 1),
             "fleiss_kappa": per_class[j], "rater_agreement_loo": loo["rater_recall"][j]}
            for j, c in enumerate(classes)]
    rows.append({"class": "all", "subjects": n_sub, "ratings": int(ratings.sum()), "rating_share": 1.0,
                 "majority_share": 1.0, "fleiss_kappa": kappa, "rater_agreement_loo": loo["rater_accuracy"]})
    return pd.DataFrame(rows)


def dataset_agreement(dm: Any, splits: Sequence[str] | None = None, min_ratings: int = MIN_RATINGS) -> pd.DataFrame:
    """:func:`agreement_table` of every voted target of a datamodule, per split and over all splits."""
    dm.setup()
    task = dm.task
    splits = list(splits or dm.tables)
    unknown = [s for s in splits if s not in dm.tables]
    if unknown:
        raise ValueError(f"{dm.registered_name}: no split(s) {unknown}; splits: {', '.join(dm.tables)}")
    frames = []
    voted = [t for t in task.targets if any(t.name in dm.tables[s].votes for s in splits)]
    if not voted:
        raise ValueError(f"{dm.registered_name}: no rater votes in splits {splits} (targets: {', '.join(task.names)})")
    for target in voted:
        per_split = {s: dm.tables[s].votes[target.name] for s in splits if target.name in dm.tables[s].votes}
        if len(per_split) > 1:
            per_split["all"] = np.concatenate(list(per_split.values()))
        for split, counts in per_split.items():
            if counts.shape[1] != len(target.vote_columns):
                raise ValueError(f"{dm.registered_name}: votes of {target.name!r} have {counts.shape[1]} columns, "
                                 f"the target names {len(target.vote_columns)}: {', '.join(target.vote_columns)}")
            df = agreement_table(counts, target.vote_columns, min_ratings)
            df.insert(0, "target", target.name)
            df.insert(0, "split", split)
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


@register_analysis("rater-agreement")
def rater_agreement_main(argv: list[str]) -> int:
    """``facebench analyze rater-agreement --dataset ferplus --root DIR [--out CSV]``: per-class
    Fleiss' kappa and the leave-one-rater-out human ceiling of a dataset's rater votes."""
    from benchmarks.cli import _parse_sets
    from datamodules.core.io import write_csv
    from datamodules.base import create_datamodule

    p = argparse.ArgumentParser(prog="facebench analyze rater-agreement", description=rater_agreement_main.__doc__)
    p.add_argument("--dataset", required=True, help="registered datamodule with rater votes (e.g. ferplus)")
    p.add_argument("--root", required=True, help="the dataset folder")
    p.add_argument("--splits", nargs="+", help="splits to analyse (default: all); 'all' rows pool them")
    p.add_argument("--min-ratings", type=int, default=MIN_RATINGS, help="skip subjects with fewer ratings")
    p.add_argument("--out", help="CSV to write (e.g. results/ferplus_agreement.csv)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="datamodule arguments")
    args = p.parse_args(argv)
    dm = create_datamodule(args.dataset, root=args.root, **_parse_sets(args.set))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        table = dataset_agreement(dm, args.splits, args.min_ratings)
    table.insert(0, "dataset", args.dataset)
    with pd.option_context("display.width", 160, "display.max_rows", 500, "display.float_format", "{:.4f}".format):
        for (split, target), df in table.groupby(["split", "target"], sort=False):
            print(f"\n{args.dataset} / {split} / {target}: Fleiss' kappa per class and human ceiling "
                  f"(rater vs majority of the other raters)")
            print(df.drop(columns=["dataset", "split", "target"]).to_string(index=False))
    if args.out:
        out = write_csv(Path(args.out), table, float_format="%.6g")
        print(f"\nwrote {out}", file=sys.stderr)
    return 0
