"""``facebench analyze mcnn-aux-heatmap``: Figure 3 of Hand & Chellappa (AAAI 2017), the weights of
an ``mcnn_aux`` run's AUX layer (:class:`~facebench.lightning_modules.mcnn.MCNNAux`) as a heatmap: which
attribute scores each final score draws on.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from facebench.benchmarks.analyses import register_analysis
from facebench.benchmarks.records import probability_columns
from facebench.core.tasks import TaskSpec


def plot_aux_heatmap(weight: torch.Tensor, names: Sequence[str], out_png: str | Path, title: str = "",
                     limit: float | None = None) -> Path:
    """Heatmap of AUX weights (Figure 3): x = MCNN output units, y = AUX units; red positive, blue
    negative, white zero. The colour range is +-``limit`` (default: the largest off-diagonal
    magnitude, so that the relationships between attributes show; the diagonal then saturates)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weight.detach().float().cpu()
    if limit is None:
        off = w - torch.diag(torch.diag(w)) if w.shape[0] == w.shape[1] else w
        limit = float(off.abs().max()) or float(w.abs().max()) or 1.0
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * n + 3), max(5.0, 0.25 * n + 2)))
    im = ax.imshow(w.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
    ax.set_xticks(range(n), labels=names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=names, fontsize=7)
    ax.set_xlabel("MCNN output unit")
    ax.set_ylabel("AUX unit")
    ax.set_title(title or "MCNN-AUX weights")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, extend="both")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


@register_analysis("mcnn-aux-heatmap")
def aux_heatmap(argv: list[str]) -> int:
    """``facebench analyze mcnn-aux-heatmap CHECKPOINT OUT.png``: Figure 3 of an mcnn_aux run."""
    parser = argparse.ArgumentParser(prog="facebench analyze mcnn-aux-heatmap",
                                     description="Heatmap of the AUX weights of an mcnn_aux checkpoint (paper Figure 3).")
    parser.add_argument("checkpoint", help="an mcnn_aux checkpoint (e.g. results/<suite>/runs/<run>/checkpoints/best.ckpt)")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--limit", type=float, default=None,
                        help="colour range +-LIMIT (default: the largest off-diagonal weight magnitude)")
    args = parser.parse_args(argv)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt)
    if "aux.weight" not in state:
        raise ValueError(f"{args.checkpoint}: no 'aux.weight' in the checkpoint; is it an mcnn_aux run's checkpoint?")
    weight = state["aux.weight"]
    task_dict = (ckpt.get("hyper_parameters") or {}).get("task")
    names = probability_columns(TaskSpec.from_dict(task_dict)) if task_dict else [str(i) for i in range(weight.shape[0])]
    out = plot_aux_heatmap(weight, names, args.output, limit=args.limit,
                           title=f"MCNN-AUX weights ({Path(args.checkpoint).parent.parent.name})")
    print(out)
    return 0
