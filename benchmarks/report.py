"""Leaderboards, tables and figures from result records alone (``facebench report RESULTS_DIR``).

``leaderboard.csv`` is long: one row per (method, dataset, split, seed, target, class) with one
column per metric, then the columns naming what produced it (method name, config hash, code hash,
git commit, package versions). It holds the test splits (``test``, ``test_dedup``, ...); every other
split's rows (the validation split the thresholds are tuned on) are in ``leaderboard.<split>.csv``
beside it, so that a suite of many runs stays a small file to read and to diff; ``read_board`` reads
them back as one table. Its rows are those of the local run folders plus the committed rows
of every run that is not in a local run folder (a fresh clone has none): re-running one run, or
reporting on a clone, never drops the others. ``leaderboard_info.json`` holds, per run, the exact
``facebench run`` command, config hash, code hash and git commit, and names the methods whose seeds
ran on different code (no time stamps: the same records give the same bytes).
``tables/`` holds the comparison tables (attributes x methods, with the papers' published numbers
next to ours), the rater-agreement tables and confusion matrices as CSV / Markdown / HTML
(:mod:`facebench.benchmarks.tables`); ``figures/`` the ROC curves and reliability diagrams
(:mod:`facebench.benchmarks.figures`, PNG, git-ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from facebench.benchmarks.records import RunRecord, committed_records, run_records
from facebench.benchmarks.run_folder import finished_run_dirs, read_suite_snapshot, suite_notes
from facebench.benchmarks.stats import RunPredictions, predictions_from_record
from facebench.core.io import write_csv, write_json

KEYS = ["method", "dataset", "split", "seed", "target", "class"]
#: What identifies one run's rows in a leaderboard.
RUN_KEYS = ["method", "dataset", "seed"]
BOARD_ORDER = ["dataset", "split", "method", "seed", "attribute", "class"]
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
    return out.rename(columns={"target": "attribute"}).sort_values(BOARD_ORDER)


def board_file(results_dir: Path, split: str) -> Path:
    """The file that holds one split's leaderboard rows: ``leaderboard.csv`` for the test splits
    (``test`` and its variants such as ``test_dedup``), ``leaderboard.<split>.csv`` for any other."""
    return results_dir / ("leaderboard.csv" if split.startswith("test") else f"leaderboard.{split}.csv")


def _read_board_file(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN", ""])


def read_board(path: Path) -> pd.DataFrame:
    """A written leaderboard: ``path`` (``leaderboard.csv``) and the other splits' ``leaderboard.<split>.csv``
    beside it, as one table in leaderboard order (empty when absent); reading and writing it back gives
    the files' bytes."""
    path = Path(path)
    parts = ([path] if path.is_file() else []) + sorted(path.parent.glob(f"{path.stem}.*{path.suffix}"))
    frames = [df for df in map(_read_board_file, parts) if not df.empty]
    if len(frames) <= 1:
        return frames[0] if frames else pd.DataFrame()
    columns = list(dict.fromkeys(c for df in frames for c in df.columns))
    board = pd.concat(frames, ignore_index=True)[columns]
    # each file keeps the board's order within a split; the board is ordered by dataset, then split
    return board.sort_values(["dataset", "split"], kind="stable", ignore_index=True)


def write_board(board: pd.DataFrame, results_dir: Path) -> list[Path]:
    """``board`` split into ``leaderboard.csv`` (test splits) and ``leaderboard.<split>.csv`` (each other
    split); a split file the board no longer has is removed, so the files are always this board."""
    results_dir = Path(results_dir)
    files = board["split"].astype(str).map(lambda s: str(board_file(results_dir, s)))
    main = str(board_file(results_dir, "test"))
    written = [write_csv(Path(f), board[files == f], float_format="%.6g") for f in dict.fromkeys([main, *files])]
    for stale in results_dir.glob("leaderboard.*.csv"):
        if stale not in written:
            stale.unlink()
    return written


def with_committed_rows(local: pd.DataFrame, committed: pd.DataFrame) -> pd.DataFrame:
    """``local`` plus the rows of ``committed`` whose run (method, dataset, seed) has no local rows,
    in leaderboard order; columns: ``local``'s, then any only the committed rows have."""
    if committed.empty:
        return local
    if local.empty:
        return committed
    have = set(map(tuple, local[RUN_KEYS].astype(str).to_numpy()))
    keep = committed[[tuple(r) not in have for r in committed[RUN_KEYS].astype(str).to_numpy()]]
    if keep.empty:
        return local
    columns = list(local.columns) + [c for c in committed.columns if c not in local.columns]
    merged = pd.concat([local, keep], ignore_index=True)[columns]
    merged["class"] = merged["class"].where(merged["class"].notna(), None)
    return merged.sort_values(BOARD_ORDER, key=lambda c: c.fillna("") if c.name == "class" else c, kind="stable")


