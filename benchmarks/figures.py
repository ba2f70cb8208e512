"""Figures from result records (matplotlib, Agg backend): ROC curves and reliability diagrams.

For every dataset, each method is drawn from its lowest-seed finished run (curves of several
seeds on one axis would hide the comparison; the tables carry the seed spread):

* ``roc_<dataset>_<group>.png``: one panel per binary attribute of an attribute group (the
  targets' ``group``, e.g. MCNN-AUX Table 1; attributes without a group in chunks of
  ``per_figure``), one ROC curve per method with its AUROC in the legend;
* ``roc_<dataset>_<target>.png``: for a multi-class or multi-label target, one panel per class
  (one-vs-rest);
* ``reliability_<dataset>.png``: reliability diagram (mean predicted probability vs observed
  frequency per equal-width bin, ECE in the legend) of the binary outputs pooled over attributes,
  and of the top-label confidence of every multi-class target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from facebench.benchmarks.records import RunRecord, finished_run_dirs, load_run_record  # noqa: E402
from facebench.benchmarks.tables import slug  # noqa: E402
from facebench.core.tasks import TaskSpec  # noqa: E402

PER_FIGURE = 8
CALIBRATION_BINS = 15
PANEL_INCHES = 3.2


def first_seed_runs(results_dir: str | Path, split: str = "test") -> dict[str, list[RunRecord]]:
    """Per dataset, one :class:`RunRecord` per method: the run with the lowest seed."""
    best: dict[tuple[str, str], RunRecord] = {}
    for run_dir in finished_run_dirs(results_dir):
        rec = load_run_record(run_dir, split)
        if rec is None or rec.predictions.get("probs") is None or rec.predictions["probs"].shape[1] != rec.task.n_logits:
            continue
        key = (rec.dataset, rec.method)
        if key not in best or rec.seed < best[key].seed:
            best[key] = rec
    out: dict[str, list[RunRecord]] = {}
    for (dataset, _), rec in sorted(best.items()):
        out.setdefault(dataset, []).append(rec)
    return out


def roc_panels(task: TaskSpec, per_figure: int = PER_FIGURE) -> dict[str, list[tuple[str, int, int]]]:
    """Figure name -> panels ``(title, logit column, label column)``: binary targets grouped by
    ``Target.group`` (ungrouped ones in chunks of ``per_figure``), one figure per multi-label or
    multi-class target with a panel per class (for multi-class, the class's probability column
    against the target's label slot)."""
    figures: dict[str, list[tuple[str, int, int]]] = {}
    ungrouped: list[tuple[str, int, int]] = []
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        if t.kind == "binary":
            panel = (t.name, ls.start, ys.start)
            (figures.setdefault(t.group, []) if t.group else ungrouped).append(panel)
        elif t.kind == "multilabel":
            figures[t.name] = [(f"{t.name}: {c}", ls.start + k, ys.start + k) for k, c in enumerate(t.classes)]
        else:
            figures[t.name] = [(f"{t.name}: {c} vs rest", ls.start + k, ys.start) for k, c in enumerate(t.classes)]
    n_chunks = math.ceil(len(ungrouped) / per_figure)
    for i in range(n_chunks):
        name = "attributes" if n_chunks == 1 else f"attributes_{i + 1}"
        figures[name] = ungrouped[i * per_figure:(i + 1) * per_figure]
    return figures


def _panel_data(rec: RunRecord, logit_col: int, label_col: int) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 truth, score) of one panel: binary column, or one class of a multi-class slice."""
    p, y = rec.predictions["probs"][:, logit_col], rec.predictions["labels"][:, label_col]
    for t, ls, ys in zip(rec.task.targets, rec.task.logit_slices, rec.task.label_slices):
        if t.is_softmax and ys.start == label_col:
            keep = y >= 0
            return (y[keep] == logit_col - ls.start).astype(int), p[keep]
    keep = y >= 0
    return y[keep].astype(int), p[keep]


def _grid(n: int, ncols: int = 4) -> tuple[plt.Figure, np.ndarray]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    width = max(PANEL_INCHES * ncols, 2 * PANEL_INCHES)     # room for the title of a one-panel figure
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, PANEL_INCHES * nrows + 0.4), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def roc_figure(runs: Sequence[RunRecord], panels: Sequence[tuple[str, int, int]], title: str) -> plt.Figure:
    fig, axes = _grid(len(panels))
    for ax, (name, lc, yc) in zip(axes.flat, panels):
        for rec in runs:
            y, p = _panel_data(rec, lc, yc)
            if len(np.unique(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, lw=1.2, label=f"{rec.method} ({roc_auc_score(y, p):.3f})")
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set(title=name, xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        _finish_panel(ax, "lower right", "AUROC")
    return _finish_figure(fig, title)


def _finish_panel(ax: plt.Axes, legend_loc: str, legend_title: str | None = None) -> None:
    ax.title.set_fontsize(9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc=legend_loc, title=legend_title, title_fontsize=6)
    else:
        ax.text(0.5, 0.5, "no curve: a single class\nin the labels", ha="center", va="center", fontsize=8, color="grey")


def _finish_figure(fig: plt.Figure, title: str) -> plt.Figure:
    fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = CALIBRATION_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean confidence, observed frequency, count) per non-empty equal-width bin and the ECE
    (bins ``(k/n, (k+1)/n]`` as torchmetrics' calibration error)."""
    idx = np.clip(np.ceil(p * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    conf = np.bincount(idx, weights=p, minlength=n_bins)
    freq = np.bincount(idx, weights=y.astype(float), minlength=n_bins)
    ok = count > 0
    conf, freq, count = conf[ok] / count[ok], freq[ok] / count[ok], count[ok]
    ece = float((count * np.abs(freq - conf)).sum() / count.sum()) if count.sum() else math.nan
    return conf, freq, count, ece


def reliability_panels(rec: RunRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Panel -> (0/1 outcome, probability): binary outputs pooled, and each multi-class target's top label."""
    task, p, y = rec.task, rec.predictions["probs"], rec.predictions["labels"]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    lc, yc = task.binary_columns()
    if lc:
        pb, yb = p[:, lc].ravel(), y[:, yc].ravel()
        keep = yb >= 0
        out["binary outputs (pooled)"] = (yb[keep], pb[keep])
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        if t.is_softmax:
            keep = y[:, ys.start] >= 0
            probs = p[keep, ls]
            out[f"{t.name} (top label)"] = ((probs.argmax(1) == y[keep, ys.start]).astype(int), probs.max(1))
    return out


def reliability_figure(runs: Sequence[RunRecord], title: str, n_bins: int = CALIBRATION_BINS) -> plt.Figure | None:
    names = list(dict.fromkeys(k for rec in runs for k in reliability_panels(rec)))
    if not names:
        return None
    fig, axes = _grid(len(names), ncols=3)
    for ax, name in zip(axes.flat, names):
        for rec in runs:
            panel = reliability_panels(rec).get(name)
            if panel is None or not len(panel[0]):
                continue
            conf, freq, _, ece = reliability_bins(panel[0], panel[1], n_bins)
            ax.plot(conf, freq, marker="o", ms=3, lw=1.2, label=f"{rec.method} (ECE {ece:.3f})")
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        ax.set(title=name, xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
        _finish_panel(ax, "upper left")
    return _finish_figure(fig, title)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_figures(results_dir: str | Path, out_dir: str | Path, split: str = "test", per_figure: int = PER_FIGURE,
                  n_bins: int = CALIBRATION_BINS) -> list[Path]:
    """Every ROC and reliability figure of the finished runs under ``results_dir``."""
    out_dir = Path(out_dir)
    written = []
    for dataset, runs in first_seed_runs(results_dir, split).items():
        seeds = ", ".join(f"{r.method} s{r.seed}" for r in runs)
        for name, panels in roc_panels(runs[0].task, per_figure).items():
            fig = roc_figure(runs, panels, f"{dataset} ({split}): ROC, {name} — {seeds}")
            written.append(_save(fig, out_dir / f"roc_{slug(dataset)}_{slug(name)}.png"))
        fig = reliability_figure(runs, f"{dataset} ({split}): reliability — {seeds}", n_bins)
        if fig is not None:
            written.append(_save(fig, out_dir / f"reliability_{slug(dataset)}.png"))
    return written
