"""Seed-aware statistics: every interval and every test of the tables, in one place.

**The unit of replication is the training seed; the test images are nested inside it.** A result
of a method is one number per seed (a metric on the test split), and the same test images are
scored at every seed. Two sources of uncertainty go into every interval and test:

* the **seed** term, ``Var_seed / S``: the sample variance of the per-seed values (of a method, or of
  the seed-matched differences of two methods) over the ``S`` seeds -- how much retraining moves
  the result on these test images;
* the **image** term, ``Var_image / N``: how much the seed-mean would move with another sample of
  ``N`` test images, from per-image predictions. Each metric is linearised per image (its influence
  function: accuracy ``c_i - acc``, recall ``y_i (c_i - R) / P``, F1 ``(2 tp_i - F1 (y_i + yhat_i)) /
  (P + Q)``, ...), and the images x seeds table of these values (of a method, or of the difference
  of two) gives the between-image variance component: the variance over images of the per-image
  seed-mean, less the residual mean square over ``S`` (each run's own per-image noise, which the
  seed term already holds), floored at 0 -- the two-way random-effects estimate of the variance of
  a grand mean, ``(MS_seeds + MS_images - MS_residual) / (N S)``.

The test of a difference (and the interval of a value) is then **Student's t with S - 1 degrees of
freedom** on ``mean / sqrt(Var_seed / S + Var_image / N)``: a paired t-test over seeds whose
variance also carries the image term. The degrees of freedom stay ``S - 1`` although the image
term rests on many images: conservative where that term dominates, but a Welch-Satterthwaite
correction made the test reject up to 8% of null attributes (and 39% of null families after Holm)
in the calibration below, because a 3-seed variance is often tiny by chance. Where only per-seed metrics exist (the committed results
keep no per-image predictions) the image term is absent, the ``variance`` column says ``seeds``,
and the test asks whether the difference on these test images exceeds what retraining gives. A
comparison with a single common seed is not tested (``untested: 1 seed``), nor one whose per-seed
differences do not vary at all without an image term (deterministic methods, ``untested: no
variation over seeds``); neither is ever called significant. p-values of the per-attribute tests of
one pair of methods are Holm-adjusted across attributes; the averages over attributes are tested on
their own. Every test row carries the per-seed differences beside the result.

Why not a bootstrap: with 3 seeds a resampling of seeds has only 10 distinct outcomes and no small-
sample correction, and it rejects far too often; ``tests/test_stats_calibration.py`` simulates
null comparisons (a seed effect, a method-by-image effect and per-image noise; 3 seeds, 660 images,
40 attributes) and checks that this procedure's false-positive rate stays at or below 0.07 at
alpha = 0.05, per attribute, after Holm and for the mean, and reports its power.

Also here: the rank table (mean rank over attributes, significant wins / losses), the seed table and
the efficiency table.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from facebench.benchmarks.attribute_support import AVERAGE, MIN_POSITIVES, average_sets, counts_for, row_labels, support_table

ALPHA = 0.05
TESTED = "paired t over seeds"
UNTESTED_ONE_SEED = "untested: 1 seed"
UNTESTED_NO_VARIATION = "untested: no variation over seeds"
#: Relative resolution of the committed numbers (``%.6g``): per-seed spreads below it are rounding.
RESOLUTION = 1e-5


# ------------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------------
def t_over_seeds(per_seed: np.ndarray, image_var: np.ndarray | float | None = None, tolerance: np.ndarray | float = 0.0,
                 alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """The module's test, vectorised: ``per_seed[..., S]`` are per-seed values (or seed-matched
    differences), ``image_var[...]`` the image term of their seed-mean (NaN or ``None``: absent).
    Returns arrays ``mean, se, t, df, p, half`` (half-width of the ``1 - alpha`` interval), ``image``
    (the image term was used) and ``tested``. A seed spread at or below ``tolerance`` counts as zero."""
    x = np.asarray(per_seed, dtype=float)
    s = x.shape[-1]
    mean = x.mean(axis=-1)
    if s > 1:
        sd = x.std(axis=-1, ddof=1)
        sd = np.where(sd <= np.asarray(tolerance, dtype=float), 0.0, sd)
        var_seed = sd ** 2 / s
    else:
        var_seed = np.full(mean.shape, np.nan)
    iv = np.full(mean.shape, np.nan) if image_var is None else np.broadcast_to(np.asarray(image_var, dtype=float), mean.shape)
    image = np.isfinite(iv)
    var = var_seed + np.where(image, iv, 0.0)
    se = np.sqrt(var)
    df = np.full(mean.shape, float(s - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / se
        p = 2 * sps.t.sf(np.abs(t), np.maximum(df, 1))
    zero = se == 0
    p = np.where(zero, np.where(np.abs(mean) <= np.asarray(tolerance, dtype=float), 1.0, np.where(image, 0.0, np.nan)), p)
    tested = (s > 1) & ~(zero & ~image & (np.abs(mean) > np.asarray(tolerance, dtype=float)))
    p = np.where(tested, p, np.nan)
    half = np.where(tested, sps.t.ppf(1 - alpha / 2, np.maximum(df, 1)) * se, np.nan)
    return {"mean": mean, "se": se, "t": np.where(tested, t, np.nan), "df": df, "p": p, "half": half,
            "image": image & tested, "tested": np.broadcast_to(tested, mean.shape)}


def image_variance(delta: np.ndarray) -> np.ndarray:
    """Image term of a seed-mean of per-image values ``delta[N, S, ...]`` (per-image influence, one
    slice per seed; ``S = 1`` for values already averaged over seeds): the between-image variance
    component over ``N``, ``max(0, var_i(mean_s delta) - MS_E / S) / N``, where ``MS_E`` is the
    residual mean square of the images x seeds table -- the per-run noise, which the seed term
    already counts (two-way random effects: Var(grand mean) = MS_seeds/(NS) + MS_images/(NS) -
    MS_E/(NS)). NaN where a column has NaN."""
    d = np.asarray(delta, dtype=float)
    if d.ndim < 2:
        raise ValueError(f"image_variance: expected per-image values [N, S, ...], got shape {d.shape}")
    n, s = d.shape[:2]
    if n < 2:
        return np.full(d.shape[2:], np.nan)
    per_image = d.mean(axis=1)
    between = per_image.var(axis=0, ddof=1)
    if s > 1:
        resid = d - per_image[:, None] - d.mean(axis=0, keepdims=True) + d.mean(axis=(0, 1), keepdims=True)
        ms_e = (resid ** 2).sum(axis=(0, 1)) / ((n - 1) * (s - 1))
        between = np.maximum(between - ms_e / s, 0.0)
    return between / n


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN kept, and not counted)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.maximum.accumulate((m - np.arange(m)) * q[order])
    res = np.empty(m)
    res[order] = np.minimum(adj, 1.0)
    out[ok] = res
    return out


def seed_interval(values: Sequence[float] | pd.Series, image_var: float | None = None, alpha: float = ALPHA) -> dict[str, float]:
    """Mean over seeds and its interval (the module's procedure): ``mean, std, half, ci95_low,
    ci95_high, seeds`` (no interval for one seed)."""
    v = pd.Series(values, dtype=float).dropna().to_numpy()
    n = len(v)
    if n == 0:
        return {"mean": np.nan, "std": np.nan, "half": np.nan, "ci95_low": np.nan, "ci95_high": np.nan, "seeds": 0}
    r = t_over_seeds(v, image_var, tolerance=RESOLUTION * float(np.abs(v).max()), alpha=alpha)
    half = float(r["half"]) if n > 1 else np.nan
    if n > 1 and np.isnan(half):      # no variation and no image term: the seeds agree
        half = 0.0
    mean = float(r["mean"])
    return {"mean": mean, "std": float(v.std(ddof=1)) if n > 1 else np.nan, "half": half,
            "ci95_low": mean - half, "ci95_high": mean + half, "seeds": n}


def seed_summary(values: pd.Series, image_var: float | None = None) -> pd.Series:
    """:func:`seed_interval` as a Series (mean, std, ci95_low, ci95_high, seeds)."""
    r = seed_interval(values, image_var)
    return pd.Series({k: r[k] for k in ("mean", "std", "ci95_low", "ci95_high", "seeds")})


def format_per_seed(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"+7.02 / +7.73 / -1.97"``: per-seed values (differences in points by default)."""
    return " / ".join("nan" if not np.isfinite(v) else f"{scale * v:+.{digits}f}" for v in values)


def outcome_label(result: dict[str, np.ndarray], seeds: int, i: Any = ()) -> str:
    if seeds < 2:
        return UNTESTED_ONE_SEED
    return TESTED if bool(result["tested"][i]) else UNTESTED_NO_VARIATION


# ------------------------------------------------------------------------------------------------
# per-image predictions and the metrics' influence functions (the image term)
# ------------------------------------------------------------------------------------------------
@dataclass
class RunPredictions:
    method: str
    dataset: str
    seed: int
    ids: np.ndarray
    correct: np.ndarray        # bool [N, A] (binary columns at threshold 0.5; -1 labels -> masked)
    valid: np.ndarray          # bool [N, A]
    attributes: list[str]
    predicted: np.ndarray | None = None    # int [N, A]: the hard decision of binary columns (0 / 1), -1 elsewhere


def predictions_from_record(rec: Any) -> RunPredictions | None:
    """:class:`RunPredictions` of a :class:`facebench.benchmarks.records.RunRecord` (a run folder's or
    a committed record's predictions with their labels): one column per binary or multi-class target
    and per multi-label class; ``None`` without probabilities in the task's layout."""
    import torch

    task, p = rec.task, rec.predictions
    if "probs" not in p or "labels" not in p or p["probs"].shape[1] != task.n_logits:
        return None
    pred = task.predictions(torch.as_tensor(p["probs"])).numpy()
    labels = p["labels"]
    cols, names, binary = [], [], []
    for t, ys in zip(task.targets, task.label_slices):
        if t.kind == "multilabel":
            cols += list(range(ys.start, ys.stop))
            names += [f"{t.name}/{c}" for c in t.classes]
            binary += [True] * (ys.stop - ys.start)
        else:
            cols.append(ys.start)
            names.append(t.name)
            binary.append(t.kind == "binary")
    valid = labels[:, cols] >= 0
    correct = (pred[:, cols] == labels[:, cols]) & valid
    predicted = np.where(np.array(binary)[None, :], pred[:, cols], -1).astype(np.int64)
    return RunPredictions(rec.method, rec.dataset, int(rec.seed), np.asarray(p["ids"]).astype(str), correct, valid,
                          names, predicted)


def load_run_predictions(run_dir: Path, split: str = "test") -> RunPredictions | None:
    """:func:`predictions_from_record` of a finished run folder (``None`` when the split was not saved)."""
    from facebench.benchmarks.records import load_run_record

    rec = load_run_record(run_dir, split)
    return None if rec is None else predictions_from_record(rec)


def results_predictions(results_dir: Path, split: str = "test") -> list[RunPredictions]:
    """Per-image predictions of every run of a results folder: its local run folders, then the
    committed compact predictions (``records/``, labels read from the dataset) of the runs that have
    no local folder (:func:`facebench.benchmarks.records.run_records`). Empty when neither is there
    (the image term is then absent)."""
    from facebench.benchmarks.records import run_records

    return [r for r in map(predictions_from_record, run_records(results_dir, split)) if r is not None]


def influence(run: RunPredictions, metric: str) -> np.ndarray | None:
    """Per-image influence ``psi[N, A]`` of ``metric`` per column (``metric ~ its value + mean_i
    psi_i``; 0 on unlabelled images, NaN columns where it is undefined), or ``None`` when the metric
    has no influence function here (operating points, rankings) or needs hard decisions the run lacks."""
    return influence_arrays(metric, run.correct, run.valid, run.predicted)


def influence_arrays(metric: str, correct: np.ndarray, valid: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray | None:
    """:func:`influence` on arrays ``[N, ...]`` (images on axis 0, any columns after it)."""
    c = np.asarray(correct, dtype=float)
    v = np.asarray(valid, dtype=bool)
    n = c.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "accuracy":
            nv = v.sum(0)
            acc = (c * v).sum(0) / nv
            return np.where(v, n / nv * (c - acc), 0.0)
        if metric not in ("recall", "precision", "f1", "balanced_accuracy") or predicted is None:
            return None
        pr = np.asarray(predicted)
        binary = np.isin(pr, (0, 1)).all(axis=0)
        yhat = np.where(v, pr == 1, False).astype(float)
        y = np.where(v, np.where(c > 0, pr == 1, pr != 1), False).astype(float)
        if metric == "recall":
            pos = y.sum(0)
            rec = (c * y).sum(0) / pos
            out = n / pos * y * (c - rec)
        elif metric == "precision":
            q = yhat.sum(0)
            prec = (c * yhat).sum(0) / q
            out = n / q * yhat * (c - prec)
        elif metric == "f1":
            tp = y * yhat
            denom = (y + yhat).sum(0)
            f1 = 2 * tp.sum(0) / denom
            out = n / denom * (2 * tp - f1 * (y + yhat))
        else:
            neg = v * (1 - y)
            pos, nn = y.sum(0), neg.sum(0)
            tpr, tnr = (c * y).sum(0) / pos, (c * neg).sum(0) / nn
            out = 0.5 * (n / pos * y * (c - tpr) + n / nn * neg * (c - tnr))
    return np.where(binary & np.isfinite(out).all(axis=0), out, np.nan)


def common_rows(runs: Sequence[RunPredictions]) -> list[np.ndarray]:
    """Per run, the indices of the images every run has (aligned by sample id, sorted by id)."""
    common = runs[0].ids
    for r in runs[1:]:
        common = np.intersect1d(common, r.ids)
    out = []
    for r in runs:
        order = np.argsort(r.ids, kind="stable")
        out.append(order[np.searchsorted(r.ids[order], common)])
    return out


def seed_influence(runs: Sequence[RunPredictions], rows: Sequence[str], metric: str,
                   against: Sequence[RunPredictions] | None = None) -> np.ndarray | None:
    """``delta[N, S, J]``: per test image and seed (``runs``, one per seed), the influence of
    ``metric`` on each of ``rows`` (minus that of the seed-matched ``against`` run, for a
    difference), on the images every run has; the input of :func:`image_variance`. ``None`` when a
    run is missing, lacks a row, or the metric has no influence function."""
    allruns = list(runs) + list(against or [])
    if not allruns or any(r is None for r in allruns) or len({r.dataset for r in allruns}) != 1:
        return None
    index = common_rows(allruns)
    if len(index[0]) < 2:
        return None
    parts = []
    for r, idx in zip(allruns, index):
        pos = {a: j for j, a in enumerate(r.attributes)}
        if any(x not in pos for x in rows):
            return None
        psi = influence(r, metric)
        if psi is None:
            return None
        parts.append(psi[idx][:, [pos[x] for x in rows]])
    k = len(runs)
    out = np.stack(parts[:k], axis=1)
    if against:
        out = out - np.stack(parts[k:], axis=1)
    return out


# ------------------------------------------------------------------------------------------------
# method against method, per attribute and on the averages
# ------------------------------------------------------------------------------------------------
COMPARISON_COLUMNS = ["dataset", "method_a", "method_b", "attribute", "metric", "positives", "negatives", "seeds",
                      "value_a", "value_b", "difference", "per_seed_differences", "ci95_low", "ci95_high", "t", "df",
                      "p_value", "p_holm", "significant", "winner", "test", "variance"]


def metric_values(board: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """Rows (dataset, method, seed, row, value) of the finite values of ``metric`` on ``split``
    (``row``: the attribute, or ``attribute/class``)."""
    if metric not in board.columns:
        return pd.DataFrame(columns=["dataset", "method", "seed", "row", "value"])
    b = board[(board["split"] == split) & board[metric].notna()]
    return pd.DataFrame({"dataset": b["dataset"], "method": b["method"], "seed": b["seed"].astype(int),
                         "row": row_labels(b["attribute"], b["class"] if "class" in b else pd.Series("", index=b.index)),
                         "value": b[metric].astype(float)})


def compare_pair(values: pd.DataFrame, dataset: str, ma: str, mb: str, metric: str, support: pd.DataFrame,
                 runs: dict[tuple[str, str, int], RunPredictions], min_positives: int = MIN_POSITIVES,
                 alpha: float = ALPHA) -> list[dict[str, Any]]:
    """Rows of :data:`COMPARISON_COLUMNS` for ``ma`` minus ``mb`` on one dataset: one per attribute
    (Holm across them), then ``Average`` and the powered / label-consistent averages."""
    v = values[values["dataset"] == dataset]
    wa = v[v["method"] == ma].pivot_table(index="row", columns="seed", values="value", aggfunc="first", sort=False)
    wb = v[v["method"] == mb].pivot_table(index="row", columns="seed", values="value", aggfunc="first", sort=False)
    seeds = sorted(set(wa.columns) & set(wb.columns))
    rows = [r for r in dict.fromkeys(v["row"]) if r in wa.index and r in wb.index]
    if not seeds or not rows:
        return []
    a, b = wa.loc[rows, seeds], wb.loc[rows, seeds]
    rows = [r for r in rows if a.loc[r].notna().all() and b.loc[r].notna().all()]
    if not rows:
        return []
    A, B = a.loc[rows].to_numpy(float), b.loc[rows].to_numpy(float)
    psi = None
    if len(seeds) > 1:
        ra = [runs.get((dataset, ma, s)) for s in seeds]
        rb = [runs.get((dataset, mb, s)) for s in seeds]
        psi = seed_influence(ra, rows, metric, against=rb)
    counts = counts_for(support, dataset, rows)
    out = []

    def emit(label: str, xa: np.ndarray, xb: np.ndarray, iv: float | None, pos: Any, neg: Any) -> dict[str, Any]:
        d = xa - xb
        tol = RESOLUTION * max(float(np.abs(xa).max()), float(np.abs(xb).max()), 1e-12)
        r = t_over_seeds(d, iv, tolerance=tol, alpha=alpha)
        mean, half, p = float(r["mean"]), float(r["half"]), float(r["p"])
        return {"dataset": dataset, "method_a": ma, "method_b": mb, "attribute": label, "metric": metric,
                "positives": pos, "negatives": neg, "seeds": len(seeds), "value_a": float(xa.mean()),
                "value_b": float(xb.mean()), "difference": mean, "per_seed_differences": format_per_seed(d),
                "ci95_low": mean - half, "ci95_high": mean + half, "t": float(r["t"]), "df": float(r["df"]),
                "p_value": p, "p_holm": np.nan, "significant": False, "winner": "", "test": outcome_label(r, len(seeds)),
                "variance": ("seeds + images" if bool(r["image"]) else "seeds") if bool(r["tested"]) else ""}

    iv_rows = image_variance(psi) if psi is not None else np.full(len(rows), np.nan)
    per_attr = [emit(row, A[j], B[j], iv_rows[j], counts.at[row, "positives"], counts.at[row, "negatives"])
                for j, row in enumerate(rows)]
    adjusted = holm(np.array([r["p_value"] for r in per_attr]))
    for r, q in zip(per_attr, adjusted):
        r["p_holm"] = q
        r["significant"] = bool(q < alpha)
    sets = {AVERAGE: rows, **average_sets(support, dataset, rows, min_positives)} if len(rows) > 1 else {}
    averages = []
    for label, members in sets.items():
        idx = [rows.index(m) for m in members]
        iv = image_variance(psi[:, :, idx].mean(axis=2)[:, :, None])[0] if psi is not None else None
        r = emit(label, A[idx].mean(0), B[idx].mean(0), iv, np.nan, np.nan)
        r["significant"] = bool(r["p_value"] < alpha)
        averages.append(r)
    for r in per_attr + averages:
        if r["significant"]:
            r["winner"] = ma if r["difference"] > 0 else mb
    return per_attr + averages


def method_comparisons(board: pd.DataFrame, runs: Sequence[RunPredictions] | None = None, metric: str = "accuracy",
                       split: str = "test", pairs: Sequence[tuple[str, str]] | None = None,
                       min_positives: int = MIN_POSITIVES, alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair of methods per dataset (or the given ``(method_a, method_b)`` pairs), per attribute
    and on the averages, on the seed-matched runs of ``board`` (the leaderboard: one row per method,
    dataset, split, seed, attribute, class), with the image term where ``runs`` has the predictions
    of every run of a pair (module docstring). ``difference`` is ``method_a`` minus ``method_b``."""
    values = metric_values(board, metric, split)
    if values.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    by_run = {(r.dataset, r.method, int(r.seed)): r for r in runs or []}
    support = support_table(board, runs, split)
    out: list[dict[str, Any]] = []
    for dataset in sorted(values["dataset"].unique()):
        methods = sorted(values.loc[values["dataset"] == dataset, "method"].unique())
        todo = [p for p in pairs if p[0] in methods and p[1] in methods] if pairs is not None \
            else list(itertools.combinations(methods, 2))
        for ma, mb in todo:
            out += compare_pair(values, dataset, ma, mb, metric, support, by_run, min_positives, alpha)
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def board_from_predictions(runs: Sequence[RunPredictions], split: str = "test") -> pd.DataFrame:
    """A leaderboard (accuracy per column, seed and run) computed from per-image predictions."""
    rows = []
    for r in runs:
        n = r.valid.sum(0)
        acc = np.where(n > 0, (r.correct & r.valid).sum(0) / np.maximum(n, 1), np.nan)
        for name, value in zip(r.attributes, acc):
            attribute, _, cls = name.partition("/")
            rows.append({"method": r.method, "dataset": r.dataset, "split": split, "seed": int(r.seed),
                         "attribute": attribute, "class": cls, "accuracy": float(value)})
    return pd.DataFrame(rows)


def paired_comparisons(runs: list[RunPredictions], board: pd.DataFrame | None = None, split: str = "test") -> pd.DataFrame:
    """:func:`method_comparisons` of accuracy, from the leaderboard ``board`` (default: computed from
    the ``runs``' predictions), with the image term from ``runs``."""
    board = board_from_predictions(runs, split) if board is None else board
    return method_comparisons(board, runs, "accuracy", split)


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def efficiency_table(board: pd.DataFrame) -> pd.DataFrame:
    """Cost per (dataset, method), mean over seeds: parameters, FLOPs per image, training wall time,
    training images per second."""
    cols = [c for c in ("params", "trainable_params", "flops_per_image", "train_time_s", "train_images_per_s",
                        "wall_time_s", "epochs") if c in board.columns]
    if not cols:
        return pd.DataFrame()
    per_run = board.drop_duplicates(["dataset", "method", "seed"])
    return per_run.groupby(["dataset", "method"])[cols].mean().reset_index()


def seed_table(board: pd.DataFrame, metrics: Sequence[str] = ("accuracy", "balanced_accuracy", "auroc"),
               split: str = "test") -> pd.DataFrame:
    """Across seeds, per (dataset, method, attribute, metric): mean, std and 95% interval (seeds
    only: the leaderboard has no per-image term); the attribute ``mean`` is the per-seed mean over
    attributes."""
    b = board[board["split"] == split]
    rows = []
    for metric in [m for m in metrics if m in b.columns]:
        bm = b[b[metric].notna()]
        per_attr = bm.groupby(["dataset", "method", "attribute", "class", "seed"], dropna=False)[metric].mean().reset_index()
        overall = bm.groupby(["dataset", "method", "seed"])[metric].mean().reset_index().assign(attribute="mean", **{"class": ""})
        for keys, grp in pd.concat([per_attr, overall]).groupby(["dataset", "method", "attribute", "class"], dropna=False):
            rows.append({**dict(zip(["dataset", "method", "attribute", "class"], keys)), "metric": metric,
                         **seed_summary(grp[metric]).to_dict()})
    return pd.DataFrame(rows)


def rank_table(board: pd.DataFrame, comparisons: pd.DataFrame | None = None, metric: str = "accuracy",
               split: str = "test") -> pd.DataFrame:
    """Mean rank over attributes (1 = best), attributes won (best), and significant pairwise wins /
    losses per attribute (the seed-aware test, Holm-adjusted; averages not counted)."""
    if metric not in board.columns:
        return pd.DataFrame()
    b = board[(board["split"] == split) & board[metric].notna()]
    if b.empty:
        return pd.DataFrame()
    b = b.assign(attribute=row_labels(b["attribute"], b["class"] if "class" in b else pd.Series("", index=b.index)))
    means = b.groupby(["dataset", "attribute", "method"])[metric].mean().reset_index()
    means["rank"] = means.groupby(["dataset", "attribute"])[metric].rank(ascending=False, method="average")
    out = means.groupby(["dataset", "method"]).agg(mean_rank=("rank", "mean"), attributes=("rank", "size"),
                                                   best_on=("rank", lambda r: int((r == 1).sum()))).reset_index()
    out["wins"] = 0
    out["losses"] = 0
    if comparisons is not None and not comparisons.empty:
        sig = comparisons[(comparisons["test"] == TESTED) & comparisons["significant"].astype(bool)
                          & ~comparisons["attribute"].astype(str).str.startswith(AVERAGE)]
        for (dataset, method), grp in out.groupby(["dataset", "method"]):
            s = sig[sig["dataset"] == dataset]
            involved = s[(s["method_a"] == method) | (s["method_b"] == method)]
            wins = int((involved["winner"] == method).sum())
            out.loc[grp.index, "wins"] = wins
            out.loc[grp.index, "losses"] = int(len(involved) - wins)
    return out.sort_values(["dataset", "mean_rank"])
