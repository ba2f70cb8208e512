"""Baumgartner & Culpepper, "Deep Architectures for Face Attributes" (Flickr / Yahoo, 2016).

A residual network is trained to classify identities (sec. 4.1), then fine-tuned per attribute task
from a depth chosen on validation (sec. 3.2, Fig. 3): the layers below the branch point stay
frozen, the layers above are re-initialised with the same architecture and a task head. All
chosen branches share one trunk that runs once per image (Fig. 1).

Registered here:

* method ``branching_identity`` (:class:`BranchingIdentityTask`): identity pre-training, SGD with
  momentum 0.9, learning rate divided by 4 on a step schedule (sec. 4.1); validation and test
  report face verification on the split's own identities (sec. 4.2), not attribute predictions;
* method ``branching`` (:class:`BranchingFineTuneTask`): one branch (``branch_from``), started from
  the identity network through the suite's ``init_from``;
* analysis ``branch-selection``: reads a depth sweep's run records (``grid: {branch_from: [...]}``),
  prints the Fig. 3 grid, picks the best depth per target and can assemble the chosen branches into
  one :class:`AssembledBranchingNet`;
* analysis ``face-verification``: 320-d features, cosine similarity, 10-fold threshold selection
  (LFW ``pairs.txt`` when present, otherwise balanced pairs generated from identities);
* analysis ``operating-point``: the multi-target ethnicity operating point (sec. 4.7): per-class
  thresholds at a target false-positive rate on validation, applied to test.

**The base network (Fig. 2, sec. 3.1).** The figure is not in the text; this is our reading of
the text, with the choices it leaves open marked *(choice)*:

====== ======================================================== ============ ==========
stage  layers (paper names)                                     output@224   1x1 -> 3x3
====== ======================================================== ============ ==========
(a)    conv1 7x7/2, 32 filters, BN, ReLU *(choice)*, max-pool 2x2/2 56x56x32   --
(b)    1 module: conv2 1x1, BN, ReLU, conv3 3x3, add             56x56x64     32 -> 64
(c)    2 modules, 3x3 at stride 2, 1x1/2 shortcut: conv4-conv7   28x28x128,   64 -> 128,
                                                                14x14x256    128 -> 256
(d)    6 modules: conv8-conv19                                   14x14x256    128 -> 256
(e)    1 module, 3x3 at stride 2, 1x1/2 shortcut: conv20-conv21  7x7x512      256 -> 512
(f)    1 module: conv22-conv23                                   7x7x512      256 -> 512
(g)    average pool, conv24 = "conv-bn320" (1x1 conv + BN, the   320, classes --
       320-d bottleneck), fc
====== ======================================================== ============ ==========

* every module is the paper's (b): a 1x1 convolution to half the module's output width, BN,
  ReLU, a 3x3 convolution to the output width, element-wise addition with the shortcut (identity,
  or a 1x1 convolution where the width or the resolution changes: stride 2 in (c) and (e),
  stride 1 where the stem's 32 channels meet (b)'s 64 *(choice)*); no BN / ReLU after the
  addition, as in the paper's description;
* "24 convolution layers, excluding the shortcut layers" = conv1 + 11 modules x 2 + conv24; the
  module counts per stage *(choice)* put the bulk of the FLOPs in (d) and give conv17 / conv19
  (3x3 of the last two (d) modules), conv21 (3x3 of the stride-2 (e) module) and conv22 (the 1x1
  of (f)): the branch points of Fig. 3;
* 8.48 M parameters with the paper's ~10 K identities (the text: "9M", Fig. 4: "10M") and 0.81 G
  multiply-adds at 224x224 (the text: "0.9 Gflops"; the paper counts a multiply-add as one flop:
  ``torch.utils.flop_counter`` counts two, i.e. 1.62 G). Fig. 4's fine-tuned parameter counts
  cannot all be reproduced from the text: "age, from conv22" (889,230) is exactly a 3x3 128 -> 512
  convolution, its 256 -> 512 shortcut, the 512 -> 320 bottleneck and a 14-way fc, but no module
  layout makes "emotion, from conv19" (1,018,055) consistent with the same network; here branching
  from conv22 trains 1.48 M parameters (+ the head).
* weights ~ N(0, 0.01) (sec. 4.1; ``init_std`` = 0.1, ``None`` for PyTorch's default), biases 0.

**Branch semantics.** ``branch_from: convK`` re-learns convK (with the BN that follows it) and
everything above it; everything below is frozen, BN running statistics included ("the parameters
of the base network are fixed and not altered during fine-tuning", sec. 3.2).
Branching at a 3x3 layer (conv17, conv19, conv21) keeps that module's 1x1 frozen and re-learns its
3x3 and shortcut. ``bottleneck320`` (alias ``conv24`` / ``conv-bn320``) re-learns the bottleneck
and the head, ``fc`` only the head (sec. 3.2: "only the number of units in the final layer
changes").
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from datamodules.base import DatasetFormatError
from datamodules.core.tasks import TARGET_KINDS, TaskSpec
from lightning_modules.base import FaceAttributeTask, _gather
from lightning_modules.registry import register_analysis, register_method

#: (output width, modules, stride of the first module) per stage (b)-(f); see the module docstring.
DEFAULT_STAGES: tuple[tuple[int, int, int], ...] = ((64, 1, 1), (128, 1, 2), (256, 1, 2), (256, 6, 1), (512, 1, 2),
                                                    (512, 1, 1))
BOTTLENECK = "bottleneck320"
#: The depths of Fig. 3, shallow to deep.
PAPER_BRANCH_POINTS: tuple[str, ...] = ("conv17", "conv19", "conv21", "conv22", BOTTLENECK, "fc")
PAPER_IDENTITIES = 10_000   # "about 10K identities" (sec. 4.1), for `facebench list methods`


# ------------------------------------------------------------------------------------------------
# the network of Fig. 2, as an ordered list of named steps
# ------------------------------------------------------------------------------------------------
class StemStep(nn.Module):
    """Stage (a): conv1 7x7/2 with 32 filters, BN, ReLU, 2x2/2 max-pooling (224 -> 56)."""

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class ReduceStep(nn.Module):
    """First half of a module (Fig. 2 b): 1x1 convolution, BN, ReLU. Returns ``(input, hidden)``:
    the input travels on to the shortcut of the :class:`ExpandStep`."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.relu(self.bn(self.conv(x)))