def run_provenance(board: pd.DataFrame, results_dir: Path) -> dict[str, dict[str, str]]:
    """Per run id: the command that ran it, config hash, code hash and git commit (from its
    committed record, else from its leaderboard rows)."""
    records = committed_records(results_dir)
    out: dict[str, dict[str, str]] = {}
    cols = [c for c in ("config_hash", "code_hash", "git_commit") if c in board.columns]
    for (method, dataset, seed), rows in board.groupby(RUN_KEYS, sort=True):
        run_id = f"{method}--{dataset}--s{seed}"
        rec = records.get(run_id) or {}
        first = rows.iloc[0]
        out[run_id] = {c: str(rec.get(c) or ("" if pd.isna(first.get(c)) else first.get(c))) for c in cols}
        out[run_id]["command"] = rec.get("command", "")
    return out


def mixed_code_versions(provenance: dict[str, dict[str, str]], board: pd.DataFrame) -> dict[str, list[str]]:
    """``{"<method> on <dataset>": [versions]}`` for the methods whose seeds ran on different code
    (the code hash where recorded, else the git commit)."""
    versions: dict[str, set[str]] = {}
    for (method, dataset, seed), _ in board.groupby(RUN_KEYS, sort=True):
        p = provenance.get(f"{method}--{dataset}--s{seed}", {})
        versions.setdefault(f"{method} on {dataset}", set()).add(p.get("code_hash") or p.get("git_commit") or "unknown")
    return {k: sorted(v) for k, v in versions.items() if len(v) > 1}


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


def long_metrics(local_metrics: pd.DataFrame, board: pd.DataFrame, local: pd.DataFrame) -> pd.DataFrame:
    """The long metrics of the local runs plus those of the board's committed-only runs (melted back
    from their leaderboard rows: every column that is not a key or a run column is a metric)."""
    from facebench.benchmarks.records import is_run_column

    have = set(map(tuple, local[RUN_KEYS].astype(str).to_numpy())) if not local.empty else set()
    rest = board[[tuple(r) not in have for r in board[RUN_KEYS].astype(str).to_numpy()]]
    if rest.empty:
        return local_metrics
    keys = ["method", "dataset", "split", "seed", "attribute", "class"]
    metric_cols = [c for c in rest.columns if c not in keys and not is_run_column(c)]
    run_cols = [c for c in rest.columns if c not in keys and is_run_column(c)]
    melted = rest.melt(id_vars=keys + run_cols, value_vars=metric_cols, var_name="metric", value_name="value")
    melted = melted[melted["value"].notna()].rename(columns={"attribute": "target"})
    melted["class"] = melted["class"].fillna("").astype(str)
    return pd.concat([local_metrics, melted], ignore_index=True) if not local_metrics.empty else melted


def write_leaderboard(board: pd.DataFrame, results_dir: Path, suite_name: str | None) -> dict[str, list[str]]:
    """``leaderboard.csv`` (+ ``leaderboard.<split>.csv``) and ``leaderboard_info.json``; returns the
    methods on mixed code versions."""
    write_board(board, results_dir)
    provenance = run_provenance(board, results_dir)
    mixed = mixed_code_versions(provenance, board)
    write_json(results_dir / "leaderboard_info.json",
               {"suite": suite_name or read_suite_snapshot(results_dir).get("name") or results_dir.name,
                "runs": provenance, "mixed_code_versions": mixed})
    return mixed


def write_report_tables(metrics: pd.DataFrame, results_dir: Path, suite_name: str | None = None) -> list[Path]:
    """Comparison / agreement / confusion tables into ``results_dir/tables`` (with the papers' numbers
    and the suite's ``target_subsets`` averages)."""
    from facebench.benchmarks.tables import load_reported, write_tables

    datasets = suite_notes(results_dir)["datasets"]
    subsets = {k: dict(v["target_subsets"]) for k, v in datasets.items() if (v or {}).get("target_subsets")}
    return write_tables(metrics, results_dir / "tables", reported=load_reported(), subsets=subsets)


def write_report_figures(results_dir: Path) -> list[Path]:
    """ROC curves and reliability diagrams into ``results_dir/figures``."""
    from facebench.benchmarks.figures import write_figures

    return write_figures(results_dir, results_dir / "figures")


