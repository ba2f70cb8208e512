"""The multi-task report of a suite: Δm% and mean rank against its single-task baseline, and paired
significance tests of every method against that baseline.

A suite names its baseline with the top-level key ``multitask: {baseline: <method key>, metrics:
[f1, accuracy]}`` (read by the reports only: it is in no run's config, so adding or changing it never
invalidates finished runs). ``facebench report`` then writes, from the leaderboard and the runs'
test predictions:

* ``<results>/multitask.csv``: per dataset and method, Δm% against the baseline over the named
  metrics (mean over seed-matched pairs and the half-width of its 95% interval,
  :func:`facebench.benchmarks.multitask.multitask_table`), the mean rank over tasks on the first metric, and
  each metric's mean over tasks (mean over seeds);
* ``<results>/multitask_significance.csv``: :func:`facebench.benchmarks.stats.paired_comparisons` restricted to
  the pairs (method, baseline) -- McNemar per attribute on the correct / incorrect table (accuracy
  at the 0.5 threshold, discordant counts pooled over seed-matched runs, Holm across attributes)
  and the paired bootstrap of the mean accuracy over attributes -- oriented so that ``method`` is
  the method and ``difference`` is method minus baseline;
* ``<results>/multitask.md``: one table per dataset with both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facebench.benchmarks.multitask import delta_m, multitask_table
from facebench.benchmarks.records import finished_run_dirs
from facebench.benchmarks.stats import ALPHA, RunPredictions, load_run_predictions, paired_comparisons
from facebench.core.io import write_csv, write_text

SIGNIFICANCE_COLUMNS = ["dataset", "method", "baseline", "attribute", "test", "method_only_correct",
                        "baseline_only_correct", "difference", "ci95_low", "ci95_high", "p_value", "p_holm",
                        "significant", "winner", "seeds"]


def _oriented(pairs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """``paired_comparisons`` rows with the baseline as ``method_b`` (counts swapped and the
    difference and its interval negated where it was ``method_a``)."""
    df = pairs.copy()
    for col in ("difference", "ci95_low", "ci95_high", "a_only_correct", "b_only_correct", "p_holm"):
        if col not in df:
            df[col] = np.nan
    flip = df["method_a"] == baseline
    for x, y in (("method_a", "method_b"), ("a_only_correct", "b_only_correct"), ("ci95_low", "ci95_high")):
        xs, ys = df[x].copy(), df[y].copy()
        df[x], df[y] = xs.where(~flip, ys), ys.where(~flip, xs)
    for col in ("difference", "ci95_low", "ci95_high"):
        df[col] = df[col].where(~flip, -df[col])
    for col in ("a_only_correct", "b_only_correct"):
        df[col] = df[col].astype("Int64")
    df = df.rename(columns={"method_a": "method", "method_b": "baseline", "a_only_correct": "method_only_correct",
                            "b_only_correct": "baseline_only_correct"})
    return df[SIGNIFICANCE_COLUMNS]


def baseline_comparisons(runs: list[RunPredictions], baseline: str, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Paired tests of every method against ``baseline`` on each dataset (only those pairs)."""
    frames = []
    datasets = sorted({r.dataset for r in runs if r.method == baseline})
    for dataset in datasets:
        on = [r for r in runs if r.dataset == dataset]
        for method in sorted({r.method for r in on} - {baseline}):
            pairs = paired_comparisons([r for r in on if r.method in (method, baseline)], n_boot=n_boot, seed=seed)
            if not pairs.empty:
                frames.append(_oriented(pairs, baseline))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SIGNIFICANCE_COLUMNS)


def metric_means(board: pd.DataFrame, metrics: tuple[str, ...], split: str = "test") -> pd.DataFrame:
    """Per dataset and method: each metric's mean over target-level rows per seed, then over seeds."""
    b = board[board["split"] == split]
    per_seed = b.groupby(["dataset", "method", "seed"])[list(metrics)].mean()
    return per_seed.groupby(["dataset", "method"]).mean().reset_index()


