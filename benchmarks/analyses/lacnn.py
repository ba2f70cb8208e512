"""Analyses of the Face Attributes Dataset (FAD) paper (``papers/lacnn_landmark_augmented_cnn_FAD.txt``)
on runs of ``lacnn`` / ``lacnn_baseline`` (:mod:`facebench.lightning_modules.lacnn`):

* ``lacnn-first-layer`` (:func:`first_layer_analysis`): Figure 5, the rectified conv1 responses
  of one or more checkpoints to one image (or the conv1 kernels), with LACNN's landmark channel;
* ``lacnn-compare`` (:func:`compare_traits`): Table 3, per trait the baseline's and LACNN's
  accuracy, the per-seed differences and whether the difference is significant under the
  seed-aware test of :mod:`facebench.benchmarks.stats` (from the leaderboard; per-image predictions
  add the image term).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from facebench.benchmarks.analyses import register_analysis
from facebench.benchmarks.report import collect_metrics
from facebench.core.io import write_csv
from facebench.datamodules.celeba import LANDMARK_COLUMNS
from facebench.datamodules.formats import read_table_file
from facebench.datamodules.image_files import load_image
from facebench.datamodules.transforms import FaceTransform, TransformConfig
from facebench.lightning_modules.lacnn import LACNN, LACNNBaseline, landmark_channel


# ------------------------------------------------------------------------------------------------
# Figure 5: first-layer responses
# ------------------------------------------------------------------------------------------------
def load_lacnn_checkpoint(path: str | Path) -> LACNNBaseline:
    """An ``lacnn`` / ``lacnn_baseline`` model from a Lightning checkpoint of a run (eval mode). The
    class follows the hyper-parameters: only ``lacnn`` has ``landmark_encoding``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint of an lacnn / lacnn_baseline run")
    hp = dict(ckpt["hyper_parameters"])
    cls = LACNN if "landmark_encoding" in hp else LACNNBaseline
    hp.pop("init_checkpoint", None)
    model = cls(**hp)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def _image_landmarks(image_path: Path, landmarks_file: Path | None) -> np.ndarray | None:
    """The image's row of a CelebA-format landmark list (``list_landmarks_align_celeba.txt``); by
    default the one beside the image's folder, when it exists."""
    if landmarks_file is None:
        guess = image_path.resolve().parent.parent / "list_landmarks_align_celeba.txt"
        if not guess.is_file():
            return None
        landmarks_file = guess
    _, files, values = read_table_file(landmarks_file, len(LANDMARK_COLUMNS), count_line=True, header=LANDMARK_COLUMNS,
                                       what="landmark coordinates")
    if image_path.name not in files:
        raise ValueError(f"{landmarks_file}: no landmarks for {image_path.name}")
    return values[files.index(image_path.name)].reshape(-1, 2).astype(np.float32)


