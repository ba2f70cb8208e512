"""How many test images carry each label, and the attribute sets the tables average over.

A per-attribute mean treats every attribute alike, however few test images show it: in the CelebA
subset's test split (660 images) Bald has no positive image, Double_Chin one and Chubby four, yet in
"Average (40)" each weighs as much as Male (156). Every per-attribute table therefore shows each
row's test **positives** and **negatives**, and two more averages beside the full one:

* ``Average (powered N)``: over the N rows with at least ``min_positives`` (default
  :data:`MIN_POSITIVES` = 20) positive *and* negative test images -- rows whose accuracy, recall or
  F1 rest on a handful of images are left out;
* ``Average (label-consistent N)``: without High_Cheekbones, Pointy_Nose and Oval_Face, the three
  CelebA attributes whose labels Wu et al. (CVPRW 2023, arXiv 2210.07356, abstract) found to have
  essentially random annotator consistency (shown for tables of CelebA attributes).

Where the counts come from, in this order (one pair per dataset and row: where runs disagree, the
run with the fewest positives):

1. ``positives`` / ``negatives`` columns of the leaderboard, when the records carry them;
2. a class row of a multi-class target: its ``support`` (test images of that class), negatives the
   target's other labelled images (the sum of its classes' support, less this one);
3. a binary row: ``positive_rate`` (label prevalence among the labelled images) times ``n_samples``
   (the test split's size), only where *every* binary row of the dataset gives a whole number -- in
   a mixture of datasets a target is labelled on part of the split only, and the product is not a
   count;
4. :func:`support_from_predictions`, from per-image predictions (labels recovered from the hard
   decision and its correctness) where the leaderboard has none of these.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

#: A row enters "Average (powered N)" with at least this many positive and negative test images.
MIN_POSITIVES = 20
#: CelebA attributes with essentially random annotator consistency (Wu et al., CVPRW 2023, abstract).
LABEL_INCONSISTENT = ("High_Cheekbones", "Pointy_Nose", "Oval_Face")
AVERAGE = "Average"
SUPPORT_COLUMNS = ["dataset", "row", "positives", "negatives", "support_source"]


def row_labels(attribute: pd.Series, cls: pd.Series) -> pd.Series:
    """``attribute`` for target-level rows, ``attribute/class`` for per-class rows."""
    cls = cls.fillna("").astype(str)
    attribute = attribute.astype(str)
    return attribute.where(cls == "", attribute + "/" + cls)


def _whole(x: pd.Series, n: pd.Series) -> pd.Series:
    """True where ``x`` is a count written with 6 significant digits (``positive_rate * n``)."""
    return (x - x.round()).abs() <= 0.02 + 1e-6 * n


def leaderboard_support(board: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Per (dataset, row): test positives and negatives and where they came from (module docstring);
    rows whose counts cannot be known are absent."""
    if board.empty:
        return pd.DataFrame(columns=SUPPORT_COLUMNS)
    b = board[board["split"] == split].copy()
    b["class"] = b["class"].fillna("").astype(str) if "class" in b else ""
    b["row"] = row_labels(b["attribute"], b["class"])
    frames = []
    if {"positives", "negatives"} <= set(b.columns):
        r = b[b["positives"].notna() & b["negatives"].notna()]
        frames.append(r.assign(support_source="records")[["dataset", "row", "positives", "negatives", "support_source"]])
    if "support" in b.columns:
        c = b[(b["class"] != "") & b["support"].notna()]
        if not c.empty:
            total = c.groupby(["dataset", "method", "seed", "attribute"])["support"].transform("sum")
            frames.append(c.assign(positives=c["support"], negatives=total - c["support"], support_source="class support")
                          [["dataset", "row", "positives", "negatives", "support_source"]])
    if "positive_rate" in b.columns and "n_samples" in b.columns:
        r = b[(b["class"] == "") & b["positive_rate"].notna() & b["n_samples"].notna()]
        x = r["positive_rate"] * r["n_samples"]
        whole = _whole(x, r["n_samples"]).groupby(r["dataset"]).transform("all")
        r = r[whole]
        pos = x[whole].round()
        frames.append(r.assign(positives=pos, negatives=r["n_samples"] - pos, support_source="positive_rate × n_samples")
                      [["dataset", "row", "positives", "negatives", "support_source"]])
    if not frames:
        return pd.DataFrame(columns=SUPPORT_COLUMNS)
    allrows = pd.concat(frames, ignore_index=True)
    # the first source that knows a row wins; over runs, the smallest count (a run scored on fewer images)
    allrows["rank"] = allrows["support_source"].map({"records": 0, "class support": 1}).fillna(2)
    best = allrows.groupby(["dataset", "row"])["rank"].transform("min")
    allrows = allrows[allrows["rank"] == best]
    return _one_per_row(allrows)