class ExpandStep(nn.Module):
    """Second half of a module: 3x3 convolution (stride 2 in stages c and e) added to the shortcut
    (identity, or a 1x1 convolution at the same stride when the shape changes)."""

    def __init__(self, width: int, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(width, out_channels, 3, stride=stride, padding=1, bias=False)
        self.shortcut: nn.Module = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                                    if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, h = state
        return self.conv(h) + self.shortcut(x)


class BottleneckStep(nn.Module):
    """Stage (g) up to the classifier: global average pooling, then "conv-bn320", a 1x1
    convolution to the 320-d bottleneck with BN. Its output is the face descriptor of sec. 4.2."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x.mean(dim=(2, 3), keepdim=True))).flatten(1)


def _stage_list(stages: Sequence[Sequence[int]] | None) -> tuple[tuple[int, int, int], ...]:
    out = tuple(tuple(int(v) for v in s) for s in (stages if stages is not None else DEFAULT_STAGES))
    for s in out:
        if len(s) != 3 or s[0] < 2 or s[1] < 1 or s[2] not in (1, 2):
            raise ValueError(f"stages: each stage is [output width >= 2, modules >= 1, stride 1 or 2], got {list(s)}")
    return out  # type: ignore[return-value]


class FaceIdentityNetwork(nn.Module):
    """The base network of Fig. 2 as named steps ``conv1, conv2, ..., conv23, bottleneck320, fc``.

    ``steps[name]`` is the layer the paper calls ``name`` (a module's 1x1 step owns its BN, its 3x3
    step owns the shortcut). :meth:`run` executes a range of steps, which is how branches start
    from a frozen trunk's intermediate state.
    """

    ALIASES: ClassVar[dict[str, str]] = {"conv-bn320": BOTTLENECK}

    def __init__(self, num_classes: int, *, in_chans: int = 3, stem_channels: int = 32,
                 stages: Sequence[Sequence[int]] | None = None, bottleneck_dim: int = 320,
                 init_std: float | None = 0.1):
        super().__init__()
        self.stages, self.init_std = _stage_list(stages), init_std
        steps: dict[str, nn.Module] = {"conv1": StemStep(in_chans, stem_channels)}
        channels, k = stem_channels, 2
        for width, count, stride in self.stages:
            for i in range(count):
                s = stride if i == 0 else 1
                steps[f"conv{k}"] = ReduceStep(channels, width // 2)
                steps[f"conv{k + 1}"] = ExpandStep(width // 2, channels, width, s)
                channels, k = width, k + 2
        self.aliases = {**self.ALIASES, f"conv{k}": BOTTLENECK}
        steps[BOTTLENECK] = BottleneckStep(channels, bottleneck_dim)
        steps["fc"] = nn.Linear(bottleneck_dim, num_classes)
        self.steps = nn.ModuleDict(steps)
        self.step_names: list[str] = list(steps)
        self.bottleneck_dim = bottleneck_dim
        self.reset_steps(0)

    # -- structure ---------------------------------------------------------------------------------
    def step_index(self, name: str) -> int:
        """Position of a branch point (``convK``, ``bottleneck320`` / ``conv-bn320`` / ``conv24``, ``fc``)."""
        key = self.aliases.get(name, name)
        if key not in self.step_names:
            raise ValueError(f"unknown layer {name!r}; branch points: {', '.join(self.step_names)} "
                             f"(aliases: {', '.join(self.aliases)})")
        return self.step_names.index(key)

    def named_convolutions(self) -> dict[str, nn.Conv2d]:
        """The 24 numbered convolutions of the paper (shortcuts excluded), by name."""
        out = {name: step.conv for name, step in self.steps.items() if hasattr(step, "conv")}
        bottleneck = out.pop(BOTTLENECK)
        out[f"conv{len(out) + 1}"] = bottleneck
        return out

    def step_modules(self, start: int = 0, stop: int | None = None) -> list[nn.Module]:
        return [self.steps[n] for n in self.step_names[start:stop] if n in self.steps]

    def reset_steps(self, start: int, stop: int | None = None) -> None:
        """Fresh weights for steps ``[start, stop)``: N(0, init_std) (sec. 4.1) or PyTorch's default."""
        for step in self.step_modules(start, stop):
            for m in step.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    if self.init_std is None:
                        m.reset_parameters()
                    else:
                        nn.init.normal_(m.weight, 0.0, self.init_std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    m.reset_parameters()

    def keep_steps(self, start: int, stop: int | None = None) -> None:
        """Delete every step outside ``[start, stop)`` (a trunk or a branch of an assembled model)."""
        keep = set(self.step_names[start:stop])
        for name in list(self.steps):
            if name not in keep:
                del self.steps[name]

    # -- forward -----------------------------------------------------------------------------------
    def run(self, state: Any, start: int = 0, stop: int | None = None) -> Any:
        for name in self.step_names[start:stop]:
            state = self.steps[name](state)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 320-d descriptor (output of conv-bn320, the input of the final fc; sec. 4.2)."""
        return self.run(x, 0, self.step_index(BOTTLENECK) + 1)


class _BranchingBase(FaceAttributeTask):
    """Architecture arguments shared by the identity network and its branches (see the module
    docstring): ``stem_channels``, ``stages`` (``[[width, modules, stride], ...]`` for stages b-f),
    ``bottleneck_dim``, ``init_std``."""

    input_size = 224
    task_kinds = frozenset(TARGET_KINDS)
    #: sec. 4.1: SGD, momentum 0.9, learning rate 0.1 divided by 4 every 10,000 mini-batches of 400.
    #: Weight decay is not given; 1e-4 is the standard ResNet value (He et al.).
    default_optimizer: ClassVar[dict] = {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}
    default_scheduler: ClassVar[dict | None] = {"name": "StepLR", "step_size": 10_000, "gamma": 0.25, "interval": "step"}
    #: The paper names no augmentation; horizontal flips are the standard one for faces.
    default_train_transforms: ClassVar[dict[str, Any]] = {"hflip": 0.5}

    def __init__(self, task: Any, *, stem_channels: int = 32, stages: Sequence[Sequence[int]] | None = None,
                 bottleneck_dim: int = 320, init_std: float | None = 0.1, **kwargs: Any):
        self.arch = {"stem_channels": stem_channels, "stages": _stage_list(stages), "bottleneck_dim": bottleneck_dim,
                     "init_std": init_std}
        super().__init__(task, **kwargs)

    def build_network(self, num_classes: int) -> FaceIdentityNetwork:
        return FaceIdentityNetwork(num_classes, in_chans=self.in_chans, **self.arch)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """320-d face descriptors (sec. 4.2)."""
        return self.net.features(image)


# ------------------------------------------------------------------------------------------------
# face verification (sec. 4.2)
# ------------------------------------------------------------------------------------------------
@dataclass
class VerificationPairs:
    """Image pairs (row indices ``a``, ``b`` into a feature matrix), ``same`` identity or not, and
    the cross-validation ``fold`` of each pair."""

    a: np.ndarray
    b: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def generate_pairs(identities: np.ndarray, n_folds: int = 10, pairs_per_fold: int = 300, seed: int = 0) -> VerificationPairs:
    """Balanced same / different pairs in identity-disjoint folds, like LFW's 10 splits of 300 +
    300 pairs (sec. 4.2), generated deterministically from ``seed``.

    Identities (``>= 0``) are dealt to folds after a seeded shuffle; with fewer than ``2 * n_folds``
    identities the number of folds shrinks so that each fold has two. Each fold gets
    ``min(pairs_per_fold, possible same pairs, possible different pairs)`` of each kind.
    """
    ids = np.asarray(identities, dtype=np.int64)
    known = np.unique(ids[ids >= 0])
    folds = min(int(n_folds), len(known) // 2)
    if folds < 2:
        raise ValueError(f"face verification needs at least 4 identities with images (2 folds of 2), got {len(known)}")
    rng = np.random.default_rng([int(seed), 4_2])
    order = rng.permutation(known)
    fold_of_identity = {int(i): k % folds for k, i in enumerate(order)}
    a, b, same, fold = [], [], [], []
    for f in range(folds):
        members = [i for i, k in fold_of_identity.items() if k == f]
        rows = np.flatnonzero(np.isin(ids, members))
        pos = [(int(x), int(y)) for i in members for x, y in _combinations(np.flatnonzero(ids == i))]
        ident = ids[rows]
        n_neg_possible = (len(rows) ** 2 - sum(int((ident == i).sum()) ** 2 for i in members)) // 2
        n = min(pairs_per_fold, len(pos), n_neg_possible)
        if n == 0:
            continue
        pick = rng.choice(len(pos), size=n, replace=False)
        neg: set[tuple[int, int]] = set()
        while len(neg) < n:
            x, y = rng.choice(rows, size=2, replace=False)
            if ids[x] != ids[y]:
                neg.add((int(min(x, y)), int(max(x, y))))
        pairs = [pos[j] for j in pick] + sorted(neg)
        a += [p[0] for p in pairs]
        b += [p[1] for p in pairs]
        same += [True] * n + [False] * n
        fold += [f] * (2 * n)
    return VerificationPairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(same, dtype=bool),
                             np.array(fold, dtype=np.int64))


def _combinations(rows: np.ndarray) -> list[tuple[int, int]]:
    return [(int(rows[i]), int(rows[j])) for i in range(len(rows)) for j in range(i + 1, len(rows))]


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


def verification_accuracy(features: np.ndarray | torch.Tensor, pairs: VerificationPairs) -> dict[str, Any]:
    """Cosine similarity of each pair; per fold, the threshold with the best accuracy on the other
    folds is applied to the fold (sec. 4.2: "select the threshold that provides the best
    verification on 9 splits, then evaluate it on the remaining one"). The threshold search is
    :func:`~lightning_modules.metrics.tune_thresholds` (criterion accuracy: the midpoint between
    the best ROC vertex and the next lower similarity). Returns the mean and the sample standard
    deviation over folds."""
    from lightning_modules.metrics import tune_thresholds

    feats = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float64), dim=1).numpy()
    sim = np.einsum("ij,ij->i", feats[pairs.a], feats[pairs.b])
    folds = np.unique(pairs.fold)
    if len(folds) < 2:
        raise ValueError("verification needs at least two folds")
    column = TaskSpec.binary_attributes(["same"])
    accs, thresholds = [], []
    for f in folds:
        train, test = pairs.fold != f, pairs.fold == f
        # similarities mapped from [-1, 1] to [0, 1], the range tune_thresholds expects
        t = 2.0 * float(tune_thresholds(column, (sim[train, None] + 1) / 2, pairs.same[train, None].astype(int),
                                        "accuracy")[0]) - 1.0
        thresholds.append(t)
        accs.append(float(((sim[test] >= t) == pairs.same[test]).mean()))
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)), "fold_accuracies": accs,
            "thresholds": thresholds, "folds": len(folds), "pairs": len(pairs)}


# ------------------------------------------------------------------------------------------------
# identity pre-training (sec. 4.1)
# ------------------------------------------------------------------------------------------------
@register_method("branching_identity")
class BranchingIdentityTask(_BranchingBase):
    """Stage 1: the Fig. 2 network classifying the training identities (softmax cross-entropy,
    sec. 3.1 / 4.1). The dataset's attribute task is ignored.

    Args:
        identity_ids: the training identities (filled in by the runner from
            ``dm.identity_classes("train")``); samples of other identities are ignored by the loss.
        verification_folds, verification_pairs, verification_seed: the verification protocol of
            validation and test (:func:`generate_pairs`): folds, same (= different) pairs per fold.

    Validation monitors face verification accuracy on the validation identities, which CelebA's
    official split keeps disjoint from training (the paper instead kept 5 images per identity
    aside, sec. 4.1; its LFW verification, sec. 4.2, is our measure). Validation / test also report
    identity accuracy on samples of training identities when there are any.
    """

    monitor = ("val/verification_accuracy", "max")

    def __init__(self, task: Any, *, identity_ids: Sequence[int] | None = None, verification_folds: int = 10,
                 verification_pairs: int = 300, verification_seed: int = 0, **kwargs: Any):
        if not identity_ids:
            raise ValueError("branching_identity needs identity_ids (the runner fills them from the datamodule's training "
                             "identities; the dataset must have identities)")
        self.identity_list = sorted(int(i) for i in identity_ids)
        self.verification = {"n_folds": verification_folds, "pairs_per_fold": verification_pairs, "seed": verification_seed}
        super().__init__(task, **kwargs)
        self._val_parts: dict[str, list[torch.Tensor]] = {}

    @classmethod
    def datamodule_kwargs(cls, dm: Any, args: dict[str, Any]) -> dict[str, Any]:
        return {} if args.get("identity_ids") else {"identity_ids": dm.identity_classes("train")}

    @classmethod
    def reference_config(cls) -> dict[str, Any]:
        return {"identity_ids": list(range(PAPER_IDENTITIES))}

    def configure_models(self) -> None:
        self.net = self.build_network(len(self.identity_list))
        self.register_buffer("identity_table", torch.tensor(self.identity_list, dtype=torch.long), persistent=False)

    def configure_metrics(self) -> None:
        n = len(self.identity_list)
        self.train_accuracy = MulticlassAccuracy(num_classes=n, ignore_index=-1)
        self.val_accuracy = MulticlassAccuracy(num_classes=n, ignore_index=-1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def identity_classes(self, identity: torch.Tensor) -> torch.Tensor:
        """Class index of each sample's identity, ``-1`` for identities not trained on."""
        table = self.identity_table.to(identity.device)
        pos = torch.searchsorted(table, identity).clamp(max=len(table) - 1)
        return torch.where(table[pos] == identity, pos, torch.full_like(pos, -1))

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Softmax cross-entropy over the training identities (also counts training accuracy)."""
        y = self.identity_classes(batch["identity"])
        if self.training:
            self.train_accuracy.update(logits.detach(), y)
        if not (y >= 0).any():
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits.float(), y, ignore_index=-1)

    def probabilities(self, batch: dict[str, Any], logits: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError("branching_identity predicts identities, not the task's attributes; fine-tune a "
                                  "'branching' stage from it (init_from) for attribute predictions")

    def on_train_epoch_end(self) -> None:
        if self.train_accuracy.update_count:
            self.log("train/identity_accuracy", self.train_accuracy.compute())
        self.train_accuracy.reset()

    def _collect(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        feats = self.net.features(batch["image"])
        logits = self.net.steps["fc"](feats)
        y = self.identity_classes(batch["identity"])
        if (y >= 0).any():
            self.val_accuracy.update(logits, y)
        pred = self.identity_table[logits.argmax(dim=1)]
        return {"features": feats.detach(), "identity": batch["identity"], "identity_pred": pred, "index": batch["index"],
                "labels": batch["label"]}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for k, v in self._collect(batch).items():
            self._val_parts.setdefault(k, []).append(v)

    def on_validation_epoch_start(self) -> None:
        self._val_parts = {}

    def on_validation_epoch_end(self) -> None:
        parts = {k: _gather(torch.cat(v)).cpu().numpy() for k, v in self._val_parts.items()}
        self._val_parts = {}
        if self.val_accuracy.update_count:
            self.log("val/identity_accuracy", self.val_accuracy.compute())
        self.val_accuracy.reset()
        if parts:
            res = verification_accuracy(parts["features"], generate_pairs(parts["identity"], **self.verification))
            self.log("val/verification_accuracy", res["accuracy"])
            self.log("val/verification_accuracy_std", res["std"])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        buf = self._buffers_out.setdefault(dataloader_idx, {})
        for k, v in self._collect(batch).items():
            buf.setdefault(k, []).append(v)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.val_accuracy.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self.embed(batch["image"])

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        """Verification accuracy (mean, std over folds) on the split's identities, and identity
        accuracy on its samples of training identities (when it has any)."""
        res = verification_accuracy(arrays["features"], generate_pairs(arrays["identity"], **self.verification))
        rows = [("verification_accuracy", res["accuracy"]), ("verification_accuracy_std", res["std"]),
                ("verification_folds", res["folds"]), ("verification_pairs", res["pairs"])]
        seen = np.isin(arrays["identity"], self.identity_list)
        if seen.any():
            rows.append(("identity_accuracy", float((arrays["identity_pred"][seen] == arrays["identity"][seen]).mean())))
        return pd.DataFrame([{"target": "identity", "class": "", "metric": m, "value": float(v)} for m, v in rows])


# ------------------------------------------------------------------------------------------------
# fine-tuning from a chosen depth (sec. 3.2, 4.3)
# ------------------------------------------------------------------------------------------------
@register_method("branching")
class BranchingFineTuneTask(_BranchingBase):
    """Stage 2: one branch of Fig. 1 for the dataset's targets.

    Args:
        branch_from: the first re-learned layer (Fig. 3: ``conv17``, ``conv19``, ``conv21``,
            ``conv22``, ``bottleneck320``, ``fc``; any ``convK`` works). Everything below is frozen.
        reinitialize: re-initialise the layers above the branch point (sec. 3.2: "the weights in the
            new layers are initialized randomly and retrained"); ``False`` starts them from the
            identity network instead (ordinary fine-tuning). The head is always new.
        init_checkpoint: the identity network (the suite's ``init_from`` fills it in).

    The frozen trunk runs without gradients and in eval mode (its BN statistics stay fixed).
    The paper gives no fine-tuning schedule; the identity stage's SGD recipe is the default.
    """

    def __init__(self, task: Any, *, branch_from: str = "fc", reinitialize: bool = True, **kwargs: Any):
        self.branch_from, self.reinitialize = branch_from, reinitialize
        super().__init__(task, **kwargs)

    def configure_models(self) -> None:
        self.net = self.build_network(self.task.n_logits)
        self.branch_index = self.net.step_index(self.branch_from)
        for p in self.frozen_parameters():
            p.requires_grad_(False)
        for m in self.frozen_modules():
            m.eval()   # Lightning keeps each submodule's mode; train() below keeps the trunk in eval too

    @classmethod
    def reference_config(cls) -> dict[str, Any]:
        return {"branch_from": "conv22"}

    def frozen_modules(self) -> list[nn.Module]:
        return self.net.step_modules(0, self.branch_index)

    def frozen_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.frozen_modules() for p in m.parameters()]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            state = self.net.run(image, 0, self.branch_index)
        return self.net.run(state, self.branch_index)

    def load_init_checkpoint(self, path: str) -> None:
        """Copy the identity network's weights into the frozen layers (and, with ``reinitialize:
        false``, into the layers above too, the head excepted)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        state = ckpt.get("state_dict", ckpt)
        stop = self.branch_index if self.reinitialize else self.net.step_index("fc")
        prefixes = tuple(f"net.steps.{n}." for n in self.net.step_names[:stop])
        own = self.state_dict()
        wanted = [k for k in own if k.startswith(prefixes)]
        bad = [k for k in wanted if k not in state or tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"{path}: not a branching_identity network of this architecture: "
                             f"{len(bad)} layer tensor(s) missing or of another shape, e.g. {', '.join(bad[:3])}")
        self.load_state_dict({k: state[k] for k in wanted}, strict=False)


# ------------------------------------------------------------------------------------------------
# one model for all chosen branches (Fig. 1)
# ------------------------------------------------------------------------------------------------
def load_branching_checkpoint(path: str | Path) -> _BranchingBase:
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


# ------------------------------------------------------------------------------------------------
# analyses
# ------------------------------------------------------------------------------------------------
def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    from benchmarks.cli import _parse_sets as parse

    return parse(items)


def sweep_records(results_dir: str | Path, method_name: str = "branching") -> pd.DataFrame:
    """Metrics of every finished run of ``method_name`` under ``results_dir`` with its
    ``branch_from``, trainable parameters and best checkpoint."""
    from datamodules.core.io import read_json
    from benchmarks.records import finished_run_dirs
    from benchmarks.worker import STATUS

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
    from lightning_modules.metrics import LOWER_IS_BETTER

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
        from datamodules.core.io import write_csv

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


def extract_features(model: _BranchingBase, loader: Any) -> tuple[np.ndarray, np.ndarray]:
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
    from datamodules.base import create_datamodule

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
    dm = create_datamodule(args.dataset, root=args.root, **_parse_sets(args.set))
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
        from datamodules.core.io import write_json

        write_json(args.out, res)
    return 0


# ------------------------------------------------------------------------------------------------
# multi-target ethnicity operating point (sec. 4.7)
# ------------------------------------------------------------------------------------------------
def select_operating_point(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> np.ndarray:
    """Per class (column), the threshold with the highest true-positive rate whose false-positive
    rate on these (validation) scores is at most ``target_fpr``; labels ``-1`` are ignored. Uses the
    metrics module's :class:`~lightning_modules.metrics.MultilabelOperatingPoint` (torchmetrics)."""
    from lightning_modules.metrics import MultilabelOperatingPoint

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
    from benchmarks.records import load_predictions

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
        from datamodules.core.io import write_json

        write_json(args.out, results)
    return 0
