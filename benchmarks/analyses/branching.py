"""Analyses of Baumgartner & Culpepper, "Deep Architectures for Face Attributes" (Flickr / Yahoo,
2016), on runs of the ``branching`` / ``branching_identity`` methods
(:mod:`facebench.lightning_modules.branching`):

* ``branch-selection``: reads a depth sweep's run records (``grid: {branch_from: [...]}``), prints
  the Fig. 3 grid, picks the best depth per target and can assemble the chosen branches into one
  :class:`AssembledBranchingNet` (Fig. 1);
* ``face-verification``: 320-d features, cosine similarity, 10-fold threshold selection (sec. 4.2;
  LFW ``pairs.txt`` when present, otherwise balanced pairs generated from identities);
* ``operating-point``: the multi-target ethnicity operating point (sec. 4.7): per-class
  thresholds at a target false-positive rate on validation, applied to test.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from facebench.benchmarks.analyses import register_analysis
from facebench.benchmarks.overrides import parse_sets
from facebench.benchmarks.records import finished_run_dirs, load_predictions
from facebench.benchmarks.run_folder import STATUS
from facebench.datamodules.base import create_datamodule
from facebench.core.io import read_json, write_csv, write_json
from facebench.core.tasks import TaskSpec
from facebench.datamodules.formats import DatasetFormatError
from facebench.lightning_modules.branching import BranchingFineTuneTask, BranchingIdentityTask
from facebench.lightning_modules.branching_networks import BOTTLENECK, PAPER_BRANCH_POINTS
from facebench.lightning_modules.face_verification import VerificationPairs, generate_pairs, verification_accuracy
from facebench.lightning_modules.metrics import LOWER_IS_BETTER, MultilabelOperatingPoint


# ------------------------------------------------------------------------------------------------
# branch selection (Fig. 3) and the assembled network (Fig. 1)
# ------------------------------------------------------------------------------------------------
def sweep_records(results_dir: str | Path, method_name: str = "branching") -> pd.DataFrame:
    """Metrics of every finished run of ``method_name`` under ``results_dir`` with its
    ``branch_from``, trainable parameters and best checkpoint."""
    frames = []
    for run_dir in finished_run_dirs(results_dir):
        status = read_json(run_dir / STATUS, {}) or {}
        if not (run_dir / "metrics.csv").is_file():
            continue
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        if cfg["method"]["name"] != method_name:
            continue
        df = pd.read_csv(run_dir / "metrics.csv", keep_default_na=False, na_values=["nan", "NaN", ""])
        if df.empty:
            continue
        df["class"] = df["class"].fillna("").astype(str)
        df["branch_from"] = cfg["method"]["args"].get("branch_from", "fc")
        df["checkpoint"] = status.get("best_checkpoint") or str(run_dir / "checkpoints" / "last.ckpt")
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"{results_dir}: no finished '{method_name}' runs (metrics.csv) found")
    return pd.concat(frames, ignore_index=True)


def _depth_rank(name: str) -> int:
    """Order of branch points from shallow to deep (``convK`` by K; the bottleneck, then fc last)."""
    if name in (BOTTLENECK, "conv-bn320"):
        return 1000
    if name == "fc":
        return 1001
    return int(name[4:]) if name.startswith("conv") and name[4:].isdigit() else -1


def select_branches(records: pd.DataFrame, metric: str = "accuracy", split: str = "val") -> pd.DataFrame:
    """Per (dataset, seed, target): ``metric`` on ``split`` for every depth, the best one marked
    ``chosen`` (Fig. 3). Ties go to the deeper branch point (fewer layers to run and train).
    Multi-label targets are ranked by the mean over their classes."""
    rows = records[(records["split"] == split) & (records["metric"] == metric)]
    if rows.empty:
        raise ValueError(f"no '{metric}' rows on split '{split}' in the sweep's metrics "
                         f"(metrics: {', '.join(sorted(records['metric'].unique())[:20])} ...)")
    per_class = rows[rows["class"] != ""]
    level = rows[rows["class"] == ""]
    ml = per_class[~per_class["target"].isin(level["target"].unique())]
    table = pd.concat([level, ml.groupby(["dataset", "seed", "target", "branch_from", "checkpoint", "trainable_params"],
                                         as_index=False)["value"].mean()], ignore_index=True)
    table = table[["dataset", "seed", "target", "branch_from", "value", "trainable_params", "checkpoint"]]
    table["depth"] = table["branch_from"].map(_depth_rank)
    sign = -1 if metric in LOWER_IS_BETTER else 1
    table = table.sort_values(["dataset", "seed", "target", "depth"]).reset_index(drop=True)
    table["chosen"] = False
    for _, g in table.groupby(["dataset", "seed", "target"]):
        score = sign * g["value"].to_numpy()
        best = np.flatnonzero(score == np.nanmax(score))
        table.loc[g.index[best[-1]], "chosen"] = True
    return table.drop(columns="depth").rename(columns={"value": metric})


def load_branching_checkpoint(path: str | Path) -> BranchingIdentityTask | BranchingFineTuneTask:
    """A ``branching`` or ``branching_identity`` model from its Lightning checkpoint (eval mode)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint of a branching method (no hyper_parameters / state_dict)")
    cls = BranchingIdentityTask if hp.get("identity_ids") else BranchingFineTuneTask
    model = cls.load_from_checkpoint(str(path), map_location="cpu", init_checkpoint=None)
    return model.eval()