def _one_per_row(rows: pd.DataFrame) -> pd.DataFrame:
    """One (positives, negatives) pair per (dataset, row): the run with the fewest positives (then
    negatives) where runs disagree, e.g. one scored on fewer images."""
    rows = rows.sort_values(["positives", "negatives"], kind="stable")
    out = rows.drop_duplicates(["dataset", "row"]).copy()
    out[["positives", "negatives"]] = out[["positives", "negatives"]].astype("int64")
    return out[SUPPORT_COLUMNS].reset_index(drop=True)


def support_from_predictions(runs: Sequence) -> pd.DataFrame:
    """Per (dataset, row) from :class:`facebench.benchmarks.stats.RunPredictions` with hard
    decisions: a binary label is the decision where it was right and the other class where not."""
    rows = []
    for r in runs:
        if getattr(r, "predicted", None) is None:
            continue
        binary = np.isin(r.predicted, (0, 1)).all(axis=0)
        labels = np.where(r.correct, r.predicted, 1 - r.predicted)
        for j, name in enumerate(r.attributes):
            if binary[j]:
                v = r.valid[:, j]
                pos = int((labels[v, j] == 1).sum())
                rows.append({"dataset": r.dataset, "row": name, "positives": pos, "negatives": int(v.sum()) - pos,
                             "support_source": "predictions"})
    if not rows:
        return pd.DataFrame(columns=SUPPORT_COLUMNS)
    return _one_per_row(pd.DataFrame(rows))


def support_table(board: pd.DataFrame, runs: Sequence | None = None, split: str = "test") -> pd.DataFrame:
    """:func:`leaderboard_support` of the leaderboard, completed from the predictions for rows it lacks."""
    known = leaderboard_support(board, split)
    if runs:
        extra = support_from_predictions(runs)
        if not extra.empty:
            have = set(zip(known["dataset"], known["row"]))
            extra = extra[[(d, r) not in have for d, r in zip(extra["dataset"], extra["row"])]]
            known = pd.concat([known, extra], ignore_index=True) if not known.empty else extra
    return known.reset_index(drop=True)


def counts_for(support: pd.DataFrame, dataset: str, rows: Iterable[str]) -> pd.DataFrame:
    """``positives`` / ``negatives`` of ``rows`` of one dataset (NaN where unknown), indexed by row."""
    s = support[support["dataset"] == dataset].set_index("row")[["positives", "negatives"]]
    return s.reindex(list(rows)).astype("Float64")


def powered_rows(support: pd.DataFrame, dataset: str, rows: Sequence[str], min_positives: int = MIN_POSITIVES) -> list[str] | None:
    """The rows with at least ``min_positives`` positive and negative test images; ``None`` when
    the counts of some row are unknown (the set cannot be decided)."""
    c = counts_for(support, dataset, rows)
    if c.isna().any().any() or c.empty:
        return None
    ok = (c["positives"] >= min_positives) & (c["negatives"] >= min_positives)
    return [r for r in rows if bool(ok[r])]


def label_consistent_rows(rows: Sequence[str]) -> list[str] | None:
    """The rows other than :data:`LABEL_INCONSISTENT`; ``None`` for tables without CelebA attributes."""
    from facebench.datamodules.celeba import CELEBA_ATTRIBUTES

    if not any(str(r).split("/")[0] in CELEBA_ATTRIBUTES for r in rows):
        return None
    return [r for r in rows if str(r).split("/")[0] not in LABEL_INCONSISTENT]


def subset_label(name: str, n: int) -> str:
    """The row of a named subset's average, e.g. ``Average (powered 34)``."""
    return f"{AVERAGE} ({name} {n})"


def average_subsets(support: pd.DataFrame, dataset: str, rows: Sequence[str],
                    min_positives: int = MIN_POSITIVES) -> dict[str, list[str]]:
    """``{"powered": rows, "label-consistent": rows}``: the extra averages of a table with ``rows``,
    the powered subset where every row's counts are known, the label-consistent one for tables of
    CelebA attributes (shown even when none of the three is among the rows)."""
    out: dict[str, list[str]] = {}
    powered = powered_rows(support, dataset, rows, min_positives)
    if powered:
        out["powered"] = powered
    consistent = label_consistent_rows(rows)
    if consistent:
        out["label-consistent"] = consistent
    return out


def average_sets(support: pd.DataFrame, dataset: str, rows: Sequence[str],
                 min_positives: int = MIN_POSITIVES) -> dict[str, list[str]]:
    """:func:`average_subsets` keyed by their row labels (``Average (powered 34)``, ...)."""
    return {subset_label(k, len(v)): v for k, v in average_subsets(support, dataset, rows, min_positives).items()}