def write_statistics(board: pd.DataFrame, results_dir: Path, runs: Sequence[RunPredictions] | None = None,
                     split: str = "test") -> list[Path]:
    """Seed aggregates (mean, std, 95% CI over seeds), the seed-aware comparison of every pair of
    methods (per attribute, Holm-adjusted, and on the averages; with the test-image term where
    ``runs`` holds per-image predictions), the rank table and the efficiency table into
    ``results_dir/tables`` (see :mod:`facebench.benchmarks.stats`)."""
    from facebench.benchmarks.stats import efficiency_table, method_comparisons, rank_table, seed_table

    out = results_dir / "tables"
    comparisons = method_comparisons(board, runs, "accuracy", split)
    tables = {"seeds": seed_table(board, split=split), "significance": comparisons,
              "ranks": rank_table(board, comparisons, split=split), "efficiency": efficiency_table(board)}
    return [write_csv(out / f"{name}.csv", df, float_format="%.6g") for name, df in tables.items() if not df.empty]


def write_subgroup_tables(results_dir: Path, records: Sequence[RunRecord]) -> list[Path]:
    """Per-subgroup records and tables for the datasets whose suite entry names ``subgroups``
    (:mod:`facebench.benchmarks.subgroup_report`), from the runs' test predictions ``records``."""
    from facebench.benchmarks.subgroup_report import protected_attributes, write_subgroups

    return write_subgroups(results_dir, protected_attributes(suite_notes(results_dir)["datasets"]), records)


def print_summary(board: pd.DataFrame, results_dir: Path) -> None:
    table = summary_table(board)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(f"\n[facebench] {results_dir / 'leaderboard.csv'}: test split, mean over attributes\n")
        print(table.to_string(index=False))


def build_reports(results_dir: str | Path, suite_name: str | None = None, command: str = "",
                  tables: bool = True, figures: bool = True) -> pd.DataFrame:
    """Rebuild every report of ``results_dir`` from its result records: leaderboard, tables, figures.
    ``command`` is kept for callers; what each run's command was is in its record."""
    results_dir = Path(results_dir)
    local_metrics = collect_metrics(results_dir)
    local = leaderboard(local_metrics)
    committed = read_board(results_dir / "leaderboard.csv")
    board = with_committed_rows(local, committed)
    if board.empty:
        print(f"[facebench] no finished runs under {results_dir}")
        return board
    kept = len(board) - len(local)
    if kept and not local.empty:
        print(f"[facebench] {results_dir / 'leaderboard.csv'}: kept the committed rows of "
              f"{board[RUN_KEYS].drop_duplicates().shape[0] - local[RUN_KEYS].drop_duplicates().shape[0]} run(s) "
              "that are not in the local run folders")
    mixed = write_leaderboard(board, results_dir, suite_name)
    for what, versions in mixed.items():
        print(f"[facebench] warning: {what}: its seeds ran on {len(versions)} code versions ({', '.join(versions)})")
    written: list[Path] = []
    if tables:
        written += write_report_tables(long_metrics(local_metrics, board, local), results_dir, suite_name)
    # image-level records: local run folders, else committed compact predictions with the dataset's labels
    records = run_records(results_dir, "test")
    runs = [r for r in map(predictions_from_record, records) if r is not None]
    written += write_statistics(board, results_dir, runs)
    without = sorted({f"{m}--{d}--s{s}" for m, d, s in board[RUN_KEYS].drop_duplicates().itertuples(index=False)}
                     - {f"{r.method}--{r.dataset}--s{r.seed}" for r in records})
    if without and any((v or {}).get("subgroups") for v in suite_notes(results_dir)["datasets"].values()):
        print(f"[facebench] subgroups.*: kept as committed ({len(without)} run(s) have no predictions here)")
    else:
        written += write_subgroup_tables(results_dir, records)
    from facebench.benchmarks.multitask_report import write_suite_multitask   # Δm%, mean rank, tests vs the baseline

    written += write_suite_multitask(board, results_dir, runs)
    from facebench.benchmarks.mixture_report import write_suite_mixture      # a mixture against each dataset alone

    written += write_suite_mixture(board, results_dir, runs)
    if figures:
        written += write_report_figures(results_dir)
    if written:
        print(f"[facebench] {len(written)} table / figure files in {results_dir / 'tables'} and {results_dir / 'figures'}")
    print_summary(board, results_dir)   # last: the leaderboard summary and its path
    return board