class AssembledBranchingNet(nn.Module):
    """Several fine-tuned branches as one module (Fig. 1): the frozen trunk runs once per image up
    to the deepest branch point, every branch continues from its own depth.

    Args:
        branches: fine-tuned :class:`BranchingFineTuneTask` models of one identity network.
        targets: per branch, the target names it answers (default: all of its task's targets).

    ``forward(image)`` returns logits in the layout of :attr:`task` (the chosen targets in order).
    """

    def __init__(self, branches: Sequence[BranchingFineTuneTask], targets: Sequence[Sequence[str] | None] | None = None):
        super().__init__()
        if not branches:
            raise ValueError("AssembledBranchingNet needs at least one branch")
        targets = list(targets) if targets is not None else [None] * len(branches)
        points = [b.branch_index for b in branches]
        deepest = branches[int(np.argmax(points))]
        self.trunk = copy.deepcopy(deepest.net)
        self.trunk.keep_steps(0, max(points))
        trunk_state = self.trunk.state_dict()
        self.points: list[int] = []
        self.heads = nn.ModuleList()
        chosen, columns = [], []
        for b, names in zip(branches, targets):
            for key, value in b.net.state_dict().items():
                step = key.split(".")[1]
                if b.net.step_names.index(step) < b.branch_index and not torch.equal(trunk_state[key], value):
                    raise ValueError(f"branch from {b.branch_from} has other frozen weights than the trunk ({key}): "
                                     f"the branches were not fine-tuned from the same identity network")
            head = copy.deepcopy(b.net)
            head.keep_steps(b.branch_index)
            self.heads.append(head)
            self.points.append(b.branch_index)
            names = list(names) if names is not None else list(b.task.names)
            cols = [c for n in names for c in range(b.task.logit_slices[b.task.names.index(n)].start,
                                                    b.task.logit_slices[b.task.names.index(n)].stop)]
            chosen += [b.task.target(n) for n in names]
            columns.append(cols)
        self.columns = columns
        self.task = TaskSpec(tuple(chosen), name="assembled")
        self.branch_names = [b.branch_from for b in branches]

    @classmethod
    def from_checkpoints(cls, specs: Sequence[tuple[str | Path, Sequence[str] | None]]) -> "AssembledBranchingNet":
        models = [load_branching_checkpoint(p) for p, _ in specs]
        for (p, _), m in zip(specs, models):
            if not isinstance(m, BranchingFineTuneTask):
                raise ValueError(f"{p}: a branching_identity checkpoint, not a fine-tuned branch")
        return cls(models, [t for _, t in specs])  # type: ignore[arg-type]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        states, state, pos = {}, image, 0
        for p in sorted(set(self.points)):
            state = self.trunk.run(state, pos, p)
            states[p], pos = state, p
        outs = [head.run(states[p], p)[:, cols] for head, p, cols in zip(self.heads, self.points, self.columns)]
        return torch.cat(outs, dim=1)


