"""Comparison tables from result records (pandas): attributes x methods, like the papers' tables.

* :func:`comparison_table`: one metric on one dataset and split; rows are the targets (``target/
  class`` for per-class values), columns the methods (majority baseline first), each cell the mean
  over seeds (``mean ± std`` with several seeds), an ``Average`` row (the mean over rows, per seed,
  then over seeds) and, when :func:`load_reported` has numbers for that dataset and metric, the
  papers' published columns next to ours (``<method> [<paper>]``).
* :func:`agreement_table`: per target with rater votes, the raters' Fleiss' kappa and the human
  ceiling (rater vs the majority of the other raters) next to every method's accuracy against the
  same targets and its kappa as one more rater (the FAD paper's point about subjective traits).
* :func:`confusion_tables`: summed confusion matrices per (dataset, method, multi-class target).
* :func:`write_tables`: all of them as CSV, Markdown and a self-contained HTML page (sortable by a
  click on a header, best value per row in bold) into ``RESULTS_DIR/tables/``.

``results/paper_reported.csv`` holds the published numbers (columns paper, method, dataset, split,
attribute, paper_attribute, metric, value, source): attribute names are CelebA's where the paper
uses another spelling (:data:`PAPER_ATTRIBUTE_NAMES`), values are fractions like ours (a paper's
"91" percent is 0.91).
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from facebench.benchmarks.attribute_support import (AVERAGE, LABEL_INCONSISTENT, MIN_POSITIVES, average_subsets,
                                                    counts_for, leaderboard_support, subset_label)
from facebench.core.io import write_csv, write_text
from facebench.core.paths import SOURCE_ROOT, results_root
from facebench.lightning_modules.metrics import lower_is_better

#: The papers' published numbers: the source checkout's ``results/paper_reported.csv`` (an installed
#: wheel reads ``./results/paper_reported.csv`` of the current directory, where a user can put it).
REPORTED_PATH = (SOURCE_ROOT / "results" if SOURCE_ROOT else results_root()) / "paper_reported.csv"
REPORTED_COLUMNS = ["paper", "method", "dataset", "split", "attribute", "paper_attribute", "metric", "value", "source"]
POSITIVES_COLUMN, NEGATIVES_COLUMN = "test positives", "test negatives"
BASELINE_METHODS = ("majority",)
#: Metrics tabulated by :func:`write_tables`, with their ``@...`` variants (tuned thresholds,
#: operating points), when present in the records.
TABLE_METRICS = ("accuracy", "balanced_accuracy", "auroc", "average_precision", "precision", "recall", "f1", "cohen_kappa", "ece",
                 "mean_class_precision", "accuracy_within_1", "mae_bins", "mae_years", "tpr", "unlabelled")
#: Short names of the papers in ``/work/shared/papers`` (column labels of reported values).
PAPER_SHORT = {
    "lnets_anet_celeba_in_the_wild": "Liu et al. 2015",
    "mcnn_aux_multitask_attributes": "Hand & Chellappa 2017",
    "lacnn_landmark_augmented_cnn_FAD": "LACNN/FAD",
    "semantic_facial_features_fer_vv": "semantic features",
    "branching_identity_network_flickr": "Baumgartner & Culpepper",
}
#: Attribute names as printed in the papers' tables -> CelebA's ``list_attr_celeba.txt`` names.
PAPER_ATTRIBUTE_NAMES = {
    # LNets+ANet paper, Table 1 (abbreviated headers)
    "5 Shadow": "5_o_Clock_Shadow", "Arch. Eyebrows": "Arched_Eyebrows", "Bags Un. Eyes": "Bags_Under_Eyes",
    "H. Cheekbones": "High_Cheekbones", "Mouth S. O.": "Mouth_Slightly_Open", "Reced. Hairline": "Receding_Hairline",
    "Wear. Earrings": "Wearing_Earrings", "Wear. Hat": "Wearing_Hat", "Wear. Lipstick": "Wearing_Lipstick",
    "Wear. Necklace": "Wearing_Necklace", "Wear. Necktie": "Wearing_Necktie",
    # MCNN-AUX paper, Tables 2 and 3
    "5 o'clock Shadow": "5_o_Clock_Shadow", "Earrings": "Wearing_Earrings", "Hat": "Wearing_Hat",
    "Lipstick": "Wearing_Lipstick", "Necklace": "Wearing_Necklace", "Necktie": "Wearing_Necktie",
}


def canonical_attribute(name: str) -> str:
    """A paper's attribute label as a CelebA name (``"Big Nose"`` -> ``"Big_Nose"``)."""
    name = name.strip()
    return PAPER_ATTRIBUTE_NAMES.get(name, name.replace(" ", "_"))


