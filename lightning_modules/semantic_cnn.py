"""The semantic-features CNN ("Recognizing semantic features in faces using deep learning",
``papers/semantic_facial_features_fer_vv.txt``) and its shape-regression variant.

Registered names:

* ``semantic_cnn``: the network of Section 4.1.1 for binary, multi-class, ordinal and multi-label
  targets, trained as in Section 3.4; every architectural choice that the paper sweeps (depth and
  width, Figure 7; LCN / max-pool placement, Figure 8; dropout, Figure 9) is a constructor
  argument, so a suite ``grid:`` reproduces a sweep. ``per_task_networks: true`` trains one
  network per target inside one module (the paper's individual networks of Section 4.2.7),
  ``sigmoid_all_classes: true`` the paper's joint network over all classes as non-exclusive labels.
* ``semantic_cnn_shape``: the AAM regression of Section 4.2.6 on landmark data: the same network
  regresses a PCA-compressed shape vector plus the in-plane angle; reported as cosine similarity
  and angle error.

The networks (:class:`~facebench.lightning_modules.semantic_cnn_networks.SemanticCNN`, its LCN and
per-pixel standardisation layers) are in :mod:`facebench.lightning_modules.semantic_cnn_networks`,
the AAM shape model of ``semantic_cnn_shape`` in :mod:`facebench.lightning_modules.shape_model`;
this module holds the two methods that train them.

The paper's first-layer similarity analysis (Section 4.2.7, Figure 16) is
``facebench analyze first-layer-similarity`` (:mod:`facebench.benchmarks.analyses.semantic_cnn`).

Preprocessing (Section 3.3): face detection / alignment is the datamodule's job
(``datamodules/preprocess.py``). Global contrast normalisation has two parts: the per-image part
(subtract the image's mean, scale it to a fixed norm, pylearn2's ``GlobalContrastNormalization``
with scale 100) is the datamodule's ``preprocess: {global_contrast: true}``, which the ``fer`` and
``celeba`` suites set for this method; the per-pixel part (subtract each pixel's training-set mean,
divide by its standard deviation) is this method's first layer,
:class:`~facebench.lightning_modules.semantic_cnn_networks.PixelStandardize`, fitted on the training
split when fitting starts (``pixel_standardize``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import CosineSimilarity, MeanAbsoluteError

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.registry import register_method
from facebench.lightning_modules.semantic_cnn_networks import PixelStandardize, SemanticCNN
from facebench.lightning_modules.shape_model import PCAShapeModel, fit_shape_model, shape_metrics, wrapped_degrees

ALL_TARGET_KINDS = frozenset({"binary", "multiclass", "multilabel", "ordinal"})


# ------------------------------------------------------------------------------------------------
# the classification method
# ------------------------------------------------------------------------------------------------
def class_indicators(task: TaskSpec, labels: torch.Tensor, soft: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 targets and a validity mask in the logit layout: every class of every target as one
    non-exclusive label (Section 4.2.7's 37 labels); rater distributions replace the one-hot rows
    of targets named in ``soft``."""
    target = torch.zeros(labels.shape[0], task.n_logits, device=labels.device)
    valid = torch.zeros_like(target, dtype=torch.bool)
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        y = labels[:, ys]
        if t.is_sigmoid:
            target[:, ls], valid[:, ls] = y.clamp(min=0).float(), y >= 0
        elif soft and t.name in soft:   # an all-zero distribution marks an image without a label
            q = soft[t.name].float()
            target[:, ls], valid[:, ls] = q, (q.sum(dim=1) > 0)[:, None]
        else:
            y0 = y[:, 0]
            target[:, ls] = F.one_hot(y0.clamp(min=0), t.n_classes).float()
            valid[:, ls] = (y0 >= 0)[:, None]
    return target, valid


