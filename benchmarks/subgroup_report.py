"""Subgroup tables of a suite: how each method does on each group of its protected attributes.

A suite names the protected attributes of a dataset with the dataset key ``subgroups: [Male, Young]``
(any binary or multi-class target of that dataset, e.g. ``race`` or ``gender``; a dataset key, so
adding it never invalidates finished runs). ``facebench report`` then computes, from each finished
run's test predictions (hard decisions at 0.5, as the headline accuracy), the metrics of
:class:`~facebench.lightning_modules.metrics.subgroups.SubgroupMetrics` and writes

* ``runs/<run>/subgroups.csv``: the run's rows (a record of the run, like ``metrics.csv``);
* ``<results>/subgroups.csv``: per method, dataset, protected attribute, target, group and metric,
  the mean over seeds (and the number of seeds), committed with the leaderboard;
* ``<results>/subgroups.md`` / ``.html``: per dataset and protected attribute, each method's mean
  over targets of worst-group accuracy, accuracy gap and equal-opportunity difference (mean over
  seeds), and its mean accuracy within each group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from facebench.benchmarks.records import RunRecord, run_records
from facebench.core.io import write_csv, write_text
from facebench.lightning_modules.metrics.subgroups import AGGREGATES, subgroup_rows

SUBGROUP_COLUMNS = ["method", "dataset", "seed", "protected_attribute", "target", "class", "group", "metric", "value"]


def run_subgroups(record: RunRecord | None, protected_by_dataset: dict[str, list[str]]) -> pd.DataFrame:
    """The subgroup rows of one finished run's test predictions (:class:`RunRecord`) for its dataset's
    protected attributes; empty when it has no predictions or none of them is a target of its task."""
    protected = protected_by_dataset.get(record.dataset) if record is not None else None
    if not protected or "probs" not in record.predictions:
        return pd.DataFrame(columns=SUBGROUP_COLUMNS)
    df = pd.DataFrame(subgroup_rows(record.task, record.predictions["probs"], record.predictions["labels"], protected))
    if df.empty:
        return pd.DataFrame(columns=SUBGROUP_COLUMNS)
    df.insert(0, "seed", record.seed)
    df.insert(0, "dataset", record.dataset)
    df.insert(0, "method", record.method)
    return df[SUBGROUP_COLUMNS]


def write_subgroups(results_dir: Path, protected_by_dataset: dict[str, list[str]],
                    records: Sequence[RunRecord] | None = None) -> list[Path]:
    """Compute and write the subgroup records and tables of ``results_dir`` (see the module
    docstring) from the test predictions of its runs (``records``; default: :func:`run_records`)."""
    if not protected_by_dataset:
        return []
    frames = []
    for record in run_records(results_dir, "test") if records is None else records:
        df = run_subgroups(record, protected_by_dataset)
        if not df.empty:
            if record.run_dir.is_dir():                  # a local run folder (a committed record is a file)
                write_csv(record.run_dir / "subgroups.csv", df, float_format="%.6g")
            frames.append(df)
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    keys = [c for c in SUBGROUP_COLUMNS if c not in ("seed", "value")]
    table = (rows.groupby(keys, dropna=False)["value"].agg(value="mean", seeds="count").reset_index()
             .sort_values(keys).reset_index(drop=True))
    return [write_csv(results_dir / "subgroups.csv", table, float_format="%.6g"),
            write_text(results_dir / "subgroups.md", subgroups_markdown(rows)),
            write_text(results_dir / "subgroups.html", subgroups_html(rows))]


def subgroup_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, protected attribute, method): the mean over targets of each aggregate, averaged
    over seeds, and the mean accuracy of each group."""
    agg = rows[rows["group"].fillna("") == ""]
    per_seed = agg.groupby(["dataset", "protected_attribute", "method", "seed", "metric"])["value"].mean()
    summary = per_seed.groupby(["dataset", "protected_attribute", "method", "metric"]).mean().unstack("metric")
    groups = rows[(rows["group"].fillna("") != "") & (rows["metric"] == "accuracy")]
    per_group = (groups.groupby(["dataset", "protected_attribute", "method", "seed", "group"])["value"].mean()
                 .groupby(["dataset", "protected_attribute", "method", "group"]).mean().unstack("group"))
    per_group.columns = [f"accuracy[{g}]" for g in per_group.columns]
    out = summary.join(per_group, how="outer").reset_index()
    cols = [c for c in AGGREGATES if c in out.columns]
    return out.sort_values(["dataset", "protected_attribute"] + cols[:1], ascending=[True, True] + [False] * len(cols[:1]))


def subgroups_markdown(rows: pd.DataFrame) -> str:
    summary = subgroup_summary(rows)
    lines = ["# Subgroup metrics (test split)", "",
             "Per protected attribute: each method's mean over targets of the worst-group accuracy, the accuracy",
             "gap (best minus worst group) and the equal-opportunity difference (max minus min true-positive rate",
             "over groups), averaged over seeds, then the mean accuracy within each group. Per-target values:",
             "`subgroups.csv`.", ""]
    for (dataset, protected), grp in summary.groupby(["dataset", "protected_attribute"], sort=True):
        grp = grp.dropna(axis=1, how="all")
        cols = [c for c in AGGREGATES if c in grp.columns] + sorted(c for c in grp.columns if c.startswith("accuracy["))
        lines += [f"## {dataset}: {protected}", "", "| method | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for _, r in grp.iterrows():
            cells = ["" if pd.isna(r[c]) else f"{100 * r[c]:.2f}" for c in cols]
            lines.append(f"| `{r['method']}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def subgroups_html(rows: pd.DataFrame) -> str:
    """The summary tables of :func:`subgroups_markdown` as one self-contained HTML page."""
    parts = ["<!doctype html><meta charset='utf-8'><title>Subgroup metrics</title>",
             "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:right}</style>",
             "<h1>Subgroup metrics (test split)</h1>"]
    summary = subgroup_summary(rows)
    for (dataset, protected), grp in summary.groupby(["dataset", "protected_attribute"], sort=True):
        grp = grp.dropna(axis=1, how="all").drop(columns=["dataset", "protected_attribute"])
        numeric = grp.select_dtypes("number").columns
        grp[numeric] = grp[numeric] * 100
        parts += [f"<h2>{dataset}: {protected}</h2>", grp.to_html(index=False, float_format=lambda v: f"{v:.2f}", na_rep="")]
    return "\n".join(parts) + "\n"


def protected_attributes(suite_datasets: dict[str, Any]) -> dict[str, list[str]]:
    """``{dataset key: [protected attributes]}`` from a suite's ``datasets`` mapping."""
    out = {}
    for key, cfg in (suite_datasets or {}).items():
        names = (cfg or {}).get("subgroups") or []
        if names:
            out[key] = [str(n) for n in names]
    return out


def mean_aggregates(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, method, protected attribute): mean over seeds of the mean over targets of each
    aggregate (for the cross-suite leaderboard's columns)."""
    agg = rows[rows["group"].fillna("") == ""]
    if agg.empty:
        return pd.DataFrame()
    per_seed = agg.groupby(["dataset", "method", "protected_attribute", "seed", "metric"])["value"].apply(
        lambda v: float(np.nanmean(v)) if v.notna().any() else np.nan)
    return per_seed.groupby(["dataset", "method", "protected_attribute", "metric"]).mean().unstack("metric").reset_index()
