"""``facebench analyze first-layer-similarity``: the cosine similarity table of first-layer weights
between networks trained for different tasks (semantic-features paper,
``papers/semantic_facial_features_fer_vv.txt``, Section 4.2.7, Figure 16), from checkpoints of
``semantic_cnn`` runs (:mod:`facebench.lightning_modules.semantic_cnn`; per-task networks give one entry per
target) or of any network with a first convolution.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from facebench.benchmarks.analyses import register_analysis

FIRST_CONV_KEY = re.compile(r"^(?:(.*)\.)?networks\.(\d+)\.blocks\.0\.conv\.weight$")
MATCHINGS = ("index", "best", "hungarian")


def first_layer_filters(path: str | Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """First-layer filters ``[F, C*k*k]`` of every network in a checkpoint, by label.

    A ``semantic_cnn`` checkpoint with per-task networks gives one entry per target
    (``label/target``); any other checkpoint gives its first 4-D weight (its first conv layer).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file is missing")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (pickle / zip errors come in many types)
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a Lightning checkpoint or a state dict")
    if not label:   # results/<suite>/runs/<run_id>/checkpoints/best.ckpt -> the run id
        label = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    found = {int(m.group(2)): v for k, v in state.items() if (m := FIRST_CONV_KEY.match(k))}
    if len(found) == 1:
        return {label: next(iter(found.values())).flatten(1).float()}
    if found:   # per-task networks: name them by their targets (the checkpoint's task)
        task = (ckpt.get("hyper_parameters") or {}).get("task") or {"targets": []}
        names = [t["name"] for t in task["targets"]]
        return {f"{label}/{names[i] if i < len(names) else i}": w.flatten(1).float() for i, w in sorted(found.items())}
    for k, v in state.items():
        if torch.is_tensor(v) and v.ndim == 4 and k.endswith("weight"):
            return {label: v.flatten(1).float()}
    raise ValueError(f"{path}: no convolution weight (4-D tensor) in the checkpoint")


def filter_similarity(a: torch.Tensor, b: torch.Tensor, matching: str = "index") -> float:
    """Cosine similarity between two first layers ``[F, D]``.

    * ``index`` (the paper's Figure 16, we read): the cosine of the flattened layers, filter i
      against filter i. It is meaningful because networks started from the same initialisation
      (pylearn2's fixed seeds; here the runner seeds the RNG before building the model, so
      same-architecture runs of one seed share their first-layer start); a random layer then
      scores ~0, as the paper's "Random" row does.
    * ``best``: the mean over filters of the best-matching filter's cosine, both ways averaged
      (order-free; use it for networks started from different seeds).
    * ``hungarian``: the mean cosine of the optimal one-to-one matching of filters (scipy).
    """
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"first layers of different filter sizes ({a.shape[1]} vs {b.shape[1]} weights per filter)")
    if matching == "index":
        if a.shape != b.shape:
            raise ValueError(f"matching 'index' needs first layers of the same shape ({tuple(a.shape)} vs {tuple(b.shape)})")
        return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
    cos = F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T
    if matching == "best":
        return float((cos.max(dim=1).values.mean() + cos.max(dim=0).values.mean()) / 2)
    if matching == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-cos.numpy())
        return float(cos[rows, cols].mean())
    raise ValueError(f"unknown matching {matching!r}; allowed: {', '.join(MATCHINGS)}")


def random_first_layer(shape: Sequence[int], seed: int) -> torch.Tensor:
    """An untrained first layer ``[F, D]``: PyTorch's default conv initialisation (uniform within
    ``1/sqrt(fan_in)``), the "Random" row of Figure 16."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) * 2 - 1) / math.sqrt(shape[1])


def similarity_table(layers: dict[str, torch.Tensor], matching: str = "index") -> pd.DataFrame:
    names = list(layers)
    table = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            table.loc[a, b] = table.loc[b, a] = filter_similarity(layers[a], layers[b], matching)
    return table


def plot_similarity(table: pd.DataFrame, path: str | Path, title: str) -> None:
    """Lower-triangle heat table as in Figure 16."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(table)
    values = table.to_numpy()
    masked = np.ma.array(values, mask=np.triu(np.ones_like(values, dtype=bool)))
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.6 + 0.7 * n))
    im = ax.imshow(masked, cmap="viridis", vmin=min(0.0, float(np.nanmin(values))), vmax=1.0)
    for i in range(n):
        for j in range(i):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color="white" if values[i, j] < 0.6 else "black",
                    fontsize=8)
    ax.set_xticks(range(n), table.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), table.index)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register_analysis("first-layer-similarity")
def first_layer_similarity(argv: list[str]) -> int:
    """``facebench analyze first-layer-similarity CKPT... [--labels ...] [--matching index|best|hungarian]
    [--random-seed S] --csv OUT.csv [--png OUT.png]``: Figure 16 of the semantic-features paper."""
    ap = argparse.ArgumentParser(prog="facebench analyze first-layer-similarity",
                                 description="Cosine similarity of first-layer weights between trained networks "
                                             "(semantic-features paper, Figure 16).")
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files (e.g. results/<suite>/runs/<run>/checkpoints/best.ckpt)")
    ap.add_argument("--labels", nargs="+", help="one label per checkpoint (default: the run id)")
    ap.add_argument("--matching", choices=MATCHINGS, default="index", help="how filters are paired (default: index, as the paper)")
    ap.add_argument("--random-seed", type=int, default=None,
                    help="add a 'Random' row: a freshly initialised first layer of the same shape, from this seed")
    ap.add_argument("--csv", required=True, help="output CSV (square table)")
    ap.add_argument("--png", help="output heat table image")
    args = ap.parse_args(argv)
    if args.labels and len(args.labels) != len(args.checkpoints):
        ap.error(f"--labels gives {len(args.labels)} labels for {len(args.checkpoints)} checkpoints")
    layers: dict[str, torch.Tensor] = {}
    for i, path in enumerate(args.checkpoints):
        for name, w in first_layer_filters(path, args.labels[i] if args.labels else None).items():
            if name in layers:
                ap.error(f"two networks are labelled {name!r}; give --labels")
            layers[name] = w
    if args.random_seed is not None:
        layers["Random"] = random_first_layer(next(iter(layers.values())).shape, args.random_seed)
    table = similarity_table(layers, args.matching)
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.csv, float_format="%.4f")
    if args.png:
        plot_similarity(table, args.png, f"First-layer cosine similarity ({args.matching} matching)")
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string())
    return 0
