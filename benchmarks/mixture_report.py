"""Mixture against single-dataset training: the report of a suite that trains one network on a
``mixture`` of datasets with partial labels and, for each member, the same network on that member
alone (suite ``mtl_faces``).

The pairs come from the suite file, not from the runs: a dataset entry with ``datamodule: mixture``
and several ``members`` is a mixture; one with a single member is that member trained alone. Every
target of a mixture belongs to one member, and the member-alone run has exactly that member's
targets, so the two are scored on the same test images with the same preprocessing. A method trained
only on the mixture (e.g. ``mcnn_balanced``: the same network with another loss weighting) is set
against the member-alone runs of the one method of the same registered name (``method_name``:
``mcnn``). Per (mixture, member, method), from the leaderboard's target-level test rows (and per-image predictions where
there are any, for the image term):

* each metric's mean over the member's targets for the mixture run and for the member-alone run
  (over their seed-matched runs), the difference (mixture minus alone) with its 95% interval, the
  per-seed differences and the p-value of the seed-aware test of :mod:`facebench.benchmarks.stats`
  (``untested: 1 seed`` with one seed);
* Δm%: :func:`facebench.benchmarks.multitask.delta_m` with the member-alone run as the single-task
  baseline, in FAMO's sign (a drop: negative = the mixture is better), over the targets whose
  alone value is estimable (the same rules as the multi-task table), per seed and over seeds.

``facebench report`` writes ``<results>/mixture.csv`` and ``<results>/mixture.md``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from facebench.benchmarks.attribute_support import AVERAGE, MIN_POSITIVES, leaderboard_support
from facebench.benchmarks.multitask import BASELINE_FLOOR, delta_m
from facebench.benchmarks.stats import RunPredictions, method_comparisons
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


def _pair_runs(runs: Sequence[RunPredictions], mixture: str, alone_key: str, member: str, method: str,
               alone_method: str) -> list[RunPredictions]:
    """``method``'s runs on the mixture and ``alone_method``'s on the member alone, relabelled as
    methods ``mixture`` and ``alone`` of one dataset ``member`` (their ids are the source images: they align)."""
    out = []
    for r in runs or []:
        if (r.method, r.dataset) in ((method, mixture), (alone_method, alone_key)):
            out.append(replace(r, method="mixture" if r.dataset == mixture else "alone", dataset=member))
    return out


def alone_partners(mixed: pd.DataFrame, alone: pd.DataFrame) -> dict[str, str]:
    """``{mixture method: member-alone method}``: the same method key, else the one member-alone
    method of the same registered name (``method_name``); methods without a partner are left out."""
    alone_methods = set(alone["method"])
    names = alone.drop_duplicates("method").set_index("method")["method_name"] if "method_name" in alone else pd.Series(dtype=str)
    out = {}
    for method in sorted(set(mixed["method"])):
        if method in alone_methods:
            out[method] = method
            continue
        name = mixed.loc[mixed["method"] == method, "method_name"].iloc[0] if "method_name" in mixed else None
        same = sorted(names[names == name].index) if name is not None else []
        if len(same) == 1:
            out[method] = same[0]
    return out


def mixture_table(board: pd.DataFrame, pairs: list[tuple[str, str, str]], metrics: tuple[str, ...] = METRICS,
                  split: str = "test", runs: Sequence[RunPredictions] | None = None,
                  min_positives: int = MIN_POSITIVES, floor: float = BASELINE_FLOOR) -> pd.DataFrame:
    """One row per (mixture, member, method) with both trainings' means, their difference and Δm%
    (module docstring). Pairs whose method lacks either run are left out."""
    rows = []
    b = _target_level(board, split)
    metrics = tuple(m for m in metrics if m in b.columns)
    for mixture, member, alone_key in pairs:
        alone = b[b["dataset"] == alone_key]
        mixed = b[b["dataset"] == mixture]
        support = leaderboard_support(alone, split).assign(dataset=member)
        for method, alone_method in alone_partners(mixed, alone).items():
            a = alone[alone["method"] == alone_method]
            targets = sorted(a["attribute"].unique())
            m = mixed[(mixed["method"] == method) & mixed["attribute"].isin(targets)]
            if m.empty:
                continue
            pair = pd.concat([m.assign(method="mixture"), a.assign(method="alone")]).assign(dataset=member)
            pair_runs = _pair_runs(runs or [], mixture, alone_key, member, method, alone_method)
            row: dict[str, Any] = {"mixture": mixture, "member": member, "alone": alone_key, "method": method,
                                   "alone_method": alone_method,
                                   "targets": len(targets), "seeds": len(set(m["seed"]) & set(a["seed"]))}
            for metric in metrics:
                comp = method_comparisons(pair, pair_runs, metric, split, pairs=[("mixture", "alone")],
                                          min_positives=min_positives)
                avg = comp[comp["attribute"] == AVERAGE] if len(comp) > 1 else comp
                if avg.empty:
                    continue
                c = avg.iloc[0]
                row[f"{metric}_mixture"], row[f"{metric}_alone"] = c["value_a"], c["value_b"]
                row[f"{metric}_difference"] = c["difference"]
                row[f"{metric}_difference_ci95"] = c["ci95_high"] - c["difference"]
                row[f"{metric}_per_seed"] = c["per_seed_differences"]
                row[f"{metric}_p_value"] = c["p_value"]
                row[f"{metric}_test"] = c["test"]
            # Δm%: the multi-task definition (FAMO's sign), with the member-alone run as the single-task baseline
            dm = delta_m(pair, "alone", metrics, split, min_positives, floor, runs=pair_runs, support=support)
            dm = dm.set_index("method") if "method" in dm else dm
            if "mixture" in dm.index:
                dm = dm.loc["mixture"]
                row.update({"delta_m_drop_pct": dm["delta_m_drop_pct"], "delta_m_ci95": dm["delta_m_ci95"],
                            "delta_m_per_seed": dm["per_seed"], "delta_m_p_value": dm["p_value"],
                            "delta_m_test": dm["test"], "delta_m_terms": dm["terms"]})
            else:   # none of the member's targets has an estimable alone value (too few test positives)
                row.update({"delta_m_drop_pct": float("nan"), "delta_m_test": "no estimable task"})
            rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, half: float, scale: float = 100.0) -> str:
    if pd.isna(mean):
        return ""
    return f"{scale * mean:+.2f}" + ("" if pd.isna(half) else f" ± {scale * half:.2f}")


def mixture_markdown(table: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> str:
    metrics = tuple(m for m in metrics if f"{m}_mixture" in table.columns)
    lines = ["# One network on the mixture against the same network on each dataset alone (test split)", "",
             "Per member dataset of the mixture: each metric's mean over that dataset's targets, in percent, for the",
             "network trained on the mixture (partial labels) and for the same network trained on that dataset alone",
             "(same images, splits and preprocessing), and the difference (mixture minus alone, percentage points, over",
             "seed-matched runs; ± the half-width of its 95% interval: Student t over seeds, with the image term where",
             "per-image predictions exist; one seed: no interval and no test). **Δm% is a drop (FAMO's sign): negative =",
             "the mixture is better.** Over the member's targets and these metrics, the targets whose alone value is",
             "estimable (as in the multi-task table). p: the seed-aware test of the difference / of Δm% = 0, or why",
             "there is none. File: `mixture.csv`.", ""]
    for mixture, grp in table.groupby("mixture", sort=True):
        head = ["method", "dataset", "targets", *[f"{m} mixture / alone / Δ" for m in metrics], "p (accuracy)",
                "Δm% drop", "per seed", "p (Δm%)", "seeds"]
        lines += [f"## {mixture}", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        for _, r in grp.sort_values(["method", "member"]).iterrows():
            cells = [f"`{r['method']}`", f"{r['member']} (alone: `{r['alone']}`)", str(int(r["targets"]))]
            for m in metrics:
                cells.append("" if pd.isna(r.get(f"{m}_mixture")) else
                             f"{100 * r[f'{m}_mixture']:.2f} / {100 * r[f'{m}_alone']:.2f} / "
                             + _pm(r[f"{m}_difference"], r[f"{m}_difference_ci95"]))
            p = r.get("accuracy_p_value")
            cells.append(f"{p:.3f}" if not pd.isna(p) else ("" if pd.isna(r.get("accuracy_test")) else str(r["accuracy_test"])))
            cells += [_pm(r["delta_m_drop_pct"], r.get("delta_m_ci95"), 1.0),
                      "" if pd.isna(r.get("delta_m_per_seed")) else str(r["delta_m_per_seed"]),
                      f"{r['delta_m_p_value']:.3f}" if not pd.isna(r.get("delta_m_p_value")) else str(r["delta_m_test"]),
                      str(int(r["seeds"]))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_mixture(board: pd.DataFrame, results_dir: Path, datasets: dict[str, Any], split: str = "test",
                  runs: Sequence[RunPredictions] | None = None) -> list[Path]:
    """Write ``mixture.csv`` / ``mixture.md`` when the suite has a mixture with member-alone runs
    (``runs``: per-image predictions; default: those of the results folder, if any)."""
    pairs = mixture_pairs(datasets)
    if not pairs or board.empty:
        return []
    if runs is None:
        from facebench.benchmarks.stats import results_predictions

        runs = results_predictions(results_dir, split)
    table = mixture_table(board, pairs, split=split, runs=runs)
    if table.empty:
        return []
    return [write_csv(results_dir / "mixture.csv", table, float_format="%.6g"),
            write_text(results_dir / "mixture.md", mixture_markdown(table))]


def write_suite_mixture(board: pd.DataFrame, results_dir: Path, runs: Sequence[RunPredictions] | None = None) -> list[Path]:
    """:func:`write_mixture` with the datasets of the suite that produced ``results_dir``."""
    from facebench.benchmarks.run_folder import suite_notes

    return write_mixture(board, results_dir, suite_notes(results_dir)["datasets"], runs=runs)
