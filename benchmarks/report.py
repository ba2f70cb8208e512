"""Leaderboards, tables and figures from result records alone (``facebench report RESULTS_DIR``).

``leaderboard.csv`` is long: one row per (method, dataset, split, seed, target, class) with one
column per metric, then the columns naming what produced it (method name, config hash, git commit,
package versions). ``leaderboard_info.json`` records the command, commit and time of the report.
``tables/`` holds the comparison tables (attributes x methods, with the papers' published numbers
next to ours), the rater-agreement tables and confusion matrices as CSV / Markdown / HTML
(:mod:`facebench.benchmarks.tables`); ``figures/`` the ROC curves and reliability diagrams
(:mod:`facebench.benchmarks.figures`, PNG, git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from facebench.core.io import write_csv, write_json
from facebench.benchmarks.provenance import result_info
from facebench.benchmarks.records import finished_run_dirs

KEYS = ["method", "dataset", "split", "seed", "target", "class"]
LEADING_METRICS = ["accuracy", "balanced_accuracy", "auroc"]
#: Metric families that are matrices, not per-row scores: kept in metrics.csv and the tables, not pivoted.
MATRIX_METRIC_PREFIXES = ("confusion:",)


def collect_metrics(results_dir: str | Path) -> pd.DataFrame:
    """Concatenate ``metrics.csv`` of every finished run under ``results_dir`` (searched recursively)."""
    frames = []
    for run_dir in finished_run_dirs(results_dir):
        path = run_dir / "metrics.csv"
        if not path.is_file():
            continue
        try:
            df = pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN", ""])
        except pd.errors.EmptyDataError:
            continue
        if not df.empty:
            frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["class"] = df["class"].fillna("").astype(str)
    return df


def leaderboard(metrics: pd.DataFrame) -> pd.DataFrame:
    """Long metrics -> one row per (method, dataset, split, seed, target, class), metrics as columns."""
    if metrics.empty:
        return metrics
    metrics = metrics[~metrics["metric"].str.startswith(MATRIX_METRIC_PREFIXES)]
    provenance_cols = [c for c in metrics.columns if c not in KEYS + ["metric", "value", "n_samples"] and c not in ("run_id",)]
    wide = metrics.pivot_table(index=KEYS, columns="metric", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    metric_cols = [m for m in LEADING_METRICS if m in wide.columns] + sorted(c for c in wide.columns if c not in KEYS + LEADING_METRICS)
    first = metrics.drop_duplicates(["method", "dataset", "split", "seed"]).set_index(["method", "dataset", "split", "seed"])
    extra = first[[c for c in provenance_cols + ["n_samples"] if c in first.columns]].reset_index()
    out = wide[KEYS + metric_cols].merge(extra, on=["method", "dataset", "split", "seed"], how="left")
    return out.rename(columns={"target": "attribute"}).sort_values(["dataset", "split", "method", "seed", "attribute", "class"])


def summary_table(board: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Mean over attributes per (dataset, method, seed), then mean over seeds."""
    if board.empty:
        return board
    cols = [m for m in LEADING_METRICS if m in board.columns]
    b = board[board["split"] == split]
    per_seed = b.groupby(["dataset", "method", "seed"])[cols].mean()
    out = per_seed.groupby(["dataset", "method"]).mean()
    out["seeds"] = per_seed.groupby(["dataset", "method"]).size()
    return out.reset_index().sort_values(["dataset", cols[0] if cols else "method"], ascending=[True, False])


def write_leaderboard(board: pd.DataFrame, results_dir: Path, suite_name: str | None, command: str) -> None:
    write_csv(results_dir / "leaderboard.csv", board, float_format="%.6g")
    write_json(results_dir / "leaderboard_info.json", result_info(command, suite=suite_name or results_dir.name))