def multitask_markdown(table: pd.DataFrame, significance: pd.DataFrame, baseline: str, metrics: tuple[str, ...],
                       n_boot: int = 1000) -> str:
    lines = [f"# Multi-task comparison against the single-task baseline `{baseline}` (test split)", "",
             f"Δm%: the mean over tasks (targets) and over the metrics {', '.join(metrics)} of each method's signed",
             "relative change against the baseline of the same seed (positive: better than the baseline), mean over",
             "seeds ± the half-width of its 95% Student-t interval; then each metric's own Δm%. A task whose baseline",
             "value is 0 has no relative change and is left out; one with a small baseline value (the F1 of a rare",
             "attribute) weighs heavily: read Δm% with its per-metric parts and the tests. Mean rank: each method's",
             f"rank per task on the seed-mean {metrics[0]} among all methods here (1 = best), averaged over tasks.",
             "Against the baseline, on the same test images (accuracy at the 0.5 threshold): the attributes where the",
             f"method is significantly better / worse (McNemar, seeds pooled, Holm over attributes, α = {ALPHA}), and",
             "the difference in mean accuracy (percentage points) with its paired-bootstrap 95% interval and p-value.",
             "Files: `multitask.csv`, `multitask_significance.csv`.", ""]
    sig = significance
    for dataset, grp in table.groupby("dataset", sort=True):
        per_metric = [m for m in metrics if f"delta_m_pct[{m}]" in grp]
        head = ["method", "Δm%", *[f"Δm% {m}" for m in per_metric], f"mean rank ({metrics[0]})", *metrics, "seeds",
                "better / worse", "Δ mean acc. (pp) [95% CI]", "p"]
        lines += [f"## {dataset}", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for _, r in grp.iterrows():
            dm = "" if pd.isna(r["delta_m_pct"]) else f"{r['delta_m_pct']:+.2f}"
            if dm and not pd.isna(r.get("delta_m_ci95")):
                dm += f" ± {r['delta_m_ci95']:.2f}"
            cells = [f"`{r['method']}`" + (" (baseline)" if r["method"] == baseline else ""), dm,
                     *["" if pd.isna(r[f"delta_m_pct[{m}]"]) else f"{r[f'delta_m_pct[{m}]']:+.2f}" for m in per_metric],
                     "" if pd.isna(r.get("mean_rank")) else f"{r['mean_rank']:.2f}",
                     *["" if pd.isna(r.get(m)) else f"{100 * r[m]:.2f}" for m in metrics],
                     "" if pd.isna(r.get("seeds")) else str(int(r["seeds"]))]
            s = sig[(sig["dataset"] == dataset) & (sig["method"] == r["method"])] if not sig.empty else sig
            mc, boot = s[s["test"] == "mcnemar"], s[s["test"] == "paired_bootstrap"]
            if mc.empty:
                cells.append("")
            else:
                better = int((mc["significant"] & (mc["winner"] == r["method"])).sum())
                worse = int((mc["significant"] & (mc["winner"] == baseline)).sum())
                cells.append(f"{better} / {worse}")
            if boot.empty:
                cells += ["", ""]
            else:
                b = boot.iloc[0]
                cells += [f"{100 * b['difference']:+.2f} [{100 * b['ci95_low']:+.2f}, {100 * b['ci95_high']:+.2f}]",
                          f"< {2 / n_boot:.3g}" if b["p_value"] == 0 else f"{b['p_value']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_multitask(board: pd.DataFrame, results_dir: Path, settings: dict[str, Any] | None,
                    split: str = "test", n_boot: int = 1000) -> list[Path]:
    """Write ``multitask.csv`` / ``.md`` and ``multitask_significance.csv`` (module docstring) when
    ``settings`` (the suite's ``multitask`` mapping) names a baseline that has results."""
    if not settings or board.empty:
        return []
    baseline = str(settings["baseline"])
    metrics = tuple(settings.get("metrics") or ("accuracy",))
    missing = [m for m in metrics if m not in board.columns]
    if missing or baseline not in set(board["method"]):
        why = f"no {', '.join(missing)} column in the leaderboard" if missing else f"the baseline {baseline!r} has no finished run"
        print(f"[facebench] multitask report skipped: {why}")
        return []
    table = multitask_table(board, baseline, metrics, split).merge(metric_means(board, metrics, split),
                                                                     on=["dataset", "method"], how="left")
    if len(metrics) > 1:   # each metric's own Δm% beside the combined one
        for m in metrics:
            own = delta_m(board, baseline, (m,), split)[["dataset", "method", "delta_m_pct"]]
            table = table.merge(own.rename(columns={"delta_m_pct": f"delta_m_pct[{m}]"}), on=["dataset", "method"], how="left")
    runs = [r for r in (load_run_predictions(d, split) for d in finished_run_dirs(results_dir)) if r is not None]
    significance = baseline_comparisons(runs, baseline, n_boot=n_boot)
    return [write_csv(results_dir / "multitask.csv", table, float_format="%.6g"),
            write_csv(results_dir / "multitask_significance.csv", significance, float_format="%.6g"),
            write_text(results_dir / "multitask.md", multitask_markdown(table, significance, baseline, metrics, n_boot))]


def write_suite_multitask(board: pd.DataFrame, results_dir: Path) -> list[Path]:
    """:func:`write_multitask` with the ``multitask`` mapping of the suite that produced ``results_dir``."""
    from facebench.benchmarks.run_folder import suite_notes

    return write_multitask(board, results_dir, suite_notes(results_dir).get("multitask"))