@register_analysis("branch-selection")
def branch_selection_main(argv: list[str]) -> int:
    """``facebench analyze branch-selection RESULTS_DIR``: the Fig. 3 grid of a depth sweep, the
    best depth per target and (``--assemble OUT.pt``) the multi-head model of the chosen branches."""
    ap = argparse.ArgumentParser(prog="facebench analyze branch-selection",
                                 description="Pick the best branch depth per target from a branching sweep (Fig. 3).")
    ap.add_argument("results_dir", help="the suite's results folder (holding runs/)")
    ap.add_argument("--metric", default="accuracy", help="validation metric to rank depths (paper: accuracy)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--method", default="branching", help="registered method name of the sweep's runs")
    ap.add_argument("--dataset", help="dataset key (when the sweep has several)")
    ap.add_argument("--seed", type=int, help="seed (when the sweep has several)")
    ap.add_argument("--out", help="write the full table as CSV")
    ap.add_argument("--assemble", help="save the assembled multi-head model of the chosen branches (torch.save)")
    args = ap.parse_args(argv)
    table = select_branches(sweep_records(args.results_dir, args.method), args.metric, args.split)
    if args.dataset:
        table = table[table["dataset"] == args.dataset]
    if args.seed is not None:
        table = table[table["seed"] == args.seed]
    if args.out:
        write_csv(args.out, table)
    grid = table.pivot_table(index=["dataset", "seed", "target"], columns="branch_from", values=args.metric, aggfunc="first")
    grid = grid[[c for c in PAPER_BRANCH_POINTS if c in grid.columns] + [c for c in grid.columns if c not in PAPER_BRANCH_POINTS]]
    chosen = table[table["chosen"]].set_index(["dataset", "seed", "target"])
    grid["chosen"] = chosen["branch_from"]
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.4f}".format):
        print(f"{args.metric} on {args.split} per branch point (Fig. 3):")
        print(grid.to_string())
        params = table.drop_duplicates(["dataset", "seed", "branch_from"]).set_index("branch_from")["trainable_params"]
        print("\nfine-tuned parameters per branch (Fig. 4): " + ", ".join(f"{k} {int(v):,}" for k, v in params.items()))
        print("\nchosen depth per target: " + ", ".join(f"{k} {v}" for k, v in chosen["branch_from"].value_counts().items()))
    if args.assemble:
        if chosen.index.droplevel("target").nunique() != 1:
            raise ValueError("--assemble needs one dataset and seed: give --dataset / --seed")
        specs = [(ckpt, list(g.index.get_level_values("target"))) for ckpt, g in chosen.groupby("checkpoint", sort=False)]
        model = AssembledBranchingNet.from_checkpoints(specs)
        out = Path(args.assemble)
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"branches": specs, "task": model.task.to_dict(), "state_dict": model.state_dict()}, out)
        n = sum(p.numel() for p in model.parameters())
        print(f"\nassembled {len(specs)} branch(es), {len(model.task.targets)} targets, {n:,} parameters -> {out}")
    return 0