def _key(name: str) -> str:
    """Loose key for matching names across papers and datasets (case, spaces, punctuation)."""
    return re.sub(r"[^a-z0-9/]", "", str(name).lower())


def reported_text(value: float) -> str:
    """A published number as ``paper_reported.csv`` writes it: the shortest decimal that reads back
    to the same float, integers without a point (``1018055``, ``0.7197``), never an exponent."""
    return np.format_float_positional(float(value), unique=True, trim="-")


def write_reported(df: pd.DataFrame, path: str | Path = REPORTED_PATH) -> Path:
    """Write the published numbers with every value exact (:func:`reported_text`); reading the file
    with :func:`load_reported` and writing it back gives its bytes."""
    out = df[REPORTED_COLUMNS].copy()
    out["value"] = [reported_text(v) for v in out["value"]]
    return write_csv(path, out)


def load_reported(path: str | Path = REPORTED_PATH) -> pd.DataFrame:
    """The published numbers (empty when the file is absent). Values are read as exact floats: the
    file writes each as the paper prints it (``1018055``, not ``1.01806e+06``; :func:`write_reported`)."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=REPORTED_COLUMNS)
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"split": str})
    missing = [c for c in REPORTED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: expected columns {', '.join(REPORTED_COLUMNS)}; missing {', '.join(missing)}")
    return df


# ------------------------------------------------------------------------------------------------
# the table model
# ------------------------------------------------------------------------------------------------
@dataclass
class WideTable:
    """Rows x columns of numbers (``mean``; ``std`` over seeds where known) with footer rows."""

    title: str
    mean: pd.DataFrame
    std: pd.DataFrame | None = None
    footer: list[str] = field(default_factory=list)
    better: str | None = "max"          # "max", "min" or None (no bold)
    notes: list[str] = field(default_factory=list)
    digits: int = 4
    #: Columns that describe the rows (test positives / negatives): counts, never bold.
    info: list[str] = field(default_factory=list)

    def best_mask(self) -> pd.DataFrame:
        """True where a cell holds the best value of its row (ties all bold; none when all are equal)."""
        m = self.mean.drop(columns=[c for c in self.info if c in self.mean.columns]).apply(pd.to_numeric, errors="coerce")
        if self.better is None or m.empty:
            return pd.DataFrame(False, index=self.mean.index, columns=self.mean.columns)
        best = m.max(axis=1) if self.better == "max" else m.min(axis=1)
        differ = (m.max(axis=1) > m.min(axis=1)).to_numpy()[:, None]      # nothing is best when all are equal
        return (m.eq(best, axis=0) & m.notna() & differ).reindex(columns=self.mean.columns, fill_value=False)

    def cell(self, row: str, col: str) -> str:
        v = self.mean.at[row, col]
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return ""
        if not isinstance(v, (int, float, np.floating, np.integer)):
            return str(v)
        if col in self.info:
            return f"{int(v)}"
        text = f"{v:.{self.digits}f}"
        if self.std is not None and col in self.std.columns and row in self.std.index:
            s = self.std.at[row, col]
            if s is not None and not (isinstance(s, float) and math.isnan(s)):
                text += f" ± {s:.{self.digits}f}"
        return text

    # -- writers ----------------------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """Numbers for CSV: the mean columns, then ``<column> std`` where seeds vary."""
        out = self.mean.copy()
        if self.std is not None:
            for c in self.std.columns:
                if self.std[c].notna().any():
                    out[f"{c} std"] = self.std[c]
        out.index.name = self.mean.index.name or "attribute"
        return out.reset_index()

    def to_markdown(self) -> str:
        bold = self.best_mask()
        cols = list(self.mean.columns)
        head = [self.mean.index.name or "attribute"] + cols
        lines = [f"### {self.title}", "", "| " + " | ".join(_md(h) for h in head) + " |",
                 "|" + "|".join([" --- "] + [" ---: "] * len(cols)) + "|"]
        for row in self.mean.index:
            cells = [f"**{self.cell(row, c)}**" if bold.at[row, c] else self.cell(row, c) for c in cols]
            label = f"**{row}**" if row in self.footer else str(row)
            lines.append("| " + " | ".join(_md(x) for x in [label] + cells) + " |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_html_table(self, table_id: str) -> str:
        bold = self.best_mask()
        cols = list(self.mean.columns)
        head = "".join(f'<th onclick="sortTable(\'{table_id}\',{i})">{html.escape(str(h))}</th>'
                       for i, h in enumerate([self.mean.index.name or "attribute"] + cols))

        def row_html(row: str) -> str:
            tds = [f"<th>{html.escape(str(row))}</th>"]
            for c in cols:
                v = self.mean.at[row, c]
                sort_key = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
                text = html.escape(self.cell(row, c))
                tds.append(f'<td data-v="{html.escape(sort_key)}">' + (f"<b>{text}</b>" if bold.at[row, c] else text) + "</td>")
            return "<tr>" + "".join(tds) + "</tr>"

        body = "\n".join(row_html(r) for r in self.mean.index if r not in self.footer)
        foot = "\n".join(row_html(r) for r in self.mean.index if r in self.footer)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (f"<h2>{html.escape(self.title)}</h2>\n<table id=\"{table_id}\">\n<thead><tr>{head}</tr></thead>\n"
                f"<tbody>\n{body}\n</tbody>\n<tfoot>\n{foot}\n</tfoot>\n</table>\n" + (f"<ul>{notes}</ul>\n" if notes else ""))


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; }}
td {{ text-align: right; font-variant-numeric: tabular-nums; }}
thead th {{ cursor: pointer; background: #f0f0f0; position: sticky; top: 0; }}
tbody tr:nth-child(even) {{ background: #fafafa; }}
tfoot {{ border-top: 2px solid #888; font-weight: 600; }}
</style>
<script>
// click a header to sort the body rows by that column (numbers numerically, again to reverse)
function sortTable(id, col) {{
  const table = document.getElementById(id), body = table.tBodies[0];
  const dir = table.dataset.col == col && table.dataset.dir == "1" ? -1 : 1;
  table.dataset.col = col; table.dataset.dir = dir;
  const key = r => {{ const c = r.cells[col]; const v = c.dataset.v; return v !== undefined && v !== "" ? parseFloat(v) : c.textContent; }};
  Array.from(body.rows).sort((a, b) => {{ const x = key(a), y = key(b);
    return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y))) * dir; }})
    .forEach(r => body.appendChild(r));
}}
</script></head>
<body>
<h1>{title}</h1>
{tables}
</body></html>
"""


