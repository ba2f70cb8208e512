"""The multi-task report of a suite: Δm% and mean rank against its single-task baseline, and
seed-aware tests of every method against that baseline.

A suite names its baseline with the top-level key ``multitask: {baseline: <method key>, metrics:
[f1, accuracy], min_positives: 20, baseline_floor: 0.1}`` (read by the reports only: it is in no
run's config, so adding or changing it never invalidates finished runs; the last two are optional,
:mod:`facebench.benchmarks.multitask`). ``facebench report`` then writes, from the leaderboard (and
the runs' per-image predictions where there are any, for the image term of every interval):

* ``<results>/multitask.csv``: per dataset and method, Δm% against the baseline in FAMO's sign (a
  performance drop: lower is better), over the named metrics and each on its own, also on balanced
  accuracy: mean over seeds, 95% interval, per-seed values, p-value of the seed-aware test, the
  largest single term; the mean rank over tasks; each metric's mean over tasks;
* ``<results>/multitask_tasks.csv``: per metric and task, whether it enters Δm% and why not;
* ``<results>/multitask_significance.csv``: :func:`facebench.benchmarks.stats.method_comparisons` of
  accuracy for the pairs (method, baseline), per attribute (Holm across attributes) and on the
  averages, ``difference`` = method minus baseline, with the per-seed differences;
* ``<results>/multitask.md``: one table per dataset with these, the tasks left out, and the
  published Δm% / mean rank of the suite's dataset from ``results/paper_reported.csv`` (metric
  ``delta_m_pct`` / ``mean_rank``; FAMO prints Δm% as a drop, the sign used here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from facebench.benchmarks.attribute_support import AVERAGE
from facebench.benchmarks.multitask import excluded_tasks, multitask_table, settings_of
from facebench.benchmarks.stats import ALPHA, COMPARISON_COLUMNS, TESTED, RunPredictions, method_comparisons
from facebench.core.io import write_csv, write_text

SIGNIFICANCE_COLUMNS = [{"method_a": "method", "method_b": "baseline", "value_a": "value_method",
                         "value_b": "value_baseline"}.get(c, c) for c in COMPARISON_COLUMNS]
#: Published multi-task figures read from ``results/paper_reported.csv``.
PUBLISHED_METRICS = ("delta_m_pct", "mean_rank")


def baseline_comparisons(board: pd.DataFrame, baseline: str, runs: Sequence[RunPredictions] | None = None,
                         split: str = "test", min_positives: int | None = None) -> pd.DataFrame:
    """Seed-aware tests of accuracy, every method against ``baseline`` on each dataset (only those
    pairs), oriented so that ``difference`` is method minus baseline."""
    methods = sorted(set(board["method"]) - {baseline})
    kwargs = {} if min_positives is None else {"min_positives": min_positives}
    df = method_comparisons(board, runs, "accuracy", split, pairs=[(m, baseline) for m in methods], **kwargs)
    return df.rename(columns=dict(zip(COMPARISON_COLUMNS, SIGNIFICANCE_COLUMNS)))[SIGNIFICANCE_COLUMNS]


def metric_means(board: pd.DataFrame, metrics: Sequence[str], split: str = "test") -> pd.DataFrame:
    """Per dataset and method: each metric's mean over target-level rows per seed, then over seeds."""
    b = board[board["split"] == split]
    per_seed = b.groupby(["dataset", "method", "seed"])[list(metrics)].mean()
    return per_seed.groupby(["dataset", "method"]).mean().reset_index()


def published_rows(reported: pd.DataFrame, dataset_names: Sequence[str]) -> pd.DataFrame:
    """The published Δm% and mean rank (``delta_m_pct`` / ``mean_rank`` rows of ``paper_reported.csv``)
    of a dataset, one row per (paper, method)."""
    from facebench.benchmarks.tables import _key

    if reported is None or reported.empty:
        return pd.DataFrame()
    keys = {_key(d) for d in dataset_names}
    r = reported[reported["metric"].isin(PUBLISHED_METRICS) & reported["dataset"].map(_key).isin(keys)]
    if r.empty:
        return pd.DataFrame()
    wide = r.pivot_table(index=["paper", "method"], columns="metric", values="value", aggfunc="first", sort=False)
    wide["source"] = r.groupby(["paper", "method"], sort=False)["source"].first()
    return wide.reset_index()


def _ci(mean: float, half: float, digits: int = 2) -> str:
    if pd.isna(mean):
        return ""
    return f"{mean:+.{digits}f}" + ("" if pd.isna(half) else f" [{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]")


