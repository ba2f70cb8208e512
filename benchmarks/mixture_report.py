"""Mixture against single-dataset training: the report of a suite that trains one network on a
``mixture`` of datasets with partial labels and, for each member, the same network on that member
alone (suite ``mtl_faces``).

The pairs come from the suite file, not from the runs: a dataset entry with ``datamodule: mixture``
and several ``members`` is a mixture; one with a single member is that member trained alone. Every
target of a mixture belongs to one member, and the member-alone run has exactly that member's
targets, so the two are scored on the same test images with the same preprocessing. Per (mixture,
member, method), from the leaderboard's target-level test rows:

* each metric's mean over the member's targets, per seed, then over seeds, for the mixture run and
  for the member-alone run, and their difference (mixture minus alone; over seed-matched pairs, with
  a 95% Student-t half-width when there are several);
* Δm%: the mean over the member's targets and the metrics of the signed relative change of the
  mixture against the member alone (:func:`facebench.benchmarks.multitask.delta_m` with the member-alone run as
  the baseline; positive: the mixture is better).

``facebench report`` writes ``<results>/mixture.csv`` and ``<results>/mixture.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facebench.benchmarks.multitask import delta_m
from facebench.benchmarks.stats import seed_summary
from facebench.core.io import write_csv, write_text

METRICS = ("accuracy", "balanced_accuracy", "auroc")


def mixture_pairs(datasets: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(mixture dataset key, member name, member-alone dataset key)`` for every member of every
    multi-member ``mixture`` dataset of a suite that also has that member alone."""
    members: dict[str, tuple[str, ...]] = {}
    for key, cfg in datasets.items():
        cfg = cfg or {}
        if cfg.get("datamodule") == "mixture":
            members[key] = tuple(sorted((cfg.get("args") or {}).get("members") or {}))
    alone = {names[0]: key for key, names in members.items() if len(names) == 1}
    return [(key, member, alone[member]) for key, names in sorted(members.items()) if len(names) > 1
            for member in names if member in alone]


def _target_level(board: pd.DataFrame, split: str) -> pd.DataFrame:
    b = board[board["split"] == split].copy()
    b["class"] = b["class"].fillna("").astype(str)
    return b[b["class"] == ""]


def mixture_table(board: pd.DataFrame, pairs: list[tuple[str, str, str]], metrics: tuple[str, ...] = METRICS,
                  split: str = "test") -> pd.DataFrame:
    """One row per (mixture, member, method) with both trainings' means, their difference and Δm%
    (module docstring). Pairs whose method lacks either run are left out."""
    rows = []
    b = _target_level(board, split)
    metrics = tuple(m for m in metrics if m in b.columns)
    for mixture, member, alone_key in pairs:
        alone = b[b["dataset"] == alone_key]
        mixed = b[b["dataset"] == mixture]
        for method in sorted(set(alone["method"]) & set(mixed["method"])):
            a = alone[alone["method"] == method]
            targets = sorted(a["attribute"].unique())
            m = mixed[(mixed["method"] == method) & mixed["attribute"].isin(targets)]
            if m.empty:
                continue
            row: dict[str, Any] = {"mixture": mixture, "member": member, "alone": alone_key, "method": method,
                                   "targets": len(targets)}
            paired = m.merge(a, on=["seed", "attribute"], suffixes=("_mixture", "_alone"))
            row["seeds"] = int(paired["seed"].nunique())
            for metric in metrics:
                for kind, df in (("mixture", m), ("alone", a)):
                    row[f"{metric}_{kind}"] = df.groupby("seed")[metric].mean().mean()
                diff = (paired[f"{metric}_mixture"] - paired[f"{metric}_alone"]).groupby(paired["seed"]).mean()
                s = seed_summary(diff)
                row[f"{metric}_difference"] = s["mean"]
                row[f"{metric}_difference_ci95"] = s["ci95_high"] - s["mean"] if s["seeds"] > 1 else np.nan
            # Δm%: the multi-task definition, with the member-alone run as the single-task baseline
            pair = pd.concat([m.assign(method="mixture"), a.assign(method="alone")]).assign(dataset=member)
            dm = delta_m(pair, "alone", metrics, split).set_index("method").loc["mixture"]
            row["delta_m_pct"], row["delta_m_ci95"] = dm["delta_m_pct"], dm["delta_m_ci95"]
            rows.append(row)
    return pd.DataFrame(rows)


def mixture_markdown(table: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> str:
    metrics = tuple(m for m in metrics if f"{m}_mixture" in table.columns)
    lines = ["# One network on the mixture against the same network on each dataset alone (test split)", "",
             "Per member dataset of the mixture: each metric's mean over that dataset's targets, in percent, for the",
             "network trained on the mixture (partial labels) and for the same network trained on that dataset alone",
             "(same images, splits and preprocessing), and the difference (mixture minus alone, percentage points,",
             "over seed-matched runs; ± the half-width of its 95% Student-t interval when there are several seeds).",
             "Δm%: the mean over the targets and these metrics of the relative change of the mixture against the",
             "dataset alone (positive: the mixture is better). File: `mixture.csv`.", ""]
    for mixture, grp in table.groupby("mixture", sort=True):
        head = ["method", "dataset", "targets", *[f"{m} mixture / alone / Δ" for m in metrics], "Δm%", "seeds"]
        lines += [f"## {mixture}", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for _, r in grp.sort_values(["method", "member"]).iterrows():
            cells = [f"`{r['method']}`", f"{r['member']} (alone: `{r['alone']}`)", str(int(r["targets"]))]
            for m in metrics:
                d, half = r[f"{m}_difference"], r[f"{m}_difference_ci95"]
                cells.append(f"{100 * r[f'{m}_mixture']:.2f} / {100 * r[f'{m}_alone']:.2f} / {100 * d:+.2f}"
                             + ("" if pd.isna(half) else f" ± {100 * half:.2f}"))
            dm = r["delta_m_pct"]
            cells += [f"{dm:+.2f}" + ("" if pd.isna(r["delta_m_ci95"]) else f" ± {r['delta_m_ci95']:.2f}"),
                      str(int(r["seeds"]))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_mixture(board: pd.DataFrame, results_dir: Path, datasets: dict[str, Any], split: str = "test") -> list[Path]:
    """Write ``mixture.csv`` / ``mixture.md`` when the suite has a mixture with member-alone runs."""
    pairs = mixture_pairs(datasets)
    if not pairs or board.empty:
        return []
    table = mixture_table(board, pairs, split=split)
    if table.empty:
        return []
    return [write_csv(results_dir / "mixture.csv", table, float_format="%.6g"),
            write_text(results_dir / "mixture.md", mixture_markdown(table))]


def write_suite_mixture(board: pd.DataFrame, results_dir: Path) -> list[Path]:
    """:func:`write_mixture` with the datasets of the suite that produced ``results_dir``."""
    from facebench.benchmarks.run_folder import suite_notes

    return write_mixture(board, results_dir, suite_notes(results_dir)["datasets"])
