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
  the identity network through the suite's ``init_from``.

The network of Fig. 2 (with the choices the text leaves open) is
:class:`~facebench.lightning_modules.branching_networks.FaceIdentityNetwork`; face verification
(sec. 4.2: :func:`~facebench.lightning_modules.face_verification.generate_pairs`,
:func:`~facebench.lightning_modules.face_verification.verification_accuracy`, 10-fold threshold
selection on cosine similarities of the 320-d descriptors) is
:mod:`facebench.lightning_modules.face_verification`.

The analyses of the paper (``branch-selection``, the Fig. 3 grid, with
:class:`~facebench.benchmarks.analyses.branching.AssembledBranchingNet`, the chosen branches as one
model with one shared trunk, Fig. 1; ``face-verification`` with LFW ``pairs.txt``;
``operating-point``, sec. 4.7) are in :mod:`facebench.benchmarks.analyses.branching`.

**Branch semantics.** ``branch_from: convK`` re-learns convK (with the BN that follows it) and
everything above it; everything below is frozen, BN running statistics included ("the parameters
of the base network are fixed and not altered during fine-tuning", sec. 3.2).
Branching at a 3x3 layer (conv17, conv19, conv21) keeps that module's 1x1 frozen and re-learns its
3x3 and shortcut. ``bottleneck320`` (alias ``conv24`` / ``conv-bn320``) re-learns the bottleneck
and the head, ``fc`` only the head (sec. 3.2: "only the number of units in the final layer
changes").
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from facebench.core.tasks import TARGET_KINDS
from facebench.lightning_modules.base import FaceAttributeTask, _gather
from facebench.lightning_modules.branching_networks import FaceIdentityNetwork, normalize_stages
from facebench.lightning_modules.face_verification import generate_pairs, verification_accuracy
from facebench.lightning_modules.registry import register_method

PAPER_IDENTITIES = 10_000   # "about 10K identities" (sec. 4.1), for `facebench list methods`


class _BranchingBase(FaceAttributeTask):
    """Architecture arguments shared by the identity network and its branches (see
    :mod:`facebench.lightning_modules.branching_networks`): ``stem_channels``, ``stages`` (``[[width, modules, stride], ...]`` for stages b-f),
    ``bottleneck_dim``, ``init_std``."""

    paper = 'Baumgartner & Culpepper, "Deep Architectures for Face Attributes" (Flickr / Yahoo), 2016'
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
        self.arch = {"stem_channels": stem_channels, "stages": normalize_stages(stages), "bottleneck_dim": bottleneck_dim,
                     "init_std": init_std}
        super().__init__(task, **kwargs)

    def build_network(self, num_classes: int) -> FaceIdentityNetwork:
        return FaceIdentityNetwork(num_classes, in_chans=self.in_chans, **self.arch)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """320-d face descriptors (sec. 4.2)."""
        return self.net.features(image)


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