def html_page(title: str, tables: Sequence[WideTable]) -> str:
    """A self-contained HTML page (inline CSS and JS, no network) with the tables."""
    return HTML_PAGE.format(title=html.escape(title),
                            tables="\n".join(t.to_html_table(f"t{i}") for i, t in enumerate(tables)))


# ------------------------------------------------------------------------------------------------
# building tables from the long metrics
# ------------------------------------------------------------------------------------------------
def _row_label(target: pd.Series, cls: pd.Series) -> pd.Series:
    cls = cls.fillna("").astype(str)
    return target.astype(str).where(cls == "", target.astype(str) + "/" + cls)


def _select(metrics: pd.DataFrame, dataset: str, metric: str, split: str) -> pd.DataFrame:
    sel = metrics[(metrics["dataset"] == dataset) & (metrics["metric"] == metric) & (metrics["split"] == split)]
    return sel.assign(row=_row_label(sel["target"], sel["class"])) if not sel.empty else sel.assign(row=[])


def _method_order(metrics: pd.DataFrame, means: pd.DataFrame, better: str | None) -> list[str]:
    """Majority baselines first, then methods by their average over ``means``' rows (best first)."""
    names = dict(zip(metrics["method"], metrics["method_name"] if "method_name" in metrics.columns else metrics["method"]))
    methods = list(dict.fromkeys(list(means.columns) + list(metrics["method"])))
    baselines = [m for m in methods if names.get(m, m) in BASELINE_METHODS]
    avg = means.reindex(columns=[m for m in methods if m not in baselines]).mean()
    rest = list(avg.sort_values(ascending=(better == "min"), na_position="last", kind="stable").index)
    return baselines + rest