# ------------------------------------------------------------------------------------------------
# face verification (sec. 4.2)
# ------------------------------------------------------------------------------------------------
def read_lfw_pairs(path: str | Path, sample_paths: Sequence[str]) -> VerificationPairs:
    """LFW's ``pairs.txt`` (or ``pairsDevTest.txt``): a header ``<folds> <n>`` (or just ``<n>``),
    then per fold ``n`` lines ``name i j`` (same person) and ``n`` lines ``name1 i name2 j``
    (different people). Images are matched to samples by file name ``<name>_<iiii>``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pairs file is missing")
    lines = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetFormatError(path, 1, "empty file; expected a header '<folds> <pairs per class>'")
    head = lines[0].split()
    try:
        folds, n = (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))
    except (ValueError, IndexError):
        raise DatasetFormatError(path, 1, f"expected '<folds> <pairs per class>', got {lines[0].strip()!r}") from None
    if len(lines) - 1 != folds * 2 * n:
        raise DatasetFormatError(path, 1, f"the header announces {folds} x 2 x {n} pairs but the file has {len(lines) - 1} lines")
    index = {Path(p).stem: i for i, p in enumerate(sample_paths)}

    def lookup(name: str, number: str, lineno: int) -> int:
        try:
            key = f"{name}_{int(number):04d}"
        except ValueError:
            raise DatasetFormatError(path, lineno, f"expected an image number, got {number!r}") from None
        if key not in index:
            raise DatasetFormatError(path, lineno, f"image {key} is not among the evaluated samples "
                                                   f"(expected a file named {key}.<ext> in the split)")
        return index[key]

    a, b, same, fold = [], [], [], []
    for lineno in range(2, len(lines) + 1):
        k = lineno - 2
        f, is_same = k // (2 * n), (k % (2 * n)) < n
        parts = lines[lineno - 1].split()
        if is_same and len(parts) != 3:
            raise DatasetFormatError(path, lineno, f"expected 'name i j' (a same-person pair), got {lines[lineno - 1].strip()!r}")
        if not is_same and len(parts) != 4:
            raise DatasetFormatError(path, lineno, f"expected 'name1 i name2 j' (a different-people pair), "
                                                   f"got {lines[lineno - 1].strip()!r}")
        x = lookup(parts[0], parts[1], lineno)
        y = lookup(parts[0], parts[2], lineno) if is_same else lookup(parts[2], parts[3], lineno)
        a.append(x), b.append(y), same.append(is_same), fold.append(f)
    return VerificationPairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(same, dtype=bool),
                             np.array(fold, dtype=np.int64))


def extract_features(model: BranchingIdentityTask | BranchingFineTuneTask, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """(320-d descriptors, identities) of every sample a loader yields, in order."""
    feats, ids = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            feats.append(model.embed(batch["image"]))
            ids.append(batch["identity"])
    return torch.cat(feats).numpy(), torch.cat(ids).numpy()


@register_analysis("face-verification")
def face_verification_main(argv: list[str]) -> int:
    """``facebench analyze face-verification --checkpoint CKPT --dataset NAME --root DIR``:
    LFW-style verification accuracy (mean +- std over folds) of a branching network's 320-d
    descriptors (sec. 4.2)."""
    ap = argparse.ArgumentParser(prog="facebench analyze face-verification",
                                 description="Face verification with the 320-d descriptors of a branching network (sec. 4.2).")
    ap.add_argument("--checkpoint", required=True, help="a branching_identity (or branching) checkpoint")
    ap.add_argument("--dataset", required=True, help="registered datamodule name")
    ap.add_argument("--root", help="dataset folder")
    ap.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="datamodule arguments")
    ap.add_argument("--split", nargs="+", default=["test"], help="split(s) whose images are paired (default: test)")
    ap.add_argument("--pairs", help="LFW pairs.txt (default: <root>/pairs.txt when present, else generated pairs)")
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--pairs-per-fold", type=int, default=300, help="same (= different) pairs per fold when generating")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the result as JSON")
    args = ap.parse_args(argv)
    model = load_branching_checkpoint(args.checkpoint)
    dm = create_datamodule(args.dataset, root=args.root, **parse_sets(args.set))
    dm.setup()
    dm.configure_input(model.image_size, model.in_chans)
    feats, ids, paths = [], [], []
    for split in args.split:
        f, i = extract_features(model, dm.eval_dataloader(split))
        feats.append(f), ids.append(i)
        paths += list(dm.tables[split].paths)
    features, identities = np.concatenate(feats), np.concatenate(ids)
    pairs_file = Path(args.pairs) if args.pairs else (Path(args.root) / "pairs.txt" if args.root else None)
    if pairs_file is not None and pairs_file.is_file():
        pairs, source = read_lfw_pairs(pairs_file, paths), str(pairs_file)
    else:
        if args.pairs:
            raise FileNotFoundError(f"{args.pairs}: pairs file is missing")
        pairs, source = generate_pairs(identities, args.folds, args.pairs_per_fold, args.seed), "generated from identities"
    res = verification_accuracy(features, pairs)
    res.update({"checkpoint": str(args.checkpoint), "dataset": args.dataset, "splits": args.split, "pairs_source": source})
    print(f"face verification ({source}): accuracy {res['accuracy']:.4f} +- {res['std']:.4f} over {res['folds']} folds, "
          f"{res['pairs']} pairs")
    if args.out:
        write_json(args.out, res)
    return 0


# ------------------------------------------------------------------------------------------------
# multi-target ethnicity operating point (sec. 4.7)
# ------------------------------------------------------------------------------------------------
def select_operating_point(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> np.ndarray:
    """Per class (column), the threshold with the highest true-positive rate whose false-positive
    rate on these (validation) scores is at most ``target_fpr``; labels ``-1`` are ignored. Uses the
    metrics module's :class:`~facebench.lightning_modules.metrics.MultilabelOperatingPoint` (torchmetrics)."""
    op = MultilabelOperatingPoint(num_labels=scores.shape[1], min_specificity=1.0 - target_fpr, ignore_index=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        op.update(torch.as_tensor(scores, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.long))
        return op.compute()["threshold"].numpy()


def apply_operating_point(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> dict[str, Any]:
    """TPR and FPR over all (sample, class) labels at fixed per-class thresholds, and the share of
    samples that get no class at all (sec. 4.7: "tpr of 71.97% and fpr of only 1.03% ... only
    0.44% do not get an ethnicity prediction"). Compared in float32, the precision of the records
    and of :func:`select_operating_point`."""
    positive = np.asarray(scores, dtype=np.float32) >= np.asarray(thresholds, dtype=np.float32)[None, :]
    pos, neg = labels == 1, labels == 0
    return {"tpr": float((positive & pos).sum() / max(pos.sum(), 1)), "fpr": float((positive & neg).sum() / max(neg.sum(), 1)),
            "unlabelled": float((~positive.any(axis=1)).mean()), "samples": int(len(scores)),
            "per_class_tpr": ((positive & pos).sum(0) / np.maximum(pos.sum(0), 1)).tolist(),
            "per_class_fpr": ((positive & neg).sum(0) / np.maximum(neg.sum(0), 1)).tolist()}


@register_analysis("operating-point")
def operating_point_main(argv: list[str]) -> int:
    """``facebench analyze operating-point RUN_DIR --target-fpr 0.0103``: thresholds per class
    chosen on the validation predictions at a target FPR, applied to the test predictions."""
    ap = argparse.ArgumentParser(prog="facebench analyze operating-point",
                                 description="Multi-target operating point at a target false-positive rate (sec. 4.7).")
    ap.add_argument("run_dir", help="a finished run (predictions_<split>.npz, task.json)")
    ap.add_argument("--target-fpr", type=float, default=0.0103, help="per-class FPR on the tuning split (paper: 1.03%%)")
    ap.add_argument("--target", nargs="+", help="multi-label target(s) (default: all; a task without any uses its binary columns)")
    ap.add_argument("--tune-split", default="val")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--out", help="write the result as JSON")
    args = ap.parse_args(argv)
    run = Path(args.run_dir)
    task = TaskSpec.from_dict(json.loads((run / "task.json").read_text()))
    tune, evaluate_on = load_predictions(run, args.tune_split), load_predictions(run, args.eval_split)
    groups: dict[str, tuple[list[int], list[int]]] = {}
    names = args.target or [t.name for t in task.targets if t.kind == "multilabel"]
    for name in names:
        t = task.target(name)
        if t.kind != "multilabel":
            raise ValueError(f"target {name!r} is {t.kind}, not multilabel")
        i = task.names.index(name)
        groups[name] = (list(range(task.logit_slices[i].start, task.logit_slices[i].stop)),
                        list(range(task.label_slices[i].start, task.label_slices[i].stop)))
    if not groups:
        groups["binary columns"] = task.binary_columns()
    results = {}
    for name, (lc, yc) in groups.items():
        th = select_operating_point(tune["probs"][:, lc], tune["labels"][:, yc], args.target_fpr)
        res = apply_operating_point(evaluate_on["probs"][:, lc], evaluate_on["labels"][:, yc], th)
        res["thresholds"] = th.tolist()
        results[name] = res
        print(f"{name}: thresholds at fpr <= {args.target_fpr:g} on {args.tune_split}; on {args.eval_split}: "
              f"tpr {res['tpr']:.4f}, fpr {res['fpr']:.4f}, no label {res['unlabelled']:.4f} ({res['samples']} samples)")
    if args.out:
        write_json(args.out, results)
    return 0