def _p(p: float) -> str:
    return "" if pd.isna(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _variance_note(table: pd.DataFrame) -> str:
    """What the intervals' variance holds, from the table's ``variance`` column (``benchmarks/stats.py``)."""
    kinds = set(table.get("variance", pd.Series(dtype=object)).dropna()) - {""}
    t = "Student t over seeds, S - 1 degrees of freedom"
    if kinds == {"seeds + images"}:
        return f"{t}, its variance the seeds' plus the test images' nested in them: the runs keep per-image predictions"
    if kinds == {"seeds"}:
        return f"{t}; seeds only: the runs keep no per-image predictions"
    return f"{t}; the `variance` column of `multitask.csv` says per method whether the test images' term is in"


def multitask_markdown(table: pd.DataFrame, significance: pd.DataFrame, selection: pd.DataFrame, baseline: str,
                       metrics: Sequence[str], settings: dict[str, Any], published: pd.DataFrame | None = None) -> str:
    metrics = tuple(metrics)
    lines = [f"# Multi-task comparison against the single-task baseline `{baseline}` (test split)", "",
             "**Δm% is a performance drop (FAMO's sign, Liu et al. 2023): lower is better, negative = better than the",
             f"baseline.** Δm% = 100/K Σ_k (-1)^δ_k (M_method,k - M_baseline,k) / M_baseline,k over the K (task, metric) terms",
             f"of {', '.join(metrics)} (δ_k = 1 where higher is better), the baseline of the same seed; per seed, then the mean",
             f"over seeds with its 95% interval ({_variance_note(table[table['method'] != baseline])}) and the p-value of Δm% = 0. A task enters a "
             "metric's terms for every",
             f"method and seed only where the baseline's value is estimable: F1 / recall / precision with at least "
             f"{settings['min_positives']} test positives,",
             f"balanced accuracy with {settings['min_positives']} positives and negatives, and the baseline's value at least "
             f"{settings['baseline_floor']:g} at every seed",
             "(suite keys `multitask.min_positives`, `multitask.baseline_floor`); the tasks left out are listed below with why",
             "(`multitask_tasks.csv`). Then each metric's own Δm%, and Δm% on balanced accuracy. Largest term: the single",
             "(task, metric, seed) term of largest magnitude; 'sign set by one term': seeds whose Δm% changes sign without",
             f"their largest term. Mean rank: rank per task on the seed-mean {metrics[0]} among the methods here (1 = best),",
             "over the tasks of its Δm% terms. Against the baseline on the same test images (accuracy at the 0.5",
             "threshold): attributes significantly better / worse (the same test per attribute, Holm across attributes, "
             f"α = {ALPHA}), and",
             "the difference in mean accuracy over the attributes (percentage points) with its 95% interval, per-seed",
             "differences and p-value. Files: `multitask.csv`, `multitask_tasks.csv`, `multitask_significance.csv`.", ""]
    extra = [m for m in selection["metric"].unique() if m not in metrics]
    for dataset, grp in table.groupby("dataset", sort=True):
        per_metric = [m for m in (*metrics, *extra) if f"delta_m_drop_pct[{m}]" in grp]
        n_rank = int(grp["tasks"].max()) if "tasks" in grp and grp["tasks"].notna().any() else 0
        head = ["method", "Δm% drop [95% CI]", "per seed", "p", *[f"Δm% {m.replace('_', ' ')}" for m in per_metric],
                f"mean rank ({metrics[0]}, {n_rank} tasks)", *metrics, "seeds", "better / worse",
                "Δ mean acc. (pp) [95% CI]", "per seed (pp)", "p (acc.)"]
        lines += [f"## {dataset}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        sig = significance[significance["dataset"] == dataset] if not significance.empty else significance
        for _, r in grp.iterrows():
            is_base = r["method"] == baseline
            cells = [f"`{r['method']}`" + (" (baseline)" if is_base else ""),
                     "0" if is_base else _ci(r["delta_m_drop_pct"], r["delta_m_ci95"]),
                     "" if is_base else str(r["per_seed"]), "" if is_base else _p(r["p_value"])]
            for m in per_metric:
                v, h = r.get(f"delta_m_drop_pct[{m}]"), r.get(f"delta_m_ci95[{m}]")
                cells.append("" if is_base else (f"{v:+.2f}" + ("" if pd.isna(h) else f" ± {h:.2f}")) if not pd.isna(v) else "")
            cells += ["" if pd.isna(r.get("mean_rank")) else f"{r['mean_rank']:.2f}",
                      *["" if pd.isna(r.get(m)) else f"{100 * r[m]:.2f}" for m in metrics],
                      "" if pd.isna(r.get("seeds")) else str(int(r["seeds"]))]
            s = sig[sig["method"] == r["method"]] if not sig.empty else sig
            attrs = s[~s["attribute"].astype(str).str.startswith(AVERAGE)] if not s.empty else s
            avg = s[s["attribute"] == AVERAGE] if not s.empty else s
            if attrs.empty:
                cells.append("")
            else:
                tested = attrs[attrs["test"] == TESTED]
                better = int((tested["significant"] & (tested["winner"] == r["method"])).sum())
                worse = int((tested["significant"] & (tested["winner"] == baseline)).sum())
                cells.append(f"{better} / {worse} of {len(attrs)}" if len(tested) else attrs["test"].iloc[0])
            if avg.empty:
                cells += ["", "", ""]
            else:
                a = avg.iloc[0]
                cells += [_ci(100 * a["difference"], 100 * (a["ci95_high"] - a["difference"])), str(a["per_seed_differences"]),
                          _p(a["p_value"]) if a["test"] == TESTED else str(a["test"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Tasks left out of Δm% (the same for every method and seed):", ""]
        left = excluded_tasks(selection[selection["dataset"] == dataset])
        for m in selection["metric"].unique():
            n_all = int(((selection["dataset"] == dataset) & (selection["metric"] == m)).sum())
            out = left.get((dataset, m), [])
            lines.append(f"- {m}: {n_all - len(out)} of {n_all} tasks in; left out: "
                         + ("none" if not out else "; ".join(f"{t} ({why})" for t, why in out)))
        lines += ["", "Largest single term of each method's Δm% (and the seeds whose sign it sets):", ""]
        for _, r in grp[grp["method"] != baseline].iterrows():
            lines.append(f"- `{r['method']}`: {r['largest_term']}" + (f"; sign set by one term at seed {r['sign_set_by_one_term']}"
                                                                     if str(r.get("sign_set_by_one_term") or "").strip() else ""))
        if published is not None and not published.empty:
            lines += ["", "Published on this dataset (`results/paper_reported.csv`; Δm% as printed, a drop: lower is "
                      "better, as here). The papers train on the full dataset with their own networks and schedules, "
                      "and a mean rank is among the methods of their table, so neither number compares to ours in "
                      "scale; only the sign convention is shared.", "",
                      "| paper | method | Δm% | mean rank | source |", "|---|---|---:|---:|---|"]
            for _, p in published.iterrows():
                dm, mr = p.get("delta_m_pct"), p.get("mean_rank")
                lines.append(f"| {p['paper']} | {p['method']} | {'' if pd.isna(dm) else f'{float(dm):g}'} | "
                             f"{'' if pd.isna(mr) else f'{float(mr):g}'} | {p.get('source', '')} |")
        lines.append("")
    return "\n".join(lines)


def write_multitask(board: pd.DataFrame, results_dir: Path, settings: dict[str, Any] | None, split: str = "test",
                    runs: Sequence[RunPredictions] | None = None) -> list[Path]:
    """Write ``multitask.csv`` / ``.md``, ``multitask_tasks.csv`` and ``multitask_significance.csv``
    (module docstring) when ``settings`` (the suite's ``multitask`` mapping) names a baseline that
    has results. ``runs``: per-image predictions (default: those of the results folder, if any)."""
    if not settings or board.empty:
        return []
    st = settings_of(settings)
    baseline, metrics = str(st["baseline"]), st["metrics"]
    missing = [m for m in metrics if m not in board.columns]
    if missing or baseline not in set(board["method"]):
        why = f"no {', '.join(missing)} column in the leaderboard" if missing else f"the baseline {baseline!r} has no finished run"
        print(f"[facebench] multitask report skipped: {why}")
        return []
    if runs is None:
        from facebench.benchmarks.stats import results_predictions

        runs = results_predictions(results_dir, split)
    table, selection = multitask_table(board, baseline, metrics, split, st["min_positives"], st["baseline_floor"], runs)
    table = table.merge(metric_means(board, metrics, split), on=["dataset", "method"], how="left")
    significance = baseline_comparisons(board, baseline, runs, split, st["min_positives"])
    from facebench.benchmarks.tables import load_reported

    names = list(board["dataset"].unique()) + (list(board["datamodule"].dropna().unique()) if "datamodule" in board else [])
    published = published_rows(load_reported(), names)
    return [write_csv(results_dir / "multitask.csv", table, float_format="%.6g"),
            write_csv(results_dir / "multitask_tasks.csv", selection, float_format="%.6g"),
            write_csv(results_dir / "multitask_significance.csv", significance, float_format="%.6g"),
            write_text(results_dir / "multitask.md",
                       multitask_markdown(table, significance, selection, baseline, metrics, st, published))]


def write_suite_multitask(board: pd.DataFrame, results_dir: Path, runs: Sequence[RunPredictions] | None = None) -> list[Path]:
    """:func:`write_multitask` with the ``multitask`` mapping of the suite that produced ``results_dir``."""
    from facebench.benchmarks.run_folder import suite_notes

    return write_multitask(board, results_dir, suite_notes(results_dir).get("multitask"), runs=runs)
