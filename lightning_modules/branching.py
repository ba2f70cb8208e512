"""Baumgartner & Culpepper, "Deep Architectures for Face Attributes" (Flickr / Yahoo, 2016).

A residual network is trained to classify identities (sec. 4.1), then fine-tuned per attribute task
from a depth chosen on validation (sec. 3.2, Fig. 3): the layers below the branch point stay
frozen, the layers above are re-initialised with the same architecture and a task head. All
chosen branches share one trunk that runs once per image (Fig. 1).

Here:

* method ``branching_identity`` (:class:`BranchingIdentityTask`): identity pre-training, SGD with
  momentum 0.9, learning rate divided by 4 on a step schedule (sec. 4.1); validation and test
  report face verification on the split's own identities (sec. 4.2), not attribute predictions;
* method ``branching`` (:class:`BranchingFineTuneTask`): one branch (``branch_from``), started from
  the identity network through the suite's ``init_from``;
* :class:`AssembledBranchingNet`: the chosen branches as one model with one shared trunk (Fig. 1);
* face verification (sec. 4.2): :func:`generate_pairs`, :func:`verification_accuracy` (10-fold
  threshold selection on cosine similarities of the 320-d descriptors).

The analyses of the paper (``branch-selection``, the Fig. 3 grid; ``face-verification`` with LFW
``pairs.txt``; ``operating-point``, sec. 4.7) are in :mod:`facebench.benchmarks.analyses.branching`.

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

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from facebench.core.tasks import TARGET_KINDS, TaskSpec
from facebench.lightning_modules.base import FaceAttributeTask, _gather
from facebench.lightning_modules.registry import register_method

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


def verification_accuracy(features: np.ndarray | torch.Tensor, pairs: VerificationPairs) -> dict[str, Any]:
    """Cosine similarity of each pair; per fold, the threshold with the best accuracy on the other
    folds is applied to the fold (sec. 4.2: "select the threshold that provides the best
    verification on 9 splits, then evaluate it on the remaining one"). The threshold search is
    :func:`~facebench.lightning_modules.metrics.tune_thresholds` (criterion accuracy: the midpoint between
    the best ROC vertex and the next lower similarity). Returns the mean and the sample standard
    deviation over folds."""
    from facebench.lightning_modules.metrics import tune_thresholds

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
