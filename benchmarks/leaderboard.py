"""The cross-suite leaderboard (``facebench report --all``): every method on every dataset in one
table, from the committed records only.

Input: each suite's committed ``results/<suite>/leaderboard.csv`` (one row per method, dataset,
split, seed, target) and ``leaderboard_info.json``; the suite files in ``benchmarks/suites/`` for
the notes (a method's or dataset's ``description``) and for which published row a method
corresponds to (a method's ``reported: {paper: ..., method: ...}``); ``results/paper_reported.csv``
for the published values.

Output: ``results/leaderboard.csv`` (one row per suite, dataset and method) and
``results/LEADERBOARD.md`` (one table per dataset, best mean accuracy first). Per row:

* the headline metrics on the test split, each the mean over the dataset's targets for one seed,
  then the mean over seeds with its 95% interval (``± half-width``; one seed: no interval): the
  seed-aware interval of :mod:`facebench.benchmarks.stats`, with the test-image term where the
  suite commits per-image predictions (``records/``; column ``interval`` says which);
* accuracy and balanced accuracy also over the *powered* targets (at least ``MIN_POSITIVES``
  positive and negative test images) and the *label-consistent* ones (without High_Cheekbones,
  Pointy_Nose, Oval_Face), :mod:`facebench.benchmarks.attribute_support`;
* the settings: input size and channels, epochs trained, training images, parameters, forward
  FLOPs per image, targets, seeds;
* where the suite names the published row and the paper reports the same dataset: the paper's
  value (its mean over the same targets), with the scale of both trainings in a note;
* where the data has rater votes: the human ceiling (a rater against the majority of the other
  raters, ``rater_accuracy_loo``) and the model's gap to it, the model scored the same way on the
  same images (``model_accuracy_loo``), both over the targets that have votes (in a mixture of
  datasets, only some targets do);
* where the suite names protected attributes (``subgroups``): the mean over targets of the
  worst-group accuracy and of the equal-opportunity difference per protected attribute (from the
  suite's committed ``subgroups.csv``);
* where the suite names a single-task baseline (``multitask``): Δm% against it (FAMO's sign: a
  drop, lower is better), its interval and p-value, and the mean rank over tasks (from the suite's
  committed ``multitask.csv``, :mod:`facebench.benchmarks.multitask_report`);
* what ``facebench inspect`` counted on the data (skipped files, cross-split duplicates, repeated
  and conflicting rows, test items dropped by ``dedupe``), where the records carry it.

Both files depend only on their inputs (no time stamps), so rebuilding them from the same records
gives the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facebench.core.paths import results_root as default_results_root
from facebench.benchmarks.attribute_support import MIN_POSITIVES, average_subsets, leaderboard_support, row_labels
from facebench.benchmarks.stats import RunPredictions, image_variance, seed_influence, seed_interval
from facebench.benchmarks.run_folder import read_suite_snapshot, suite_notes
from facebench.benchmarks.tables import load_reported
from facebench.core.io import read_json, write_csv, write_text

HEADLINE = ("accuracy", "balanced_accuracy", "auroc")
#: What a row's training cost, mean over its seeds (records: benchmarks.callbacks.RunLoggingCallback).
COST = ("train_cpu_s", "train_images", "train_forward_flops")
#: The family of a method whose suite entry names no ``budget``.
NO_BUDGET = "unstated"
SETTINGS = ("method_name", "datamodule", "input_size", "input_channels", "epochs", "train_samples", "params",
            "flops_per_image", "n_targets")
#: What ``facebench inspect`` counted on the data a leaderboard was computed on (records' columns).
DATA_CHECKS = ("data_skipped_files", "data_cross_split_duplicates", "data_repeated_rows", "data_conflicting_rows",
               "data_dedupe_dropped")
#: Subgroup aggregates carried into the cross-suite table, per protected attribute.
SUBGROUP_AGGREGATES = ("worst_group_accuracy", "equal_opportunity_difference")
#: Δm% against the suite's single-task baseline (FAMO's sign: a drop, lower is better), its interval and
#: p-value, and the mean rank over tasks (suites with ``multitask``).
MULTITASK_COLUMNS = ("delta_m_drop_pct", "delta_m_ci95", "delta_m_p_value", "mean_rank")
#: Metrics averaged over the powered and the label-consistent targets too (``<metric>_powered``, ...).
SUBSET_METRICS = ("accuracy", "balanced_accuracy")
#: Those averages (:mod:`facebench.benchmarks.attribute_support`), as column-name parts.
SUBSETS = ("powered", "label_consistent")
#: Training images of the full datasets the papers report on (official training splits).
FULL_TRAINING_IMAGES: dict[str, int] = {"celeba": 162_770, "lfwa": 6_263, "ferplus": 28_558, "fer2013": 28_709}


def _target_rows(board: pd.DataFrame) -> pd.DataFrame:
    """Test rows at target level: one per target (and per class of a multi-label target)."""
    test = board[board["split"] == "test"].copy()
    test["class"] = test["class"].fillna("").astype(str)
    has_accuracy = test["accuracy"].notna() if "accuracy" in test else pd.Series(False, index=test.index)
    return test[(test["class"] == "") | has_accuracy]


def _fmt(mean: float, low: float, high: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = f"{100 * mean:.2f}"
    if not (isinstance(low, float) and math.isnan(low)):
        text += f" ± {100 * (high - mean):.2f}"
    return text


def paper_value(reported: pd.DataFrame, link: dict[str, str] | None, datamodule: str, targets: list[str],
                metric: str = "accuracy") -> tuple[float, int]:
    """The paper's mean over ``targets`` of ``metric`` for the linked published row, and how many
    of the targets it reports (NaN, 0 when it reports none of them)."""
    if not link or reported.empty:
        return math.nan, 0
    rows = reported[(reported["paper"] == link.get("paper")) & (reported["method"] == link.get("method"))
                    & (reported["dataset"] == datamodule) & (reported["metric"] == metric)]
    values = rows.set_index("attribute")["value"]
    found = [float(values[t]) for t in targets if t in values.index]
    if len(found) != len(targets):
        if "Average" in values.index and len(targets) >= 40:
            return float(values["Average"]), len(targets)
        return (float(np.mean(found)), len(found)) if found else (math.nan, 0)
    return float(np.mean(found)), len(found)


def subgroup_columns(suite_dir: Path) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """``{(dataset, method): {protected: {aggregate: mean over targets}}}`` from a suite's committed
    ``subgroups.csv`` (seed means per target; empty when the suite has none)."""
    path = suite_dir / "subgroups.csv"
    if not path.is_file():
        return {}
    rows = pd.read_csv(path, keep_default_na=False, na_values=["nan", "NaN", ""])
    rows = rows[(rows["group"].fillna("") == "") & rows["metric"].isin(SUBGROUP_AGGREGATES)]
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for (dataset, method, protected, metric), v in rows.groupby(["dataset", "method", "protected_attribute", "metric"])["value"]:
        out.setdefault((dataset, method), {}).setdefault(protected, {})[metric] = float(v.mean())
    return out


def multitask_columns(suite_dir: Path) -> dict[tuple[str, str], dict[str, float]]:
    """``{(dataset, method): {delta_m_drop_pct, delta_m_ci95, delta_m_p_value, mean_rank}}`` from a suite's committed
    ``multitask.csv`` (:mod:`facebench.benchmarks.multitask_report`; empty when the suite has none)."""
    path = suite_dir / "multitask.csv"
    if not path.is_file():
        return {}
    rows = pd.read_csv(path).rename(columns={"p_value": "delta_m_p_value"})
    cols = [c for c in MULTITASK_COLUMNS if c in rows.columns]
    return {(str(r["dataset"]), str(r["method"])): {c: float(r[c]) for c in cols} for _, r in rows.iterrows()}


def mean_interval(grp: pd.DataFrame, metric: str, rows: list[str] | None = None,
                  runs: dict[tuple[str, str, int], RunPredictions] | None = None) -> dict[str, Any]:
    """A method's mean over targets (``rows``, default all it has) per seed, then over seeds with the
    seed-aware interval (:func:`facebench.benchmarks.stats.seed_interval`; the image term where
    ``runs`` holds the per-image predictions of every seed). Seeds lacking a row are left out."""
    g = grp[grp[metric].notna()]
    labels = row_labels(g["attribute"], g["class"])
    if rows is not None:
        keep = labels.isin(rows)
        g, labels = g[keep], labels[keep]
    counts = labels.groupby(g["seed"]).nunique()
    want = len(rows) if rows is not None else labels.nunique()
    seeds = sorted(int(s) for s in counts.index[counts == want])
    per_seed = g[g["seed"].isin(seeds)].groupby("seed")[metric].mean()
    iv = None
    if runs and len(seeds) > 1:
        dataset, method = str(grp["dataset"].iloc[0]), str(grp["method"].iloc[0])
        delta = seed_influence([runs.get((dataset, method, s)) for s in seeds], list(dict.fromkeys(labels)), metric)
        if delta is not None:
            iv = float(image_variance(delta.mean(axis=2)[:, :, None])[0])
            iv = iv if np.isfinite(iv) else None
    out = seed_interval(per_seed.to_numpy(), iv)
    out["variance"] = "seeds + images" if iv is not None and out["seeds"] > 1 else "seeds"
    return out


def suite_rows(suite_dir: Path, reported: pd.DataFrame, runs: list[RunPredictions] | None = None) -> list[dict[str, Any]]:
    """One leaderboard row per (dataset, method) of one suite's committed ``leaderboard.csv``
    (``runs``: per-image predictions for the image term of the intervals; default: the suite's
    committed records, where it keeps them)."""
    board = pd.read_csv(suite_dir / "leaderboard.csv", keep_default_na=False, na_values=["nan", "NaN", ""])
    info = read_json(suite_dir / "leaderboard_info.json", {}) or {}
    suite = info.get("suite") or suite_dir.name
    mixed = info.get("mixed_code_versions") or {}
    notes = suite_notes(suite_dir)
    rows = []
    subgroup_means = subgroup_columns(suite_dir)
    multitask = multitask_columns(suite_dir)
    targets = _target_rows(board)
    if runs is None and (suite_dir / "records").is_dir():
        from facebench.benchmarks.stats import results_predictions

        runs = results_predictions(suite_dir)
    by_run = {(r.dataset, r.method, int(r.seed)): r for r in runs or []}
    support = leaderboard_support(board)
    for (dataset, method), grp in targets.groupby(["dataset", "method"], sort=True):
        per_seed = grp.groupby("seed")[[m for m in HEADLINE if m in grp.columns]].mean()
        if per_seed.isna().all().all():
            continue                    # a stage without attribute outputs (e.g. identity pre-training)
        row: dict[str, Any] = {"suite": suite, "dataset": dataset, "method": method}
        for metric in HEADLINE:
            if metric not in per_seed:
                continue
            s = mean_interval(grp, metric, runs=by_run) if metric != "auroc" else mean_interval(grp, metric)
            row[f"{metric}"] = s["mean"]
            row[f"{metric}_ci95"] = s["half"]
            row["seeds"] = int(per_seed[metric].notna().sum())
            if metric == "accuracy":
                row["interval"] = s["variance"]
        scored = grp[grp["accuracy"].notna()] if "accuracy" in grp else grp      # not the box / identity targets
        labels = list(dict.fromkeys(row_labels(scored["attribute"], scored["class"])))
        subsets = average_subsets(support, dataset, labels, MIN_POSITIVES) if len(labels) > 1 else {}
        for name, members in subsets.items():
            key = name.replace("-", "_")
            row[f"{key}_targets"] = len(members)
            for metric in [m for m in SUBSET_METRICS if m in grp.columns]:
                s = mean_interval(grp, metric, members, by_run)
                row[f"{metric}_{key}"], row[f"{metric}_{key}_ci95"] = s["mean"], s["half"]
        if "rater_accuracy_loo" in grp and grp["rater_accuracy_loo"].notna().any():
            # over the targets that have votes only (a mixture also has targets without raters)
            # and scored like the raters: the model against the others' majority on the same images
            # (``model_accuracy_loo``), not its accuracy on the labelled images (a subset: no ties)
            model = "model_accuracy_loo" if "model_accuracy_loo" in grp and grp["model_accuracy_loo"].notna().any() else "accuracy"
            voted = grp[grp["rater_accuracy_loo"].notna()].groupby("seed")[["rater_accuracy_loo", model]].mean().mean()
            row["human_ceiling"] = float(voted["rater_accuracy_loo"])
            row["gap_to_human"] = float(voted[model] - voted["rater_accuracy_loo"])
        first = grp.iloc[0]
        for key in SETTINGS:
            if key in grp:
                row[key] = first[key] if key not in ("epochs", "train_samples") else grp.groupby("seed")[key].first().max()
        for key in COST:
            if key in grp and grp[key].notna().any():
                row[key] = float(grp.groupby("seed")[key].first().mean())
        row.update(deduplicated_accuracy(board, dataset, method))
        method_cfg = notes["methods"].get(method, {}) or {}
        dataset_cfg = notes["datasets"].get(dataset, {}) or {}
        row["budget"] = str(method_cfg.get("budget") or NO_BUDGET)
        versions = mixed.get(f"{method} on {dataset}")
        row["note"] = "; ".join(x for x in (method_cfg.get("description"), dataset_cfg.get("description"),
                                            f"its seeds ran on {len(versions)} code versions" if versions else "") if x)
        for key in DATA_CHECKS:
            if key in grp and grp[key].notna().any():
                row[key] = grp[key].max()
        row.update(multitask.get((dataset, method), {}))
        for protected, values in subgroup_means.get((dataset, method), {}).items():
            for metric, value in values.items():
                row[f"{metric}[{protected}]"] = value
        target_names = sorted(grp["attribute"].unique().tolist())
        value, n = paper_value(reported, method_cfg.get("reported"), str(row.get("datamodule", dataset)), target_names)
        row["paper_accuracy"] = value
        if n:
            full = FULL_TRAINING_IMAGES.get(str(row.get("datamodule")))
            link = method_cfg["reported"]
            scale = f"{int(row.get('train_samples', 0)):,} training images vs the paper's {full:,}" if full else ""
            row["paper"] = f"{link['method']} ({link['paper']}, mean of {n} targets)" + (f"; {scale}" if scale else "")
        else:
            row["paper"] = ""
        rows.append(row)
    flag_small_gains(rows)
    return rows


def deduplicated_accuracy(board: pd.DataFrame, dataset: str, method: str) -> dict[str, float]:
    """Where a run was also scored without the test items that duplicate a training image (split
    ``test_dedup``, :func:`facebench.benchmarks.records.deduplicated_splits`): the mean accuracy over
    targets there (mean over seeds) and how many test items that drops."""
    rows = board[(board["dataset"] == dataset) & (board["method"] == method)]
    rows = rows[rows["class"].fillna("").astype(str) == ""]
    dedup, test = rows[rows["split"] == "test_dedup"], rows[rows["split"] == "test"]
    if dedup.empty or "accuracy" not in dedup or dedup["accuracy"].isna().all():
        return {}
    dropped = test.groupby("seed")["n_samples"].first() - dedup.groupby("seed")["n_samples"].first()
    return {"accuracy_dedup": float(dedup.groupby("seed")["accuracy"].mean().mean()),
            "dedup_dropped": int(dropped.dropna().max())}


#: A trained method's mean balanced accuracy should beat its dataset's majority baseline by this much.
MIN_GAIN_OVER_MAJORITY = 0.05


def flag_small_gains(rows: list[dict[str, Any]], baseline: str = "majority") -> None:
    """Append to the note of every row whose mean balanced accuracy is less than
    ``MIN_GAIN_OVER_MAJORITY`` above the same dataset's ``baseline`` row, so a table never shows such a
    row without saying so."""
    floor = {r["dataset"]: r.get("balanced_accuracy") for r in rows if r["method"] == baseline}
    for r in rows:
        base = floor.get(r["dataset"])
        value = r.get("balanced_accuracy")
        if r["method"] == baseline or base is None or value is None or math.isnan(value) or math.isnan(base):
            continue
        gain = value - base
        if gain < MIN_GAIN_OVER_MAJORITY:
            flag = f"balanced accuracy only {100 * gain:+.1f} points over the majority baseline"
            r["note"] = "; ".join(x for x in (r.get("note"), flag) if x)


def build_cross_suite(results_root: str | Path | None = None, reported_path: str | Path | None = None) -> pd.DataFrame:
    """The cross-suite table from every ``<results_root>/<suite>/leaderboard.csv``."""
    root = default_results_root(results_root)
    reported = load_reported(reported_path) if reported_path else load_reported()
    rows: list[dict[str, Any]] = []
    for suite_dir in sorted(p.parent for p in root.glob("*/leaderboard.csv")):
        if read_suite_snapshot(suite_dir, "overrides"):   # a suite changed with --set: an experiment, not the suite
            print(f"[facebench] {suite_dir.name}: left out of the cross-suite leaderboard (run with --set overrides)")
            continue
        rows += suite_rows(suite_dir, reported)
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    subsets = [c for key in SUBSETS for c in (*[x for m in SUBSET_METRICS for x in (f"{m}_{key}", f"{m}_{key}_ci95")],
                                               f"{key}_targets")]
    order = ["suite", "dataset", "budget", "method", *[c for m in HEADLINE for c in (m, f"{m}_ci95")], "seeds", "interval",
             *subsets, "accuracy_dedup", "dedup_dropped", *MULTITASK_COLUMNS, "human_ceiling", "gap_to_human", *SETTINGS,
             *COST, "paper_accuracy", "paper", "note"]
    extra = sorted(c for c in df.columns if c not in order)     # subgroup aggregates and data checks
    df = df[[c for c in order if c in df.columns] + extra]
    return df.sort_values(["suite", "dataset", "budget", "accuracy", "method"],
                          ascending=[True, True, True, False, True]).reset_index(drop=True)


def to_markdown(df: pd.DataFrame) -> str:
    """``LEADERBOARD.md``: one table per (suite, dataset), best mean accuracy first."""
    lines = ["# facebench leaderboard", "",
             "Built by `facebench report --all` from the committed `results/<suite>/leaderboard.csv` files (test split).",
             "Accuracy, balanced accuracy and AUROC are means over the dataset's targets, in percent: the mean over",
             "seeds ± the half-width of its 95% interval, Student t over seeds (the seed is the unit of replication;",
             "where a suite commits per-image predictions the interval also carries the test-image sampling variance,",
             "`benchmarks/stats.py`; ± 0.00: the seeds give the same result). Beside the average over all targets:",
             f"acc. (powered N), the mean accuracy over the N targets with at least {MIN_POSITIVES} positive and negative "
             "test images, and",
             "acc. (label-consistent N), without High_Cheekbones, Pointy_Nose and Oval_Face (essentially random annotator",
             "consistency: Wu et al., CVPRW 2023, arXiv 2210.07356); balanced accuracy over both sets in `leaderboard.csv`.",
             "Δm%: against the suite's single-task baseline in FAMO's sign, a performance drop (lower is better, negative",
             "= better than the baseline; `results/<suite>/multitask.md`), with its p-value (paired t over seeds).",
             "Paper: the published value of the same method on the full dataset (mean over the same targets), where the",
             "suite links one; the scale note says how much less data the CPU suites train on. Synthetic-data suites",
             "test the code; they are not evidence about a paper.", ""]
    for (suite, dataset), section in df.groupby(["suite", "dataset"], sort=True):
        lines += [f"## {dataset} (suite `{suite}`, `results/{suite}/leaderboard.csv`)", ""]
        for family, grp in section.groupby(section["budget"] if "budget" in section else pd.Series(NO_BUDGET, index=section.index),
                                           sort=True):
            lines += [f"Budget family `{family}` (rows compare within it; the suite file says what it is):" if family != NO_BUDGET
                      else "Budget family: not stated by the suite.", ""]
            lines += _family_table(grp)
    return "\n".join(lines)


def _family_table(grp: pd.DataFrame) -> list[str]:
    """The Markdown table of one budget family of one dataset, best mean accuracy first."""
    lines: list[str] = []
    human = "human_ceiling" in grp and grp["human_ceiling"].notna().any()
    fairness = [c for c in grp.columns if c.split("[")[0] in SUBGROUP_AGGREGATES and grp[c].notna().any()]
    multitask = "delta_m_drop_pct" in grp and grp["delta_m_drop_pct"].notna().any()
    subsets = [k for k in SUBSETS if f"accuracy_{k}" in grp and grp[f"accuracy_{k}"].notna().any()]
    sizes = {k: sorted({int(n) for n in grp[f"{k}_targets"].dropna()}) for k in subsets}
    dedup = "accuracy_dedup" in grp and grp["accuracy_dedup"].notna().any()
    cost = "train_cpu_s" in grp and grp["train_cpu_s"].notna().any()
    head = ["method", "accuracy"] + [f"acc. ({k.replace('_', '-')}" + (f" {sizes[k][0]})" if len(sizes[k]) == 1 else ")")
                                     for k in subsets] + \
           (["acc. without test images duplicating a training image (dropped)"] if dedup else []) + \
           ["balanced acc.", "AUROC", "seeds"] + \
           (["human ceiling", "gap"] if human else []) + \
           (["Δm% drop vs single-task", "p (Δm%)", "mean rank"] if multitask else []) + \
           [f"{'worst-group acc.' if c.startswith('worst') else 'EO diff.'} {c[c.index('['):]}" for c in fairness] + \
           ["input", "epochs", "train images", "params (M)", "GFLOPs"] + \
           (["train CPU-h", "train PFLOPs (forward)"] if cost else []) + ["paper", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 3) + ["---", "---"]) + "|"]
    for _, r in grp.iterrows():
        cells = [f"`{r['method']}`", _fmt(r.get("accuracy"), _low(r, "accuracy"), _high(r, "accuracy"))]
        for k in subsets:
            text = _fmt(r.get(f"accuracy_{k}"), _low(r, f"accuracy_{k}"), _high(r, f"accuracy_{k}"))
            cells.append(text + (f" ({int(r[f'{k}_targets'])})" if text and len(sizes[k]) > 1 else ""))
        if dedup:
            cells.append(f"{_pct(r.get('accuracy_dedup'))} ({int(r['dedup_dropped'])})" if _num(r.get("accuracy_dedup")) else "")
        cells += [_fmt(r.get("balanced_accuracy"), _low(r, "balanced_accuracy"), _high(r, "balanced_accuracy")),
                 _fmt(r.get("auroc"), _low(r, "auroc"), _high(r, "auroc")), str(int(r.get("seeds", 0)))]
        if human:
            cells += [_pct(r.get("human_ceiling")), _pct(r.get("gap_to_human"), signed=True)]
        if multitask:
            dm, half, p = r.get("delta_m_drop_pct"), r.get("delta_m_ci95"), r.get("delta_m_p_value")
            baseline = _num(dm) and dm == 0 and (not _num(half) or half == 0)
            cells += [("0 (baseline)" if baseline else f"{dm:+.2f}" + (f" ± {half:.2f}" if _num(half) else "")) if _num(dm) else "",
                      "" if baseline or not _num(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}"),
                      f"{r['mean_rank']:.2f}" if _num(r.get("mean_rank")) else ""]
        cells += [_pct(r.get(c)) for c in fairness]
        size = r.get("input_size")
        cells += [f"{int(r['input_channels'])}x{int(size)}x{int(size)}" if _num(size) else "",
                  str(int(r["epochs"])) if _num(r.get("epochs")) else "",
                  f"{int(r['train_samples']):,}" if _num(r.get("train_samples")) else "",
                  f"{r['params'] / 1e6:.2f}" if _num(r.get("params")) else "",
                  f"{r['flops_per_image'] / 1e9:.3f}" if _num(r.get("flops_per_image")) and r["flops_per_image"] >= 0 else ""]
        if cost:
            cells += [f"{r['train_cpu_s'] / 3600:.2f}" if _num(r.get("train_cpu_s")) else "",
                      f"{r['train_forward_flops'] / 1e15:.3f}" if _num(r.get("train_forward_flops")) else ""]
        cells += [(f"{100 * r['paper_accuracy']:.2f}: {r['paper']}" if _num(r.get("paper_accuracy")) else ""),
                  str(r.get("note") or "")]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    return lines



def _num(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and v != ""


def _low(r: pd.Series, metric: str) -> float:
    half = r.get(f"{metric}_ci95")
    return r[metric] - half if _num(half) else math.nan


def _high(r: pd.Series, metric: str) -> float:
    half = r.get(f"{metric}_ci95")
    return r[metric] + half if _num(half) else math.nan


def _pct(v: Any, signed: bool = False) -> str:
    if not _num(v):
        return ""
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def write_cross_suite(results_root: str | Path | None = None) -> tuple[Path, Path] | None:
    """Write ``leaderboard.csv`` and ``LEADERBOARD.md`` into ``results_root`` (default ``results/``)."""
    root = default_results_root(results_root)
    df = build_cross_suite(root)
    if df.empty:
        print(f"[facebench] no committed leaderboard.csv under {root}")
        return None
    csv_path = write_csv(root / "leaderboard.csv", df, float_format="%.6g")
    md_path = write_text(root / "LEADERBOARD.md", to_markdown(df))
    print(f"[facebench] {len(df)} rows -> {csv_path} and {md_path}")
    return csv_path, md_path
