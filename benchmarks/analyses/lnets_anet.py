"""Analyses of LNets+ANet (Liu et al., ICCV 2015): ``anet-attribute-groups`` (k-means over ANet's
attribute layer, sec. 5.1, Fig. 10), ``lnet-localization`` (the face-localisation recall curve
over IoU thresholds, Fig. 7 (a)), from a run's checkpoint or saved predictions, and
``wild-localization`` (LNet_s's face boxes against OpenCV's Haar cascade and dlib's HOG detector on
the same test images, :mod:`facebench.benchmarks.analyses.reference_detectors`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from facebench.benchmarks.analyses import register_analysis
from facebench.lightning_modules.lnets_anet import box_iou_xywh


def attribute_groups(weight: np.ndarray, names: Sequence[str], n_groups: int, seed: int = 0,
                     normalize: bool = True) -> pd.DataFrame:
    """k-means over the attribute vectors of ANet's attribute layer (sec. 5.1, Fig. 10): one row per
    attribute with its group and its distance to the group centre."""
    from sklearn.cluster import KMeans

    vectors = np.asarray(weight, dtype=np.float64)
    if normalize:
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    k = min(int(n_groups), len(names))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    dist = np.linalg.norm(vectors - km.cluster_centers_[km.labels_], axis=1)
    out = pd.DataFrame({"attribute": list(names), "group": km.labels_ + 1, "distance_to_centre": dist})
    return out.sort_values(["group", "distance_to_centre"]).reset_index(drop=True)


def _plot_groups(weight: np.ndarray, groups: pd.DataFrame, names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    vectors = weight / np.clip(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12, None)
    xy = PCA(n_components=2).fit_transform(vectors) if len(names) > 2 else np.zeros((len(names), 2))
    group_of = dict(zip(groups["attribute"], groups["group"]))
    order = list(groups["attribute"])
    pos = [list(names).index(a) for a in order]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(17, 8))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        g = group_of[name]
        ax1.scatter(xy[i, 0], xy[i, 1], color=cmap((g - 1) % 10), s=30)
        ax1.annotate(name, xy[i], fontsize=7, color=cmap((g - 1) % 10))
    ax1.set_title("ANet attribute vectors (PCA), coloured by k-means group")
    sim = vectors[pos] @ vectors[pos].T
    im = ax2.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax2.set_xticks(range(len(order)), order, rotation=90, fontsize=6)
    ax2.set_yticks(range(len(order)), [f"{group_of[a]}: {a}" for a in order], fontsize=6)
    ax2.set_title("cosine similarity of attribute vectors, grouped")
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register_analysis("anet-attribute-groups")
def anet_attribute_groups_command(argv: list[str]) -> int:
    """``facebench analyze anet-attribute-groups CHECKPOINT [--groups 6] [--out DIR]``: k-means over
    the attribute layer of an ``anet`` / ``lnets_anet`` checkpoint (Fig. 10) -> CSV + PNG."""
    ap = argparse.ArgumentParser(prog="facebench analyze anet-attribute-groups",
                                 description="Group attributes by k-means over ANet's attribute weight vectors (Fig. 10).")
    ap.add_argument("checkpoint", type=Path, help="checkpoint of an anet or lnets_anet run (checkpoints/best.ckpt)")
    ap.add_argument("--groups", type=int, default=6, help="number of k-means groups (Fig. 10 shows 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="cluster the raw vectors instead of unit-length ones")
    ap.add_argument("--out", type=Path, help="output folder (default: <run>/analysis)")
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint file is missing")
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt)
    if "attribute_head.weight" not in state:
        raise ValueError(f"{args.checkpoint}: no ANet attribute layer (attribute_head.weight); give a checkpoint of the "
                         f"anet or lnets_anet stage")
    task = (ckpt.get("hyper_parameters") or {}).get("task")
    weight = state["attribute_head.weight"].float().numpy()
    names = [t["name"] for t in task["targets"]] if task else [f"attribute_{i}" for i in range(len(weight))]
    groups = attribute_groups(weight, names, args.groups, args.seed, normalize=not args.raw)
    out = args.out or args.checkpoint.resolve().parent.parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    groups.to_csv(out / "anet_attribute_groups.csv", index=False)
    _plot_groups(weight, groups, names, out / "anet_attribute_groups.png")
    for g, rows in groups.groupby("group"):
        print(f"group {g}: {', '.join(rows['attribute'])}")
    print(f"wrote {out / 'anet_attribute_groups.csv'} and {out / 'anet_attribute_groups.png'}")
    return 0


@register_analysis("lnet-localization")
def lnet_localization_command(argv: list[str]) -> int:
    """``facebench analyze lnet-localization RUN_DIR [--split test]``: the face-localisation recall
    curve over IoU thresholds (Fig. 7 (a)) from a run's saved boxes -> CSV + PNG."""
    ap = argparse.ArgumentParser(prog="facebench analyze lnet-localization",
                                 description="Recall of the LNets' face boxes over IoU thresholds (Fig. 7 (a)).")
    ap.add_argument("run_dirs", type=Path, nargs="+", help="run folders of lnet_s / anet / lnets_anet runs on data with boxes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, help="output folder (default: the first run's analysis/)")
    args = ap.parse_args(argv)
    thresholds = np.round(np.linspace(0.05, 0.95, 19), 2)
    curves = []
    for run in args.run_dirs:
        path = run / f"predictions_{args.split}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved predictions for split {args.split!r}")
        with np.load(path) as z:
            if "face_box" not in z.files or "true_box" not in z.files:
                raise ValueError(f"{path}: no face_box / true_box arrays (a run of lnet_s or later on data with boxes)")
            iou = box_iou_xywh(z["face_box"], z["true_box"])
        curves.append(pd.DataFrame({"run": run.name, "iou_threshold": thresholds,
                                    "recall": [(iou >= t).mean() for t in thresholds]}))
    table = pd.concat(curves, ignore_index=True)
    out = args.out or args.run_dirs[0] / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "lnet_localization_recall.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for run, rows in table.groupby("run", sort=False):
        ax.plot(rows["iou_threshold"], rows["recall"], marker="o", ms=3, label=run)
    ax.set_xlabel("overlap ratio (IoU)")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "lnet_localization_recall.png", dpi=120)
    plt.close(fig)
    at = table[np.isclose(table["iou_threshold"], 0.5)]
    for _, r in at.iterrows():
        print(f"{r['run']}: recall@iou0.5 = {r['recall']:.4f}")
    print(f"wrote {out / 'lnet_localization_recall.csv'} and {out / 'lnet_localization_recall.png'}")
    return 0


