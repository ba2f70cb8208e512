"""``facebench analyze rater-agreement``: per-class Fleiss' kappa and the leave-one-rater-out human
ceiling of a dataset's rater votes (e.g. FER+'s 10 votes per image, FAD's 3 per trait), printed
and written to a CSV. The definitions, conventions and tie handling are those of
:mod:`facebench.core.agreement`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from facebench.benchmarks.analyses import register_analysis
from facebench.benchmarks.overrides import parse_sets
from facebench.datamodules.base import create_datamodule
from facebench.core.agreement import MIN_RATINGS, as_count_tensor, kappa_from_sums, kappa_sums, loo_majority_agreement
from facebench.core.io import write_csv


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
    p = argparse.ArgumentParser(prog="facebench analyze rater-agreement", description=rater_agreement_main.__doc__)
    p.add_argument("--dataset", required=True, help="registered datamodule with rater votes (e.g. ferplus)")
    p.add_argument("--root", required=True, help="the dataset folder")
    p.add_argument("--splits", nargs="+", help="splits to analyse (default: all); 'all' rows pool them")
    p.add_argument("--min-ratings", type=int, default=MIN_RATINGS, help="skip subjects with fewer ratings")
    p.add_argument("--out", help="CSV to write (e.g. results/ferplus_agreement.csv)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="datamodule arguments")
    args = p.parse_args(argv)
    dm = create_datamodule(args.dataset, root=args.root, **parse_sets(args.set))
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