def write_report_tables(metrics: pd.DataFrame, results_dir: Path, suite_name: str | None = None) -> list[Path]:
    """Comparison / agreement / confusion tables into ``results_dir/tables`` (with the papers' numbers
    and the suite's ``target_subsets`` averages)."""
    from facebench.benchmarks.leaderboard import suite_notes
    from facebench.benchmarks.tables import load_reported, write_tables

    datasets = suite_notes(suite_name or results_dir.name)["datasets"]
    subsets = {k: dict(v["target_subsets"]) for k, v in datasets.items() if (v or {}).get("target_subsets")}
    return write_tables(metrics, results_dir / "tables", reported=load_reported(), subsets=subsets)


def write_report_figures(results_dir: Path) -> list[Path]:
    """ROC curves and reliability diagrams into ``results_dir/figures``."""
    from facebench.benchmarks.figures import write_figures

    return write_figures(results_dir, results_dir / "figures")


def write_statistics(board: pd.DataFrame, results_dir: Path, split: str = "test") -> list[Path]:
    """Seed aggregates (mean, std, 95% CI), paired significance tests between methods on the same
    test images (McNemar per attribute, paired bootstrap of the mean), the rank table and the
    efficiency table into ``results_dir/tables`` (see :mod:`facebench.benchmarks.stats`)."""
    from facebench.benchmarks.records import finished_run_dirs
    from facebench.benchmarks.stats import efficiency_table, load_run_predictions, paired_comparisons, rank_table, seed_table

    out = results_dir / "tables"
    runs = [r for r in (load_run_predictions(d, split) for d in finished_run_dirs(results_dir)) if r is not None]
    comparisons = paired_comparisons(runs) if len(runs) > 1 else pd.DataFrame()
    tables = {"seeds": seed_table(board, split=split), "significance": comparisons,
              "ranks": rank_table(board, comparisons, split=split), "efficiency": efficiency_table(board)}
    return [write_csv(out / f"{name}.csv", df, float_format="%.6g") for name, df in tables.items() if not df.empty]


def write_subgroup_tables(results_dir: Path, suite_name: str) -> list[Path]:
    """Per-subgroup records and tables for the datasets whose suite entry names ``subgroups``
    (:mod:`facebench.benchmarks.subgroup_report`)."""
    from facebench.benchmarks.leaderboard import suite_notes
    from facebench.benchmarks.subgroup_report import protected_attributes, write_subgroups

    return write_subgroups(results_dir, protected_attributes(suite_notes(suite_name)["datasets"]))


def print_summary(board: pd.DataFrame, results_dir: Path) -> None:
    table = summary_table(board)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(f"\n[facebench] {results_dir / 'leaderboard.csv'}: test split, mean over attributes\n")
        print(table.to_string(index=False))


def build_reports(results_dir: str | Path, suite_name: str | None = None, command: str = "",
                  tables: bool = True, figures: bool = True) -> pd.DataFrame:
    """Rebuild every report of ``results_dir`` from its result records: leaderboard, tables, figures."""
    results_dir = Path(results_dir)
    metrics = collect_metrics(results_dir)
    board = leaderboard(metrics)
    if board.empty:
        print(f"[facebench] no finished runs under {results_dir}")
        return board
    write_leaderboard(board, results_dir, suite_name, command)
    written: list[Path] = []
    if tables:
        written += write_report_tables(metrics, results_dir, suite_name)
    written += write_statistics(board, results_dir)
    written += write_subgroup_tables(results_dir, suite_name or results_dir.name)
    from facebench.benchmarks.multitask_report import write_suite_multitask   # Δm%, mean rank, tests vs the baseline

    written += write_suite_multitask(board, results_dir, suite_name or results_dir.name)
    from facebench.benchmarks.mixture_report import write_suite_mixture      # a mixture against each dataset alone

    written += write_suite_mixture(board, results_dir, suite_name or results_dir.name)
    if figures:
        written += write_report_figures(results_dir)
    if written:
        print(f"[facebench] {len(written)} table / figure files in {results_dir / 'tables'} and {results_dir / 'figures'}")
    print_summary(board, results_dir)   # last: the leaderboard summary and its path
    return board
