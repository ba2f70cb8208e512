"""Statistics for leaderboards: seed aggregates, paired significance tests, ranks.

* Across seeds: mean, sample std and the 95% confidence interval of the mean (Student t).
* Paired comparisons of two methods on the same test images (aligned by sample id):
  - **McNemar** per binary attribute on the correct/incorrect table; exact binomial test on the
    discordant pairs when there are fewer than 25 of them, else the chi-square test with continuity
    correction (the usual rule, and what ``statsmodels.stats.contingency_tables.mcnemar`` gives with
    ``exact=True`` / ``exact=False, correction=True``). With several seeds the discordant counts of
    seed-matched pairs are summed (pooled McNemar). p-values are Holm-adjusted across attributes.
  - **Paired bootstrap** of the difference in mean accuracy over attributes: images resampled with
    replacement (seeded), two-sided p-value ``2 * min(P(d <= 0), P(d >= 0))``, percentile 95% CI.
* Rank table: per attribute, methods ranked by mean accuracy over seeds (ties share the average
  rank); mean rank, and wins / losses = significant (Holm-adjusted McNemar) pairwise results.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

ALPHA = 0.05


def seed_summary(values: pd.Series) -> pd.Series:
    """mean, std, 95% CI half-width and count of per-seed values."""
    v = values.dropna().to_numpy(dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else np.nan
    std = float(v.std(ddof=1)) if n > 1 else np.nan
    half = float(sps.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else np.nan
    return pd.Series({"mean": mean, "std": std, "ci95_low": mean - half if n > 1 else np.nan,
                      "ci95_high": mean + half if n > 1 else np.nan, "seeds": n})


def mcnemar_test(b: int, c: int, exact: bool | None = None) -> tuple[float, float]:
    """McNemar's test on the discordant counts ``b`` (A right, B wrong) and ``c`` (A wrong, B right).
    Returns (statistic, p-value)."""
    n = b + c
    if n == 0:
        return 0.0, 1.0
    if exact is None:
        exact = n < 25
    if exact:
        stat = float(min(b, c))
        p = float(min(1.0, 2.0 * sps.binom.cdf(min(b, c), n, 0.5)))
        return stat, p
    stat = (abs(b - c) - 1.0) ** 2 / n
    return float(stat), float(sps.chi2.sf(stat, 1))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN kept)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q)
    adj = np.empty(m)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, (m - k) * q[i])
        adj[i] = min(1.0, running)
    out[ok] = adj
    return out


@dataclass
class RunPredictions:
    method: str
    dataset: str
    seed: int
    ids: np.ndarray
    correct: np.ndarray        # bool [N, A] (binary columns at threshold 0.5; -1 labels -> masked)
    valid: np.ndarray          # bool [N, A]
    attributes: list[str]


def load_run_predictions(run_dir: Path, split: str = "test") -> RunPredictions | None:
    """Correctness matrix of a finished run's predictions on one split (one column per binary or
    multi-class target and per multi-label class), from its result records."""
    import torch

    from facebench.benchmarks.records import load_run_record

    rec = load_run_record(run_dir, split)
    if rec is None or "probs" not in rec.predictions or rec.predictions["probs"].shape[1] != rec.task.n_logits:
        return None
    task, p = rec.task, rec.predictions
    pred = task.predictions(torch.as_tensor(p["probs"])).numpy()
    labels = p["labels"]
    cols, names = [], []
    for t, ys in zip(task.targets, task.label_slices):
        if t.kind == "multilabel":
            cols += list(range(ys.start, ys.stop))
            names += [f"{t.name}/{c}" for c in t.classes]
        else:
            cols.append(ys.start)
            names.append(t.name)
    valid = labels[:, cols] >= 0
    correct = (pred[:, cols] == labels[:, cols]) & valid
    return RunPredictions(rec.method, rec.dataset, rec.seed, p["ids"], correct, valid, names)


def _align(a: RunPredictions, b: RunPredictions) -> tuple[np.ndarray, np.ndarray]:
    common, ia, ib = np.intersect1d(a.ids, b.ids, return_indices=True)
    if len(common) == 0:
        raise ValueError(f"{a.method} and {b.method} on {a.dataset} share no test images")
    return ia, ib


def _bootstrap_mean_difference(ca: np.ndarray, cb: np.ndarray, valid: np.ndarray, n_boot: int,
                               rng: np.random.Generator, chunk: int = 100) -> np.ndarray:
    """Bootstrap distribution of mean-over-attributes accuracy(A) - accuracy(B), resampling images.
    Each replicate is a vector of multiplicities ``w`` over images: per attribute
    ``sum_i w_i (a_ij - b_ij) / sum_i w_i v_ij``, then the mean over attributes."""
    n = len(ca)
    d = ca.astype(np.float64) - cb.astype(np.float64)
    v = valid.astype(np.float64)
    out = []
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        w = np.stack([np.bincount(rng.integers(0, n, size=n), minlength=n) for _ in range(k)]).astype(np.float64)
        out.append(((w @ d) / np.maximum(w @ v, 1)).mean(1))
    return np.concatenate(out)


def paired_comparisons(runs: list[RunPredictions], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """McNemar per attribute and paired bootstrap of the mean, for every pair of methods per dataset."""
    rows = []
    by_key: dict[tuple[str, str], dict[int, RunPredictions]] = {}
    for r in runs:
        by_key.setdefault((r.dataset, r.method), {})[r.seed] = r
    datasets = sorted({d for d, _ in by_key})
    rng = np.random.default_rng(seed)
    for dataset in datasets:
        methods = sorted(m for d, m in by_key if d == dataset)
        for ma, mb in itertools.combinations(methods, 2):
            ra, rb = by_key[(dataset, ma)], by_key[(dataset, mb)]
            seeds = sorted(set(ra) & set(rb))
            if not seeds:   # no seed in common: pair the first seeds of each
                seeds_a, seeds_b = [min(ra)], [min(rb)]
            else:
                seeds_a = seeds_b = seeds
            attrs = ra[seeds_a[0]].attributes
            if attrs != rb[seeds_b[0]].attributes:
                continue
            b = np.zeros(len(attrs), dtype=np.int64)
            c = np.zeros(len(attrs), dtype=np.int64)
            acc_a, acc_b, boot = [], [], []
            for sa, sb in zip(seeds_a, seeds_b):
                A, B = ra[sa], rb[sb]
                ia, ib = _align(A, B)
                va = A.valid[ia] & B.valid[ib]
                ca, cb = A.correct[ia] & va, B.correct[ib] & va
                b += (ca & ~cb).sum(0)
                c += (~ca & cb).sum(0)
                # per-image mean correctness over attributes, for the bootstrap of the mean accuracy
                denom = np.maximum(va.sum(0), 1)
                acc_a.append((ca.sum(0) / denom).mean())
                acc_b.append((cb.sum(0) / denom).mean())
                boot.append(_bootstrap_mean_difference(ca, cb, va, n_boot, rng))
            p_attr = np.array([mcnemar_test(int(x), int(y))[1] for x, y in zip(b, c)])
            p_holm = holm(p_attr)
            boot_d = np.mean(boot, axis=0)
            d = float(np.mean(acc_a) - np.mean(acc_b))
            p_boot = float(min(1.0, 2 * min((boot_d <= 0).mean(), (boot_d >= 0).mean())))
            lo, hi = np.percentile(boot_d, [2.5, 97.5])
            for j, attr in enumerate(attrs):
                winner = "" if p_holm[j] >= ALPHA else (ma if b[j] > c[j] else mb)
                rows.append({"dataset": dataset, "method_a": ma, "method_b": mb, "attribute": attr, "test": "mcnemar",
                             "a_only_correct": int(b[j]), "b_only_correct": int(c[j]), "p_value": p_attr[j],
                             "p_holm": p_holm[j], "significant": bool(p_holm[j] < ALPHA), "winner": winner,
                             "seeds": len(seeds_a)})
            rows.append({"dataset": dataset, "method_a": ma, "method_b": mb, "attribute": "mean", "test": "paired_bootstrap",
                         "difference": d, "ci95_low": float(lo), "ci95_high": float(hi), "p_value": p_boot,
                         "significant": bool(p_boot < ALPHA), "winner": "" if p_boot >= ALPHA else (ma if d > 0 else mb),
                         "seeds": len(seeds_a)})
    return pd.DataFrame(rows)


def efficiency_table(board: pd.DataFrame) -> pd.DataFrame:
    """Cost per (dataset, method), mean over seeds: parameters, FLOPs per image, training wall time,
    training images per second."""
    cols = [c for c in ("params", "trainable_params", "flops_per_image", "train_time_s", "train_images_per_s",
                        "wall_time_s", "epochs") if c in board.columns]
    if not cols:
        return pd.DataFrame()
    per_run = board.drop_duplicates(["dataset", "method", "seed"])
    return per_run.groupby(["dataset", "method"])[cols].mean().reset_index()


def seed_table(board: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "auroc"),
               split: str = "test") -> pd.DataFrame:
    """Across seeds, per (dataset, method, attribute, metric): mean, std and 95% CI; the attribute
    ``mean`` is the per-seed mean over attributes."""
    b = board[board["split"] == split]
    rows = []
    for metric in [m for m in metrics if m in b.columns]:
        bm = b[b[metric].notna()]
        per_attr = bm.groupby(["dataset", "method", "attribute", "class", "seed"])[metric].mean().reset_index()
        overall = bm.groupby(["dataset", "method", "seed"])[metric].mean().reset_index().assign(attribute="mean", **{"class": ""})
        for keys, grp in pd.concat([per_attr, overall]).groupby(["dataset", "method", "attribute", "class"]):
            rows.append({**dict(zip(["dataset", "method", "attribute", "class"], keys)), "metric": metric,
                         **seed_summary(grp[metric]).to_dict()})
    return pd.DataFrame(rows)


def rank_table(board: pd.DataFrame, comparisons: pd.DataFrame | None = None, metric: str = "accuracy",
               split: str = "test") -> pd.DataFrame:
    """Mean rank over attributes (1 = best), attributes won (best), and significant pairwise wins / losses."""
    if metric not in board.columns:
        return pd.DataFrame()
    b = board[(board["split"] == split) & board[metric].notna()]
    if b.empty:
        return pd.DataFrame()
    b = b.assign(attribute=b["attribute"] + b["class"].fillna("").map(lambda c: f"/{c}" if c else ""))
    means = b.groupby(["dataset", "attribute", "method"])[metric].mean().reset_index()
    means["rank"] = means.groupby(["dataset", "attribute"])[metric].rank(ascending=False, method="average")
    out = means.groupby(["dataset", "method"]).agg(mean_rank=("rank", "mean"), attributes=("rank", "size"),
                                                   best_on=("rank", lambda r: int((r == 1).sum()))).reset_index()
    out["wins"] = 0
    out["losses"] = 0
    if comparisons is not None and not comparisons.empty:
        sig = comparisons[(comparisons["test"] == "mcnemar") & comparisons["significant"]]
        for (dataset, method), grp in out.groupby(["dataset", "method"]):
            s = sig[sig["dataset"] == dataset]
            involved = s[(s["method_a"] == method) | (s["method_b"] == method)]
            wins = int((involved["winner"] == method).sum())
            out.loc[grp.index, "wins"] = wins
            out.loc[grp.index, "losses"] = int(len(involved) - wins)
    return out.sort_values(["dataset", "mean_rank"])