@register_method("semantic_cnn")
class SemanticFeaturesCNN(FaceAttributeTask):
    """The semantic-features CNN (Section 4.1.1) trained as in Section 3.4: SGD with momentum,
    negative log-likelihood, learning rate 0.0025 decreased linearly to 0.001 over 50 epochs
    (``LinearLR`` with ``end_factor`` 0.4), batches of 100 (the datamodule's ``batch_size``), and
    checkpoint selection / early stopping on the validation accuracy (the paper stops on the
    misclassification rate).

    Network arguments: see :class:`SemanticCNN`. Others:

    * ``per_task_networks``: one separate network per target (the paper's individual networks),
      instead of one joint network with all outputs. As if each were trained alone, the training
      loss is the *sum* of the per-target losses (each network gets its own loss's gradient at the
      full learning rate; a mean would train each at ``lr / T``) and each network keeps the weights
      of its own best validation epoch (its own accuracy: :mod:`facebench.lightning_modules.selection`);
    * ``sigmoid_all_classes``: the joint network of Section 4.2.7: every class of every target is a
      non-exclusive label with a sigmoid output (binary cross-entropy averaged over all labels);
      probabilities of a multi-class slice are its sigmoids normalised to sum to 1; with
      ``soft_targets`` the rater distributions are the per-class sigmoid targets. Default: the
      task's loss (sigmoid for binary targets, softmax for multi-class / ordinal ones: Section 4.1.1's
      softmax; a 2-way softmax equals a sigmoid on one logit);
    * ``pixel_standardize``: the per-pixel standardisation of Section 3.3, fitted on the training
      split at the start of fitting.

    Open details: the momentum (not given) is 0.9 and there is no weight decay (none mentioned).
    Memory: the default FC layer has 128*15*15*3072 = 88.5M weights per network, so
    ``per_task_networks`` is for a handful of targets, not 40.
    """

    paper = ('"Recognizing semantic features in faces using deep learning" '
             "(papers/semantic_facial_features_fer_vv.txt)")
    task_kinds = ALL_TARGET_KINDS
    input_size = 48
    input_channels = 1
    default_optimizer = {"name": "SGD", "lr": 0.0025, "momentum": 0.9}
    default_scheduler = {"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.4, "total_iters": 50,
                         "interval": "epoch"}
    monitor = ("val/mean_accuracy", "max")

    def __init__(self, task: Any, *, conv_channels: Sequence[int] = (64, 64, 128), kernel_sizes: Sequence[int] = (5, 5, 4),
                 depth: int | None = None, width_multiplier: float = 1.0, fc_units: int = 3072, fc_dropout: float = 0.2,
                 conv_dropout: float = 0.0, lcn_after: int | Sequence[int] | None = (1,),
                 pool_after: int | Sequence[int] | None = (1,), pool_size: int = 3, pool_stride: int = 2,
                 lcn_kernel_size: int = 9, lcn_sigma: float = 2.0, per_task_networks: bool = False,
                 sigmoid_all_classes: bool = False, pixel_standardize: bool = True, **kwargs: Any):
        self.network_args = dict(conv_channels=tuple(conv_channels), kernel_sizes=tuple(kernel_sizes), depth=depth,
                                 width_multiplier=width_multiplier, fc_units=fc_units, fc_dropout=fc_dropout,
                                 conv_dropout=conv_dropout, lcn_after=lcn_after, pool_after=pool_after,
                                 pool_size=pool_size, pool_stride=pool_stride, lcn_kernel_size=lcn_kernel_size,
                                 lcn_sigma=lcn_sigma)
        self.per_task_networks, self.sigmoid_all_classes = per_task_networks, sigmoid_all_classes
        self.pixel_standardize = pixel_standardize
        super().__init__(task, **kwargs)

    # -- model -----------------------------------------------------------------------------------
    def output_sizes(self) -> list[int]:
        """Outputs of each network: one entry per target (per-task networks) or one for all."""
        if self.per_task_networks:
            return [t.n_logits for t in self.task.targets]
        return [self.task.n_logits]

    def configure_models(self) -> None:
        """One network per entry of :meth:`output_sizes`. Every per-task network is drawn from the
        same RNG state, so it starts from the weights a separate run of the same seed would: the
        paper's individual networks, whose first layers Figure 16 compares index by index."""
        self.input_norm = PixelStandardize(self.in_chans, self.image_size)
        rng_state = torch.get_rng_state()
        networks = []
        for n_outputs in self.output_sizes():
            torch.set_rng_state(rng_state)
            networks.append(SemanticCNN(self.in_chans, self.image_size, n_outputs, **self.network_args))
        self.networks = nn.ModuleList(networks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(image)
        return torch.cat([net(x) for net in self.networks], dim=1)

    def independent_networks(self) -> list[tuple[nn.Module, list[int]]]:
        """Per-task networks: network ``i`` predicts target ``i`` (none in joint mode)."""
        return [(net, [i]) for i, net in enumerate(self.networks)] if self.per_task_networks else []

    def on_fit_start(self) -> None:
        """Fit the per-pixel statistics on the training split (once; restored from checkpoints)."""
        if not self.pixel_standardize or bool(self.input_norm.fitted):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "dataset"):
            rank_zero_warn(f"{self.method_name}: no facebench datamodule to fit the per-pixel standardisation on; "
                           f"the input is used as it comes (set pixel_standardize: false to silence this)")
            return
        loader = torch.utils.data.DataLoader(dm.dataset("train", train=False), batch_size=256,
                                             num_workers=getattr(dm, "num_workers", 0))
        self.input_norm.fit(batch["image"] for batch in loader)

    # -- loss and probabilities ------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if not self.sigmoid_all_classes:
            return super().compute_loss(logits, batch)
        soft = batch.get("soft_label") if self.use_soft_targets else None
        target, valid = class_indicators(self.task, batch["label"], soft)
        if not valid.any():
            return logits.sum() * 0.0
        per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        return (per * valid).sum() / valid.sum()

    def probabilities(self, batch: dict[str, Any], logits: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits(batch) if logits is None else logits
        if not self.sigmoid_all_classes:
            return self.task.probabilities(logits)
        p = torch.sigmoid(logits.float())
        for t, ls in zip(self.task.targets, self.task.logit_slices):
            if t.is_softmax:
                p[:, ls] = p[:, ls] / p[:, ls].sum(dim=1, keepdim=True).clamp_min(1e-12)
        return p


# ------------------------------------------------------------------------------------------------
# shape regression (Section 4.2.6); the shape model is :mod:`facebench.lightning_modules.shape_model`
# ------------------------------------------------------------------------------------------------
@register_method("semantic_cnn_shape")
class SemanticShapeCNN(SemanticFeaturesCNN):
    """AAM modelling with the semantic-features CNN (Section 4.2.6): the network of Section 4.1.1
    regresses a PCA-compressed shape vector plus the in-plane angle of the face's landmarks
    (``batch["landmarks"]``, any number of points), trained with the mean squared error (Section
    3.4 stops on the validation MSE: ``monitor`` is ``val/loss``).

    ``shape_model`` (the output of :func:`fit_shape_model`) is fitted on the training split's
    landmarks by :meth:`datamodule_kwargs` before the model is built, keeping ``shape_components``
    modes; the targets are the parameters divided by the square root of their variance and the
    angle divided by its training standard deviation (so that every output has unit scale);
    ``angle_weight`` weighs the angle's squared error against the shape's.

    Differences from the paper, by necessity: the AAM's appearance (texture) part is not modelled
    (datasets here carry landmarks, not AAM fits), and with 2-D landmarks the pose is the in-plane
    angle instead of the two out-of-plane angles. The paper trains on synthetic faces (exact AAM
    labels) and tests on real ones; SynthFaces' exact landmarks play the synthetic part.
    """

    needs_landmarks = True
    monitor = ("val/loss", "min")

    def __init__(self, task: Any, *, shape_model: dict[str, Any] | None = None, shape_components: int = 20,
                 n_landmarks: int = 68, angle_weight: float = 1.0, **kwargs: Any):
        for key in ("per_task_networks", "sigmoid_all_classes"):
            if kwargs.get(key):
                raise ValueError(f"semantic_cnn_shape: {key} applies to classification (semantic_cnn) only")
        self.shape_fit, self.shape_components, self.n_landmarks, self.angle_weight = \
            shape_model, shape_components, n_landmarks, angle_weight
        super().__init__(task, **kwargs)

    @classmethod
    def datamodule_kwargs(cls, dm: Any, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("shape_model"):
            return {}
        table = dm.tables.get("train")
        if table is None or table.landmarks is None:
            raise ValueError(f"semantic_cnn_shape: dataset {getattr(dm, 'registered_name', '?')!r} has no landmarks in "
                             f"its train split (CelebA needs list_landmarks_align_celeba.txt; SynthFaces has them)")
        return {"shape_model": fit_shape_model(table.landmarks, int(args.get("shape_components", 20)))}

    def output_sizes(self) -> list[int]:
        return [self.shape_pca.n_components + 1]

    def configure_models(self) -> None:
        self.shape_pca = PCAShapeModel(self.n_landmarks, self.shape_components, self.shape_fit)
        super().configure_models()

    def configure_metrics(self) -> None:
        self.val_cosine = CosineSimilarity(reduction="mean")
        self.val_angle_error = MeanAbsoluteError()

    def shape_targets(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "landmarks" not in batch:
            raise ValueError("semantic_cnn_shape: the batch has no 'landmarks' (does the dataset provide them?)")
        if not bool(self.shape_pca.fitted):
            raise ValueError("semantic_cnn_shape: the shape model is not fitted; pass shape_model (fit_shape_model) or "
                             "train through the runner, which fits it on the training landmarks")
        with torch.no_grad():
            return self.shape_pca.encode(batch["landmarks"].to(self.device))

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        enc = self.shape_targets(batch)
        target = self.shape_pca.standardize(enc["params"], enc["angle"])
        weights = torch.ones(target.shape[1], device=target.device)
        weights[-1] = self.angle_weight
        return (((logits.float() - target) ** 2) * weights).sum(dim=1).mean() / weights.sum()

    def predicted_and_true(self, batch: dict[str, Any], logits: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, M + 1]`` rows (shape params, angle in degrees), prediction and ground truth."""
        logits = self.logits(batch) if logits is None else logits
        params, angle = self.shape_pca.unstandardize(logits.float())
        enc = self.shape_targets(batch)
        return (torch.cat([params, torch.rad2deg(angle)[:, None]], dim=1),
                torch.cat([enc["params"], torch.rad2deg(enc["angle"])[:, None]], dim=1))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.logits(batch)
        self.log("val/loss", self.compute_loss(logits, batch), prog_bar=True, on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        pred, true = self.predicted_and_true(batch, logits)
        self.val_cosine.update(pred[:, :-1], true[:, :-1])
        self.val_angle_error.update(wrapped_degrees(torch.deg2rad(pred[:, -1] - true[:, -1])), torch.zeros_like(pred[:, -1]))

    def on_validation_epoch_end(self) -> None:
        self.log("val/cosine_similarity", self.val_cosine.compute())
        self.log("val/angle_error_deg", self.val_angle_error.compute())
        self.val_cosine.reset()
        self.val_angle_error.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        pred, true = self.predicted_and_true(batch)
        buf = self._buffers_out.setdefault(dataloader_idx, {})
        for k, v in {"shape_pred": pred, "shape_true": true, "labels": batch["label"], "index": batch["index"]}.items():
            buf.setdefault(k, []).append(v.detach())

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        params, angle = self.shape_pca.unstandardize(self.logits(batch).float())
        return torch.cat([params, torch.rad2deg(angle)[:, None]], dim=1)

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        values = shape_metrics(torch.as_tensor(arrays["shape_pred"]), torch.as_tensor(arrays["shape_true"]))
        return pd.DataFrame([{"target": t, "class": "", "metric": m, "value": v} for (t, m), v in values.items()],
                            columns=["target", "class", "metric", "value"])