def _saved_boxes(run_dir: Path, split: str) -> dict[str, np.ndarray]:
    """A run's saved boxes of ``split`` (``predictions_<split>.npz``: face_box, true_box, ids, ...)."""
    path = run_dir / f"predictions_{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved predictions for split {split!r}")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    if "face_box" not in arrays or "true_box" not in arrays:
        raise ValueError(f"{path}: no face_box / true_box arrays (a run of lnet_s or later on data with boxes)")
    return arrays


def _images_of(run_dir: Path, boxes: dict[str, dict[str, np.ndarray]]) -> dict[str, list[Path]]:
    """Per split, the image files the run computed its boxes on: the ``ids`` are the source images,
    and on ``wild`` data the run read their composited canvases, so the files come from the run's own
    dataset (:func:`facebench.benchmarks.records.dataset_images`, set up once)."""
    import yaml

    from facebench.benchmarks.records import dataset_images

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: the run's config is missing (it names the dataset the boxes were computed on)")
    return dataset_images(yaml.safe_load(config.read_text()),
                          {split: [str(i) for i in arrays["ids"]] for split, arrays in boxes.items()})


def wild_localization(run_dir: Path, split: str = "test", calibrate_on: str = "val", hog_upsample: int = 2,
                      haar_min_neighbors: int = 3) -> pd.DataFrame:
    """One row per method (LNet_s, Haar, HOG) on ``split`` of an ``lnet_s`` (or later) run: recall
    at IoU 0.3 / 0.5 / 0.7, mean IoU, detection rate, box calibration factor and ``n``. LNet_s's
    boxes are the run's (already scaled by its own validation calibration, ``face_scale``); each
    detector's best-scoring box is scaled by the factor calibrated on ``calibrate_on``'s images.
    Boxes are compared in coordinates normalised by the image side."""
    from facebench.datamodules.image_files import load_image
    from facebench.benchmarks.analyses.reference_detectors import (calibrate_detector, detect_all, haar_detector, hog_detector,
                                                         recall_table_row, scale_detections)

    test, calib = _saved_boxes(run_dir, split), _saved_boxes(run_dir, calibrate_on)
    files = _images_of(run_dir, {split: test, calibrate_on: calib})
    test_files, calib_files = files[split], files[calibrate_on]
    scale = float(np.mean(test["face_scale"])) if "face_scale" in test else float("nan")
    rows = [{"method": "LNet_s", **recall_table_row(test["face_box"], test["true_box"]), "calibration_factor": scale}]
    test_images = [load_image(f) for f in test_files]
    calib_images = [load_image(f) for f in calib_files]
    for name, detect in (("Haar", haar_detector(min_neighbors=haar_min_neighbors)), ("HOG", hog_detector(hog_upsample))):
        factor = calibrate_detector(detect_all(detect, calib_images), calib["true_box"])
        pred = scale_detections(detect_all(detect, test_images), factor)
        rows.append({"method": name, **recall_table_row(pred, test["true_box"]), "calibration_factor": factor})
    table = pd.DataFrame(rows)
    table.insert(1, "split", split)
    return table[[c for c in table if c != "n"] + ["n"]]