def _tile(maps: np.ndarray, columns: int = 10, pad: int = 1) -> np.ndarray:
    """``[N, h, w]`` or ``[N, h, w, 3]`` maps, each already in [0, 1], on a grid with white gaps."""
    n, h, w = maps.shape[:3]
    rows = math.ceil(n / columns)
    shape = (rows * (h + pad) + pad, columns * (w + pad) + pad) + maps.shape[3:]
    grid = np.ones(shape, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = maps[i]
    return grid


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def first_layer_figure(models: Sequence[tuple[str, LACNNBaseline]], image: np.ndarray, out: Path, *,
                       landmarks: np.ndarray | None = None, trait: str | None = None, filters: bool = False,
                       per_map: bool = False, columns: int = 10) -> Path:
    """Figure 5: the input, then per model the rectified conv1 responses to it (96 maps on a
    ``columns``-wide grid, scaled to [0, 1] together as Caffe's ``vis_square`` does, or each map on
    its own with ``per_map``), or with ``filters`` the conv1 kernels' RGB planes (each kernel scaled
    to [0, 1]). For LACNN models the landmark channel is shown too (Figure 4, bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, np.ndarray, str | None]] = []
    first = models[0][1]
    cfg = TransformConfig(image_size=first.image_size, channels=first.in_chans)
    sample = FaceTransform(cfg, train=False)(image, landmarks=landmarks)
    shown = sample["image"].permute(1, 2, 0).numpy()
    panels.append(("input", _unit(shown).squeeze(), "gray" if shown.shape[2] == 1 else None))
    for name, model in models:
        if model.image_size != first.image_size or model.in_chans != first.in_chans:
            raise ValueError(f"{name}: input {model.in_chans}x{model.image_size} differs from the first checkpoint's")
        net = model.network_for(trait)
        batch = {"image": sample["image"][None]}
        if model.uses_landmark_channel:
            if "landmarks" not in sample:
                raise ValueError(f"{name} has the landmark channel: give the image's landmarks (--landmarks FILE)")
            batch["landmarks"] = sample["landmarks"][None]
            channel = landmark_channel(batch["landmarks"], first.image_size, first.image_size, "unit")
            panels.append((f"{name}: landmark channel", channel[0, 0].numpy(), "tab20"))
        with torch.no_grad():
            if filters:
                w = net.conv1.weight.detach()[:, :3].permute(0, 2, 3, 1).numpy()
                maps = np.stack([_unit(k) for k in w])
                maps = maps if maps.shape[-1] == 3 else maps[..., 0]
            else:
                responses = net.conv1_responses(model.network_input(batch))[0].numpy()
                maps = np.stack([_unit(r) for r in responses]) if per_map else _unit(responses)
        panels.append((f"{name}: conv1 {'filters' if filters else 'responses'}", _tile(maps, columns), "gray"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4), squeeze=False)
    for ax, (title, img, cmap) in zip(axes[0], panels):
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


@register_analysis("lacnn-first-layer")
def first_layer_analysis(argv: list[str]) -> int:
    """``facebench analyze lacnn-first-layer --checkpoint CKPT [CKPT ...] --image IMG --out OUT.png``:
    the paper's Figure 5 for one image and one or more checkpoints (e.g. baseline, then LACNN)."""
    ap = argparse.ArgumentParser(prog="facebench analyze lacnn-first-layer", description=first_layer_analysis.__doc__)
    ap.add_argument("--checkpoint", nargs="+", required=True, type=Path, help="Lightning checkpoints (.ckpt)")
    ap.add_argument("--image", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="output PNG")
    ap.add_argument("--landmarks", type=Path, help="CelebA-format landmark list holding the image's row "
                    "(default: list_landmarks_align_celeba.txt beside the image's folder)")
    ap.add_argument("--trait", help="per-trait models: the trait whose network to show (default: the first)")
    ap.add_argument("--filters", action="store_true", help="show the conv1 kernels instead of their responses")
    ap.add_argument("--per-map", action="store_true", help="scale every response map on its own (default: all together)")
    args = ap.parse_args(argv)
    models = [(p.parent.parent.name if p.parent.name == "checkpoints" else p.stem, load_lacnn_checkpoint(p))
              for p in args.checkpoint]
    landmarks = _image_landmarks(args.image, args.landmarks)
    out = first_layer_figure(models, load_image(args.image), args.out, landmarks=landmarks, trait=args.trait,
                             filters=args.filters, per_map=args.per_map)
    print(f"wrote {out}")
    return 0


# ------------------------------------------------------------------------------------------------
# Table 3: baseline vs LACNN per trait
# ------------------------------------------------------------------------------------------------
def compare_traits(board: pd.DataFrame, baseline: str = "lacnn_baseline", method: str = "lacnn", metric: str = "accuracy",
                   split: str = "test", runs: Sequence | None = None) -> pd.DataFrame:
    """The paper's Table 3 from result records: per (dataset, trait) the test positives and
    negatives, the mean over seed-matched runs of ``metric`` for ``baseline`` and ``method`` (suite
    method keys; ``board`` is the leaderboard), their difference (method minus baseline) with the
    per-seed differences, 95% interval and the seed-aware test of :mod:`facebench.benchmarks.stats`
    (Holm across traits; per-image predictions ``runs`` add the image term), the winner where it is
    significant; then the same for ``Average`` and the powered / label-consistent averages."""
    from facebench.benchmarks.stats import method_comparisons

    df = method_comparisons(board, runs, metric, split, pairs=[(method, baseline)])
    if df.empty:
        raise ValueError(f"no {metric!r} values of both {baseline!r} and {method!r} on split {split!r}")
    df = df.rename(columns={"attribute": "trait", "value_a": method, "value_b": baseline})
    return df[["dataset", "trait", "positives", "negatives", baseline, method, "difference", "per_seed_differences",
               "ci95_low", "ci95_high", "p_value", "p_holm", "significant", "winner", "seeds", "test", "variance"]]


def results_board(results: Path) -> pd.DataFrame:
    """The leaderboard of a results folder: its local runs' rows plus the committed rows of runs
    that are not there (a clone without run folders reads the committed ``leaderboard.csv``)."""
    from facebench.benchmarks.report import leaderboard, read_board, with_committed_rows

    return with_committed_rows(leaderboard(collect_metrics(results)), read_board(results / "leaderboard.csv"))


@register_analysis("lacnn-compare")
def compare_analysis(argv: list[str]) -> int:
    """``facebench analyze lacnn-compare RESULTS_DIR``: per trait, the baseline's and LACNN's test
    accuracy, their difference per seed and over seeds, and whether it is significant (seed-aware
    test), with the powered and label-consistent averages."""
    from facebench.benchmarks.stats import results_predictions

    ap = argparse.ArgumentParser(prog="facebench analyze lacnn-compare", description=compare_analysis.__doc__)
    ap.add_argument("results", type=Path, help="a results folder (its runs, or its committed leaderboard.csv)")
    ap.add_argument("--baseline", default="lacnn_baseline", help="suite method key of the baseline")
    ap.add_argument("--method", default="lacnn", help="suite method key of LACNN")
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, help="also write the table as CSV")
    args = ap.parse_args(argv)
    board = results_board(args.results)
    if board.empty:
        raise FileNotFoundError(f"{args.results}: no finished runs and no leaderboard.csv")
    table = compare_traits(board, args.baseline, args.method, args.metric, args.split, results_predictions(args.results, args.split))
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    if args.out:
        write_csv(args.out, table, float_format="%.6g")
    return 0