def seed_means(metrics: pd.DataFrame, dataset: str, metric: str, split: str = "test",
               subsets: dict[str, Sequence[str]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(mean over seeds, std over seeds) with rows in task order and an ``Average`` row computed
    per seed (mean over the rows a method has) then over seeds; and the row order. ``subsets``
    (``{name: [row, ...]}``) add one such average over each subset's rows that the table has
    (:func:`subset_label`)."""
    sel = _select(metrics, dataset, metric, split)
    if sel.empty:
        return pd.DataFrame(), pd.DataFrame(), []
    rows = list(dict.fromkeys(sel["row"]))
    per_seed = sel.groupby(["row", "method", "seed"], sort=False)["value"].first()
    mean = per_seed.groupby(["row", "method"], sort=False).mean().unstack("method").reindex(rows)
    std = per_seed.groupby(["row", "method"], sort=False).std(ddof=1).unstack("method").reindex(rows)
    complete = per_seed.groupby(["method", "seed"]).size() == len(rows)
    avg = per_seed.groupby(["method", "seed"]).mean()[complete]
    mean.loc[AVERAGE] = avg.groupby("method").mean()
    std.loc[AVERAGE] = avg.groupby("method").std(ddof=1)
    for name, members in (subsets or {}).items():
        keep = [r for r in rows if r in set(members)]
        if not keep:
            continue
        part = per_seed[per_seed.index.get_level_values("row").isin(keep)]
        done = part.groupby(["method", "seed"]).size() == len(keep)
        sub = part.groupby(["method", "seed"]).mean()[done]
        mean.loc[subset_label(name, len(keep))] = sub.groupby("method").mean()
        std.loc[subset_label(name, len(keep))] = sub.groupby("method").std(ddof=1)
    return mean, std, rows


def reported_columns(reported: pd.DataFrame, dataset_names: Iterable[str], metric: str, rows: Sequence[str],
                     split: str = "test") -> pd.DataFrame:
    """The published values matching ``rows`` (by loose name), one column per (paper, method),
    with the ``Average`` over the same rows when a paper covers all of them. Values published for
    the whole dataset (split ``all``, e.g. FAD's kappas) match any split."""
    keys = {_key(d) for d in dataset_names}
    r = reported[(reported["dataset"].map(_key).isin(keys)) & (reported["metric"] == metric)
                 & reported["split"].fillna("test").astype(str).isin([split, "all"])]
    out = pd.DataFrame(index=list(rows) + [AVERAGE], dtype=float)
    if r.empty or not rows:
        return out.iloc[:, :0]
    row_of = {_key(x): x for x in rows}
    for (paper, method), grp in r.groupby(["paper", "method"], sort=False):
        col = f"{method} [{PAPER_SHORT.get(paper, paper)}]"
        vals = {row_of[_key(a)]: float(v) for a, v in zip(grp["attribute"], grp["value"]) if _key(a) in row_of}
        if not vals:
            continue
        out[col] = pd.Series(vals)
        if len(vals) == len(rows):
            out.at[AVERAGE, col] = float(np.mean(list(vals.values())))
    return out


def support_from_long(metrics: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """:func:`facebench.benchmarks.attribute_support.leaderboard_support` of long metrics (rows
    target, class, metric, value, n_samples)."""
    names = ("positive_rate", "support", "positives", "negatives")
    m = metrics[metrics["metric"].isin(names) & (metrics["split"] == split)] if not metrics.empty else metrics
    if m.empty:
        return leaderboard_support(pd.DataFrame())
    keys = ["dataset", "method", "split", "seed", "target", "class"]
    wide = m.assign(**{"class": m["class"].fillna("").astype(str)}).pivot_table(
        index=keys, columns="metric", values="value", aggfunc="first").reset_index()
    if "n_samples" in m.columns:
        n = m.groupby(["dataset", "method", "split", "seed"])["n_samples"].first().rename("n_samples")
        wide = wide.merge(n.reset_index(), on=["dataset", "method", "split", "seed"], how="left")
    return leaderboard_support(wide.rename(columns={"target": "attribute"}), split)


def comparison_table(metrics: pd.DataFrame, dataset: str, metric: str = "accuracy", split: str = "test",
                     reported: pd.DataFrame | None = None, subsets: dict[str, Sequence[str]] | None = None,
                     support: pd.DataFrame | None = None, min_positives: int = MIN_POSITIVES) -> WideTable | None:
    """Attributes x methods for one metric (see the module docstring); ``None`` without values.
    The test positives / negatives of each row come first where known (``support``, default: from
    the records' ``positive_rate`` / ``support`` rows, :mod:`facebench.benchmarks.attribute_support`), with
    the ``Average (powered N)`` and ``Average (label-consistent N)`` rows; ``subsets``: more named
    target subsets with their own average row (a suite's ``target_subsets``)."""
    sel = _select(metrics, dataset, metric, split)
    rows0 = list(dict.fromkeys(sel["row"])) if not sel.empty else []
    support = support_from_long(metrics, split) if support is None else support
    extra = average_subsets(support, dataset, rows0, min_positives)
    mean, std, rows = seed_means(metrics, dataset, metric, split, {**extra, **(subsets or {})})
    if mean.empty:
        return None
    better = "min" if lower_is_better(metric) else "max"
    order = [m for m in _method_order(metrics[metrics["dataset"] == dataset], mean.loc[rows], better) if m in mean.columns]
    mean, std = mean[order], std[order]
    counts = counts_for(support, dataset, rows)
    info = []
    if counts.notna().any().any():
        info = [POSITIVES_COLUMN, NEGATIVES_COLUMN]
        head = pd.DataFrame({POSITIVES_COLUMN: counts["positives"].astype(float),
                             NEGATIVES_COLUMN: counts["negatives"].astype(float)}).reindex(mean.index)
        mean = head.join(mean)
    seeds = metrics[(metrics["dataset"] == dataset) & (metrics["split"] == split)].groupby("method")["seed"].nunique()
    notes = [f"{split} split; {metric}; mean over seeds (± sample std) — seeds: "
             + ", ".join(f"{m} {int(seeds.get(m, 0))}" for m in order),
             f"{AVERAGE}: mean over the rows, per seed, then over seeds (empty where a method lacks rows)."]
    if info:
        notes.append(f"{POSITIVES_COLUMN} / {NEGATIVES_COLUMN}: test images with and without the label (per class: of "
                     f"that class and of the others). {AVERAGE} (powered N): over the N rows with at least {min_positives} "
                     f"of each; {AVERAGE} (label-consistent N): without {', '.join(LABEL_INCONSISTENT)}, whose labels "
                     "have essentially random annotator consistency (Wu et al., CVPRW 2023, arXiv 2210.07356).")
    if reported is not None and not reported.empty:
        names = [dataset] + list(metrics.loc[metrics["dataset"] == dataset, "datamodule"].unique()) \
            if "datamodule" in metrics.columns else [dataset]
        rep = reported_columns(reported, names, metric, rows, split)
        if not rep.empty:
            mean = mean.join(rep)
            notes.append("[paper] columns: numbers published in the papers (results/paper_reported.csv), on the "
                         "papers' own data and splits; not re-run here.")
    mean.index.name = std.index.name = "attribute"
    title = f"{dataset}: {metric} ({split})"
    footer = [AVERAGE] + [r for r in mean.index if str(r).startswith(f"{AVERAGE} (")]
    return WideTable(title, mean, std, footer=footer, better=better, notes=notes, info=info)


#: Columns of the agreement table: label -> metrics (target-level and per-class rows share a column).
AGREEMENT_RATER_COLUMNS = {"raters: Fleiss' kappa": ("fleiss_kappa",),
                           "human ceiling (rater vs others' majority)": ("rater_accuracy_loo", "rater_recall_loo")}
AGREEMENT_MODEL_COLUMNS = {"vs others' majority": ("model_accuracy_loo", "model_recall_loo"),
                           "Fleiss' kappa with model as rater": ("fleiss_kappa_with_model",),
                           "Cohen's kappa vs label": ("cohen_kappa",), "accuracy vs label": ("accuracy",)}


def agreement_table(metrics: pd.DataFrame, dataset: str, split: str = "test",
                    reported: pd.DataFrame | None = None) -> WideTable | None:
    """Raters' agreement and human ceiling next to each method, per voted target (and class)."""
    sel = metrics[(metrics["dataset"] == dataset) & (metrics["split"] == split)]
    voted = sel.loc[sel["metric"] == "fleiss_kappa", "target"].unique()
    if len(voted) == 0:
        return None
    sel = sel[sel["target"].isin(voted)]
    sel = sel.assign(row=_row_label(sel["target"], sel["class"]))
    rows = list(dict.fromkeys(sel.loc[sel["metric"] == "fleiss_kappa", "row"]))
    mean, std = pd.DataFrame(index=rows, dtype=float), pd.DataFrame(index=rows, dtype=float)
    for label, names in AGREEMENT_RATER_COLUMNS.items():      # the same for every run of the split
        mean[label] = sel[sel["metric"].isin(names)].groupby("row")["value"].first().reindex(rows)
    if reported is not None and not reported.empty:
        names = [dataset] + (list(sel["datamodule"].unique()) if "datamodule" in sel.columns else [])
        rep = reported_columns(reported, names, "fleiss_kappa", rows, split)
        for c in rep.columns:
            mean[f"Fleiss' kappa {c}"] = rep[c].reindex(rows)
    scores = sel[sel["metric"] == "model_accuracy_loo"].groupby("method")["value"].mean()
    for m in _method_order(sel, scores.to_frame().T, "max"):
        ms = sel[sel["method"] == m]
        for label, names in AGREEMENT_MODEL_COLUMNS.items():
            per_seed = ms[ms["metric"].isin(names)].groupby(["row", "seed"])["value"].first()
            if not per_seed.empty:
                mean[f"{m}: {label}"] = per_seed.groupby("row").mean().reindex(rows)
                std[f"{m}: {label}"] = per_seed.groupby("row").std(ddof=1).reindex(rows)
    notes = [f"{split} split. Human ceiling: each rater against the majority of the other raters (ties split "
             "1/k); 'vs others' majority' scores the model against exactly those targets. Per-class rows: "
             "recall of the others' majority class, and Fleiss' (1971) category kappa."]
    mean.index.name = "target"
    return WideTable(f"{dataset}: rater agreement and human ceiling ({split})", mean, std, better=None, notes=notes)


def confusion_tables(metrics: pd.DataFrame, split: str = "test") -> dict[tuple[str, str, str], pd.DataFrame]:
    """Confusion matrices (rows true class, columns predicted) summed over seeds, per (dataset,
    method, target), from the ``confusion:<predicted>`` rows."""
    conf = metrics[(metrics["split"] == split) & metrics["metric"].str.startswith("confusion:")]
    out = {}
    for (dataset, method, target), grp in conf.groupby(["dataset", "method", "target"], sort=False):
        pred = grp["metric"].str.slice(len("confusion:"))
        mat = grp.assign(pred=pred).pivot_table(index="class", columns="pred", values="value", aggfunc="sum", sort=False)
        order = list(dict.fromkeys(grp["class"]))
        mat = mat.reindex(index=order, columns=order)
        mat.index.name = "true \\ predicted"
        out[(dataset, method, target)] = mat
    return out


def slug(text: str) -> str:
    """A file-name-safe form of a dataset, method or metric name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("@", "_at_")).strip("_")


def _write_table(table: WideTable, stem: Path) -> list[Path]:
    return [write_csv(stem.parent / f"{stem.name}.csv", table.to_frame(), float_format="%.6g"),
            write_text(stem.parent / f"{stem.name}.md", table.to_markdown())]


def write_tables(metrics: pd.DataFrame, out_dir: str | Path, reported: pd.DataFrame | None = None,
                 split: str = "test", table_metrics: Sequence[str] = TABLE_METRICS,
                 subsets: dict[str, dict[str, Sequence[str]]] | None = None) -> list[Path]:
    """Every comparison, agreement and confusion table of ``metrics`` as CSV + Markdown + HTML;
    one HTML page per dataset holds all its tables. ``subsets``: ``{dataset: {name: [target, ...]}}``,
    extra average rows per dataset."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    if metrics.empty:
        return written
    for dataset in dict.fromkeys(metrics["dataset"]):
        tables: list[WideTable] = []
        present = sorted(set(metrics.loc[metrics["dataset"] == dataset, "metric"]))
        for metric in [m for base in table_metrics for m in present if m == base or m.startswith(f"{base}@")]:
            t = comparison_table(metrics, dataset, metric, split, reported, (subsets or {}).get(dataset))
            if t is not None:
                tables.append(t)
                written += _write_table(t, out_dir / f"{slug(dataset)}_{slug(metric)}")
        agree = agreement_table(metrics, dataset, split, reported)
        if agree is not None:
            tables.append(agree)
            written += _write_table(agree, out_dir / f"{slug(dataset)}_agreement")
        for (ds, method, target), mat in confusion_tables(metrics[metrics["dataset"] == dataset], split).items():
            written.append(write_csv(out_dir / f"{slug(ds)}_{slug(method)}_{slug(target)}_confusion.csv",
                                     mat.reset_index(), float_format="%.6g"))
        if tables:
            written.append(write_text(out_dir / f"{slug(dataset)}.html", html_page(f"facebench: {dataset}", tables)))
    return written
