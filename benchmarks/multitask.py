"""Multi-task comparison against single-task baselines: Δm% and the mean rank over tasks.

The multi-task learning literature (Maninis et al. 2019; Liu et al. 2021-2023: CAGrad, FAMO) judges a
way of sharing a network by its average relative change over the single-task baseline,

    Δm% = 100 / T * sum_t (-1)^{l_t} (M_{m,t} - M_{b,t}) / M_{b,t},

where ``M_{m,t}`` is the method's metric on task ``t``, ``M_{b,t}`` the baseline's, and ``l_t = 1``
when lower is better for that metric (``facebench.lightning_modules.metrics.lower_is_better``) -- so a positive
Δm% is an improvement -- and by its mean rank over tasks (1 = best; ties share the average rank).

Both come from a suite's leaderboard (one row per method, dataset, split, seed, target): the metric
is first averaged over seeds per (method, task), Δm is computed per seed where the baseline has the
same seed (the seed-matched pairs then give a mean and a 95% interval), and a "task" is a target
(or a class of a multi-label target).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from facebench.benchmarks.stats import seed_summary
from facebench.lightning_modules.metrics import lower_is_better


def _task_table(board: pd.DataFrame, metric: str, split: str) -> pd.DataFrame:
    """Rows (dataset, method, seed, task) with the metric, test split, target-level rows."""
    b = board[(board["split"] == split) & board[metric].notna()].copy()
    b["class"] = b["class"].fillna("").astype(str)
    b["task"] = b["attribute"] + b["class"].map(lambda c: f"/{c}" if c else "")
    return b[["dataset", "method", "seed", "task", metric]]


def delta_m(board: pd.DataFrame, baseline: str, metrics: tuple[str, ...] = ("accuracy",), split: str = "test") -> pd.DataFrame:
    """Δm% of every method against ``baseline`` per dataset: the mean over tasks (and over the
    given metrics, each with its direction) of the signed relative change, per seed-matched pair,
    then mean ± 95% interval over seeds. Raises when the baseline has no rows."""
    if baseline not in set(board["method"]):
        raise ValueError(f"delta_m: the single-task baseline {baseline!r} has no results; methods: "
                         f"{', '.join(sorted(set(board['method'])))}")
    changes = []
    for metric in metrics:
        t = _task_table(board, metric, split)
        base = t[t["method"] == baseline].rename(columns={metric: "base"}).drop(columns="method")
        merged = t.merge(base, on=["dataset", "seed", "task"])
        sign = -1.0 if lower_is_better(metric) else 1.0
        merged["change"] = sign * (merged[metric] - merged["base"]) / merged["base"].where(merged["base"] != 0)
        changes.append(merged[["dataset", "method", "seed", "task", "change"]])
    per_seed = pd.concat(changes).groupby(["dataset", "method", "seed"])["change"].mean() * 100
    rows = []
    for (dataset, method), grp in per_seed.groupby(level=["dataset", "method"]):
        s = seed_summary(grp.reset_index(drop=True))
        rows.append({"dataset": dataset, "method": method, "baseline": baseline, "metrics": "+".join(metrics),
                     "delta_m_pct": s["mean"], "delta_m_ci95": s["ci95_high"] - s["mean"] if s["seeds"] > 1 else np.nan,
                     "seeds": int(s["seeds"])})
    return pd.DataFrame(rows)


def mean_rank(board: pd.DataFrame, metric: str = "accuracy", split: str = "test") -> pd.DataFrame:
    """Per dataset and method, the mean over tasks of its rank (seed-averaged metric; 1 = best)."""
    t = _task_table(board, metric, split)
    means = t.groupby(["dataset", "task", "method"])[metric].mean().reset_index()
    means["rank"] = means.groupby(["dataset", "task"])[metric].rank(ascending=lower_is_better(metric), method="average")
    return (means.groupby(["dataset", "method"])["rank"].agg(mean_rank="mean", tasks="size").reset_index()
            .assign(metric=metric).sort_values(["dataset", "mean_rank"]))


def multitask_table(board: pd.DataFrame, baseline: str, metrics: tuple[str, ...] = ("accuracy",),
                    split: str = "test") -> pd.DataFrame:
    """Δm% (against ``baseline``) and mean rank (over the first metric) per dataset and method."""
    dm = delta_m(board, baseline, metrics, split)
    mr = mean_rank(board, metrics[0], split).drop(columns="metric")
    return dm.merge(mr, on=["dataset", "method"], how="outer").sort_values(["dataset", "delta_m_pct"], ascending=[True, False])
