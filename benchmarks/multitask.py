"""Multi-task comparison against a single-task baseline: Δm% and the mean rank over tasks.

**Δm%** follows the multi-task optimisation papers (Maninis et al. 2019; LibMTL; Liu et al.,
FAMO, NeurIPS 2023, sec. 5), in **FAMO's sign: a performance drop, lower is better**:

    Δm% = 100 / K * sum_k (-1)^{δ_k} (M_{m,k} - M_{b,k}) / M_{b,k},   δ_k = 1 if higher is better,

over the K (task, metric) terms: ``M_{m,k}`` the method's value, ``M_{b,k}`` the single-task
baseline's on the same seed (``facebench.lightning_modules.metrics.lower_is_better`` gives each
metric's direction). A method better than the baseline has a *negative* Δm%; the columns are named
``delta_m_drop_pct`` so that no reader takes the sign for ours-minus-theirs.

A relative change is only as good as its denominator. A task enters a metric's terms only when the
baseline's value is estimable, and then for **every method and seed** of the table (one task set
per dataset and metric, listed with the reason of each exclusion, :func:`select_tasks`):

* metrics of the positive class (F1, recall, precision, average precision) need at least
  ``min_positives`` (default 20) positive test images; metrics of both classes (balanced accuracy,
  AUROC, kappa) as many positives and negatives (:mod:`facebench.benchmarks.attribute_support`);
* the baseline's value (higher-is-better metrics) must reach ``floor`` (default 0.1) at every seed:
  below it the relative change is a ratio of noise to noise -- on the CelebA subset the baseline's
  F1 on Wearing_Earrings at seed 0 is 0.0128, and a method's 0.273 there is a +2,027 % term;
* every method has a value at every seed (a metric undefined for one run leaves the task out for all).

Δm% is computed per seed (seed-matched pairs), then its mean over seeds with the seed-aware interval
and test of :mod:`facebench.benchmarks.stats` (seeds; and images where per-image predictions are
given). ``largest_term`` names the term with the largest magnitude, and ``sign_set_by_one_term``
the seeds whose Δm% would change sign without that seed's largest term.

**Mean rank**: per task (of the first metric's task set) the methods' ranks on the seed-mean
metric (1 = best; ties share the average rank), averaged over tasks.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from facebench.benchmarks.attribute_support import MIN_POSITIVES, counts_for, support_table
from facebench.benchmarks.stats import (ALPHA, RESOLUTION, RunPredictions, common_rows, format_per_seed, image_variance,
                                        influence, metric_values, outcome_label, t_over_seeds)
from facebench.lightning_modules.metrics import lower_is_better

#: The baseline's value (higher-is-better metrics) must reach this at every seed for a task to enter Δm%.
BASELINE_FLOOR = 0.1
#: Metrics of the positive class: need ``min_positives`` positive test images.
POSITIVE_CLASS_METRICS = ("f1", "recall", "precision", "average_precision")
#: Metrics of both classes: need ``min_positives`` positive and negative test images.
BOTH_CLASS_METRICS = ("balanced_accuracy", "auroc", "cohen_kappa")
SELECTION_COLUMNS = ["dataset", "metric", "task", "included", "reason", "positives", "negatives", "baseline_min"]


def task_values(board: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """Rows (dataset, method, seed, task, value) of ``metric`` (target-level and per-class rows)."""
    return metric_values(board, metric, split).rename(columns={"row": "task"})


def _class_need(metric: str) -> str:
    base = metric.split("@")[0]
    return "both" if base in BOTH_CLASS_METRICS else "positives" if base in POSITIVE_CLASS_METRICS else ""


def select_tasks(board: pd.DataFrame, baseline: str, metric: str, split: str = "test", min_positives: int = MIN_POSITIVES,
                 floor: float = BASELINE_FLOOR, support: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (dataset, task) of ``metric``: whether it enters Δm%, and why not (module docstring)."""
    t = task_values(board, metric, split)
    support = support_table(board, None, split) if support is None else support
    need = _class_need(metric)
    lower = lower_is_better(metric)
    rows = []
    b_split = board[board["split"] == split]
    level = b_split[b_split["class"].fillna("").astype(str) == ""] if "class" in b_split else b_split
    target_rows = {ds: list(dict.fromkeys(g["attribute"].astype(str))) for ds, g in level.groupby("dataset", sort=False)}
    for dataset in sorted(t["dataset"].unique()):
        d = t[t["dataset"] == dataset]
        # the tasks with a value, and every target-level row (a metric undefined everywhere, e.g. the F1
        # of an attribute without positive test images, is listed as excluded rather than dropped)
        tasks = list(dict.fromkeys(target_rows.get(dataset, []) + list(d["task"])))
        base = d[d["method"] == baseline].pivot_table(index="task", columns="seed", values="value", aggfunc="first")
        seeds = list(base.columns)
        counts = counts_for(support, dataset, tasks)
        values = d.pivot_table(index="task", columns=["method", "seed"], values="value", aggfunc="first")
        for task in tasks:
            pos, neg = counts.at[task, "positives"], counts.at[task, "negatives"]
            b = base.loc[task] if task in base.index else pd.Series(np.nan, index=seeds)
            reason = ""
            if need and not pd.isna(pos) and pos < min_positives:
                reason = f"{int(pos)} test positives < {min_positives}"
            elif need == "both" and not pd.isna(neg) and neg < min_positives:
                reason = f"{int(neg)} test negatives < {min_positives}"
            elif b.isna().any() or not seeds:
                reason = "the baseline has no value" + (f" at seed {b[b.isna()].index[0]}" if b.isna().any() else "")
            elif not lower and (b < floor).any():
                reason = f"baseline {metric} {b.min():.4g} < floor {floor:g} at seed {b.idxmin()}"
            elif (b == 0).any():
                reason = "baseline value 0"
            else:
                row = values.loc[task]
                for method in sorted(d["method"].unique()):
                    own = [s for s in d.loc[d["method"] == method, "seed"].unique() if s in seeds]
                    missing = [s for s in own if pd.isna(row.get((method, s), np.nan))]
                    if missing:
                        reason = f"no value for {method} at seed {missing[0]}"
                        break
            rows.append({"dataset": dataset, "metric": metric, "task": task, "included": not reason, "reason": reason,
                         "positives": pos, "negatives": neg, "baseline_min": float(b.min()) if len(b) else np.nan})
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def delta_m_terms(board: pd.DataFrame, baseline: str, metrics: Sequence[str], split: str,
                  selection: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method, seed, task, metric) of the included terms, with ``term`` the
    signed relative change in percent (FAMO's sign: positive = worse than the baseline)."""
    frames = []
    for metric in metrics:
        keep = selection[(selection["metric"] == metric) & selection["included"]]
        t = task_values(board, metric, split)
        t = t.merge(keep[["dataset", "task"]], on=["dataset", "task"])
        base = t[t["method"] == baseline].rename(columns={"value": "base"}).drop(columns="method")
        merged = t.merge(base, on=["dataset", "seed", "task"])
        direction = 1.0 if lower_is_better(metric) else -1.0          # (-1)^δ: δ = 1 for higher is better
        merged["term"] = 100.0 * direction * (merged["value"] - merged["base"]) / merged["base"] + 0.0   # no -0.0
        frames.append(merged.assign(metric=metric))
    cols = ["dataset", "method", "seed", "task", "metric", "value", "base", "term"]
    return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def _image_term(terms: pd.DataFrame, runs: dict[tuple[str, str, int], RunPredictions], dataset: str, method: str,
                baseline: str, seeds: list[int]) -> float | None:
    """Image term of the seed-mean Δm% from per-image predictions: each term's influence
    ``100 (-1)^δ (psi_m - r psi_b) / M_b`` (``r = M_m / M_b``), averaged over terms, per seed."""
    rm = [runs.get((dataset, method, s)) for s in seeds]
    rb = [runs.get((dataset, baseline, s)) for s in seeds]
    if any(r is None for r in rm + rb) or method == baseline:
        return None
    index = common_rows(rm + rb)
    per_seed = []
    for i, s in enumerate(seeds):
        ts = terms[terms["seed"] == s]
        total = np.zeros(len(index[0]))
        for metric, grp in ts.groupby("metric", sort=False):
            pm, pb = influence(rm[i], metric), influence(rb[i], metric)
            if pm is None or pb is None:
                return None
            cm, cb = {a: j for j, a in enumerate(rm[i].attributes)}, {a: j for j, a in enumerate(rb[i].attributes)}
            if not all(t in cm and t in cb for t in grp["task"]):
                return None
            direction = 1.0 if lower_is_better(metric) else -1.0
            for _, r in grp.iterrows():
                total += 100.0 * direction * (pm[index[i], cm[r["task"]]] - r["value"] / r["base"] * pb[index[len(seeds) + i], cb[r["task"]]]) / r["base"]
        per_seed.append(total / len(ts))
    v = float(image_variance(np.stack(per_seed, axis=1)[:, :, None])[0])
    return v if np.isfinite(v) else None


def delta_m(board: pd.DataFrame, baseline: str, metrics: Sequence[str] = ("accuracy",), split: str = "test",
            min_positives: int = MIN_POSITIVES, floor: float = BASELINE_FLOOR, runs: Sequence[RunPredictions] | None = None,
            selection: pd.DataFrame | None = None, support: pd.DataFrame | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Δm% (FAMO's sign) of every method against ``baseline`` per dataset, over the task sets of
    :func:`select_tasks` (or the given ``selection``): per seed, then mean over seeds with the
    seed-aware interval and test. Raises when the baseline has no rows."""
    if baseline not in set(board["method"]):
        raise ValueError(f"delta_m: the single-task baseline {baseline!r} has no results; methods: "
                         f"{', '.join(sorted(set(board['method'])))}")
    if selection is None:
        selection = pd.concat([select_tasks(board, baseline, m, split, min_positives, floor, support) for m in metrics],
                              ignore_index=True)
    terms = delta_m_terms(board, baseline, metrics, split, selection)
    by_run = {(r.dataset, r.method, int(r.seed)): r for r in runs or []}
    rows = []
    for (dataset, method), grp in terms.groupby(["dataset", "method"], sort=True):
        per_seed = grp.groupby("seed")["term"].mean()
        seeds = [int(s) for s in per_seed.index]
        iv = _image_term(grp, by_run, dataset, method, baseline, seeds) if len(seeds) > 1 else None
        r = t_over_seeds(per_seed.to_numpy(), iv, tolerance=RESOLUTION * 100, alpha=alpha)
        mean, half = float(r["mean"]), float(r["half"])
        big = grp.loc[grp["term"].abs().idxmax()]
        fragile = []
        for s, terms_s in grp.groupby("seed"):
            top = terms_s["term"].abs().idxmax()
            rest = terms_s["term"].drop(index=top)
            if len(rest) and np.sign(rest.mean()) != np.sign(terms_s["term"].mean()):
                fragile.append(str(s))
        rows.append({"dataset": dataset, "method": method, "baseline": baseline, "metrics": "+".join(metrics),
                     "delta_m_drop_pct": mean, "delta_m_ci95": half, "ci95_low": mean - half, "ci95_high": mean + half,
                     "per_seed": format_per_seed(per_seed.to_numpy(), scale=1.0), "p_value": float(r["p"]),
                     "significant": bool(r["p"] < alpha), "test": outcome_label(r, len(seeds)),
                     "variance": ("seeds + images" if bool(r["image"]) else "seeds") if bool(r["tested"]) else "",
                     "seeds": len(seeds), "terms": int(len(grp) / max(len(seeds), 1)),
                     "largest_term": "" if method == baseline else f"{big['task']} {big['metric']} (seed {big['seed']}): {big['term']:+.1f}",
                     "sign_set_by_one_term": " ".join(fragile)})
    return pd.DataFrame(rows)


def mean_rank(board: pd.DataFrame, metric: str = "accuracy", split: str = "test",
              selection: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per dataset and method, the mean over tasks (those ``selection`` includes, when given) of its
    rank on the seed-mean ``metric`` (1 = best)."""
    t = task_values(board, metric, split)
    if selection is not None:
        keep = selection[(selection["metric"] == metric) & selection["included"]]
        t = t.merge(keep[["dataset", "task"]], on=["dataset", "task"])
    means = t.groupby(["dataset", "task", "method"])["value"].mean().reset_index()
    means["rank"] = means.groupby(["dataset", "task"])["value"].rank(ascending=lower_is_better(metric), method="average")
    return (means.groupby(["dataset", "method"])["rank"].agg(mean_rank="mean", tasks="size").reset_index()
            .assign(metric=metric).sort_values(["dataset", "mean_rank"]))


def multitask_table(board: pd.DataFrame, baseline: str, metrics: Sequence[str] = ("accuracy",), split: str = "test",
                    min_positives: int = MIN_POSITIVES, floor: float = BASELINE_FLOOR,
                    runs: Sequence[RunPredictions] | None = None, extra_metrics: Sequence[str] = ("balanced_accuracy",),
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(table, selection)``: per dataset and method, Δm% over ``metrics`` (FAMO's sign), each
    metric's own Δm% (``delta_m_drop_pct[<metric>]``, also for ``extra_metrics`` such as balanced
    accuracy), and the mean rank over the first metric's tasks; and the task selection of every metric."""
    metrics = tuple(metrics)
    every = list(dict.fromkeys(list(metrics) + [m for m in extra_metrics if m in board.columns]))
    support = support_table(board, runs, split)
    selection = pd.concat([select_tasks(board, baseline, m, split, min_positives, floor, support) for m in every],
                          ignore_index=True)
    table = delta_m(board, baseline, metrics, split, runs=runs, selection=selection)
    if len(every) > 1:
        for m in every:
            own = delta_m(board, baseline, (m,), split, runs=runs, selection=selection)
            own = own[["dataset", "method", "delta_m_drop_pct", "delta_m_ci95", "per_seed"]].rename(
                columns={c: f"{c}[{m}]" for c in ("delta_m_drop_pct", "delta_m_ci95", "per_seed")})
            table = table.merge(own, on=["dataset", "method"], how="left")
    mr = mean_rank(board, metrics[0], split, selection).drop(columns="metric")
    table = table.merge(mr, on=["dataset", "method"], how="outer")
    return table.sort_values(["dataset", "delta_m_drop_pct"], ascending=[True, True]).reset_index(drop=True), selection


def excluded_tasks(selection: pd.DataFrame) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``{(dataset, metric): [(task, reason), ...]}`` of the tasks left out."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for _, r in selection[~selection["included"]].iterrows():
        out.setdefault((r["dataset"], r["metric"]), []).append((r["task"], r["reason"]))
    return out


def settings_of(multitask: dict[str, Any] | None) -> dict[str, Any]:
    """The Δm% settings of a suite's ``multitask`` block with their defaults."""
    mt = multitask or {}
    return {"baseline": mt.get("baseline"), "metrics": tuple(mt.get("metrics") or ("accuracy",)),
            "min_positives": int(mt.get("min_positives", MIN_POSITIVES)),
            "baseline_floor": float(mt.get("baseline_floor", BASELINE_FLOOR))}