@register_analysis("wild-localization")
def wild_localization_command(argv: list[str]) -> int:
    """``facebench analyze wild-localization RUN_DIR [--split test] [--calibrate-on val] [--out CSV]``:
    LNet_s's face boxes against OpenCV's Haar cascade and dlib's HOG detector on the same images
    (each detector's box scale calibrated on the validation images) -> one CSV table."""
    ap = argparse.ArgumentParser(prog="facebench analyze wild-localization",
                                 description="Face-box recall@IoU of LNet_s vs the Haar and HOG reference detectors "
                                             "on the same test images.")
    ap.add_argument("run_dir", type=Path, help="run folder of an lnet_s (or later) stage on data with face boxes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--calibrate-on", default="val", help="split whose images calibrate each detector's box scale")
    ap.add_argument("--hog-upsample", type=int, default=2, help="image doublings before dlib's HOG detector (80 px window)")
    ap.add_argument("--haar-min-neighbors", type=int, default=3)
    ap.add_argument("--out", type=Path, help="output CSV (default: <run>/analysis/wild_localization.csv)")
    args = ap.parse_args(argv)
    from facebench.core.io import write_csv

    table = wild_localization(args.run_dir, args.split, args.calibrate_on, args.hog_upsample, args.haar_min_neighbors)
    out = args.out or args.run_dir / "analysis" / "wild_localization.csv"
    write_csv(out, table)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out}")
    return 0


#: The recall / IoU columns of a wild-localization table that the seed summary compares.
LOCALIZATION_METRICS = ("recall@0.3", "recall@0.5", "recall@0.7", "mean_iou")


def wild_localization_seeds(tables: dict[int, pd.DataFrame], metrics: Sequence[str] = LOCALIZATION_METRICS) -> pd.DataFrame:
    """Several seeds' wild-localization tables (``{seed: table}``, the same test images) -> one row per
    method and metric (mean over seeds, 95% interval, per-seed values) and one per ``LNet_s - detector``
    difference, paired by seed, with its p-value and the Holm-adjusted one across all the differences
    (:mod:`facebench.benchmarks.stats`: the seed is the unit; the detectors have no seed, so their
    per-seed values repeat and only LNet_s's spread enters)."""
    from facebench.benchmarks.stats import format_per_seed, holm, seed_interval, t_over_seeds

    seeds = sorted(tables)
    by = {s: tables[s].set_index("method") for s in seeds}
    methods = list(by[seeds[0]].index)
    rows = []
    for method in methods:
        for m in metrics:
            v = np.array([by[s].at[method, m] for s in seeds], dtype=float)
            r = seed_interval(v)
            rows.append({"comparison": method, "metric": m, "seeds": len(seeds), "mean": r["mean"], "ci95": r["half"],
                         "per_seed": format_per_seed(v, 1.0, 3), "p_value": np.nan})
    for det in [m for m in methods if m != "LNet_s"]:
        for m in metrics:
            d = np.array([by[s].at["LNet_s", m] - by[s].at[det, m] for s in seeds], dtype=float)
            r = t_over_seeds(d)
            rows.append({"comparison": f"LNet_s - {det}", "metric": m, "seeds": len(seeds), "mean": float(r["mean"]),
                         "ci95": float(r["half"]), "per_seed": format_per_seed(d, 1.0, 3), "p_value": float(r["p"])})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p_value"].to_numpy())
    return out


@register_analysis("wild-localization-seeds")
def wild_localization_seeds_command(argv: list[str]) -> int:
    """``facebench analyze wild-localization-seeds TABLE_s0.csv TABLE_s1.csv ... --out CSV``: the seed
    summary and the seed-paired tests of several ``wild-localization`` tables (one per seed)."""
    ap = argparse.ArgumentParser(prog="facebench analyze wild-localization-seeds",
                                 description="Mean over seeds and seed-paired LNet_s-vs-detector tests of wild-localization "
                                             "tables.")
    ap.add_argument("tables", type=Path, nargs="+", help="wild-localization CSVs, one per seed, named ..._s<seed>.csv")
    ap.add_argument("--out", type=Path, required=True, help="output CSV")
    args = ap.parse_args(argv)
    from facebench.core.io import write_csv

    tables = {}
    for path in args.tables:
        stem = path.stem.rsplit("_s", 1)
        if len(stem) != 2 or not stem[1].isdigit():
            raise ValueError(f"{path}: expected a table named <name>_s<seed>.csv (the seed is the unit of the tests)")
        tables[int(stem[1])] = pd.read_csv(path)
    if len(tables) < 2:
        raise ValueError(f"{args.tables[0]}: one seed gives no interval and no test; give the tables of 2 or more seeds")
    table = wild_localization_seeds(tables)
    write_csv(args.out, table, float_format="%.6g")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {args.out}")
    return 0
