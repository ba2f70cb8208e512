"""The ANet stages of LNets+ANet (sec. 3.2, 4, 5): ``anet_identity`` (identity pre-training),
``anet`` (attribute fine-tuning) and ``lnets_anet`` (the full cascade: multi-view ANet features and
one linear classifier per attribute), with the partition of the training identities between ANet
and the classifiers."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from facebench.core.config import config_from_value
from facebench.lightning_modules.closed_form import ClosedFormTask
from facebench.lightning_modules.lnets_anet.cascade import CascadeStage, plain_config, read_checkpoint
from facebench.lightning_modules.lnets_anet.identity_losses import identity_retrieval, identity_softmax_loss, similarity_loss
from facebench.lightning_modules.lnets_anet.localization import crop_boxes, resize_square, scale_boxes
from facebench.lightning_modules.lnets_anet.networks import ANet, ANetConfig
from facebench.lightning_modules.registry import register_method

#: Dense-evaluation views of the multi-view features (sec. 3.2).
VIEW_NAMES: tuple[str, ...] = ("center", "top_left", "top_right", "bottom_left", "bottom_right", "peak")


def split_identities(train_identities: Sequence[int], classifier_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Partition training identities into ANet's and the linear classifiers' (sec. 5: 8,000 identities
    train ANet, another 1,000 the SVMs), by a seeded permutation."""
    ids = np.asarray(sorted(int(i) for i in train_identities), dtype=np.int64)
    if not 0.0 <= classifier_fraction < 1.0:
        raise ValueError(f"classifier_identity_fraction must be in [0, 1), got {classifier_fraction}")
    n_cls = int(round(classifier_fraction * len(ids)))
    if classifier_fraction > 0 and len(ids) > 1:
        n_cls = min(max(n_cls, 1), len(ids) - 1)
    perm = np.random.default_rng([seed, 15]).permutation(ids)
    return sorted(perm[n_cls:].tolist()), sorted(perm[:n_cls].tolist())


def subset_batch(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The samples of a collated batch where ``keep`` is true."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == keep.shape[0]:
            out[k] = v[keep]
        elif isinstance(v, dict):
            out[k] = {kk: vv[keep] for kk, vv in v.items()}
        else:
            out[k] = v
    return out


class ANetStage(CascadeStage):
    """Shared by the ANet stages: ANet, the frozen LNets when ``localize``, the identity partition.

    Args:
        anet: :class:`ANetConfig` fields; ``None`` inherits the earlier stage's.
        localize: crop ``x_f`` with the LNets (frozen, from the ``lnet_s`` stage); ``false`` feeds the
            image itself (aligned faces). Default: as the earlier stage, on after an ``lnet_s`` stage.
        train_identities: identity ids of the training split (filled in from the datamodule).
        classifier_identity_fraction: share of the training identities held out from ANet for the
            linear classifiers of ``lnets_anet`` (sec. 5: 1,000 of 9,000; default ``1/9``).
        identity_split_seed: seed of that partition. Both are inherited from the earlier stage.
    """

    input_size = 64
    default_train_transforms = {"hflip": 0.5}
    #: The stage optimises ANet (sets the ``anet_trained`` flag).
    trains_anet: ClassVar[bool] = True

    def __init__(self, task: Any, *, anet: dict | None = None, localize: bool | None = None,
                 train_identities: Sequence[int] | None = None, classifier_identity_fraction: float | None = None,
                 identity_split_seed: int | None = None, **kwargs: Any):
        parent = read_checkpoint(kwargs.get("init_checkpoint")).get("hyper_parameters", {})
        anet = plain_config(config_from_value(ANetConfig, anet if anet is not None else parent.get("anet"), "anet"))
        if localize is None:
            localize = bool(parent.get("localize", bool(parent)))
        if classifier_identity_fraction is None:
            classifier_identity_fraction = float(parent.get("classifier_identity_fraction", 1.0 / 9.0))
        if identity_split_seed is None:
            identity_split_seed = int(parent.get("identity_split_seed", 0))
        train_identities = [int(i) for i in (train_identities or [])]
        self.anet_cfg, self.localize = ANetConfig(**anet), bool(localize)
        self.anet_ids, self.classifier_ids = (split_identities(train_identities, classifier_identity_fraction,
                                                               identity_split_seed) if train_identities else ([], []))
        super().__init__(task, **kwargs)

    @classmethod
    def datamodule_kwargs(cls, dm: Any, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("train_identities") is not None:
            return {}
        try:
            return {"train_identities": dm.identity_classes("train")}
        except (ValueError, KeyError):
            return {}

    @property
    def uses_localizer(self) -> bool:
        return self.localize

    def frozen_modules(self) -> list[nn.Module]:
        return [self.lnet_o, self.lnet_s] if self.localize else []

    def configure_models(self) -> None:
        self.register_buffer("anet_identity_ids", torch.tensor(self.anet_ids, dtype=torch.long))
        self.register_buffer("classifier_identity_ids", torch.tensor(self.classifier_ids, dtype=torch.long))
        self.anet = ANet(self.anet_cfg, self.in_chans)
        super().configure_models()

    def reconcile_parent_state(self, state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
        """An earlier ANet stage's identity partition must equal this one's (else ANet would have
        seen the classifiers' identities)."""
        for name in ("anet_identity_ids", "classifier_identity_ids"):
            if name in state:
                theirs = state.pop(name)
                if not torch.equal(theirs.cpu(), getattr(self, name).cpu()):
                    raise ValueError(f"{path}: the earlier stage partitioned the training identities differently ({name}); "
                                     f"give both stages the same data, classifier_identity_fraction and identity_split_seed")
        return state

    def on_fit_start(self) -> None:
        if self.localize:
            self.require_trained("lnet_o_trained", "lnet_s_trained")

    def on_train_start(self) -> None:
        if self.trains_anet:
            self.anet_trained.fill_(True)

    def anet_features(self, images: torch.Tensor) -> torch.Tensor:
        """ANet's FC features of ``x_f`` at its input size."""
        return self.anet(self.face_input(images, self.anet_cfg.input_size))

    def face_input(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """``x_f`` at ``size`` pixels: the LNets' face box with ``face_margin`` (scaled by
        ``size / anet.input_size``, so that ANet's input window sees the face as in training), or the
        image itself when not localising."""
        if not self.localize:
            return resize_square(images, size)
        with torch.no_grad():
            _, face = self.face_boxes(images)
        box = scale_boxes(face, self.loc_cfg.face_margin * size / self.anet_cfg.input_size, square=True)
        return crop_boxes(images, box, size)

    def anet_samples(self, batch: dict[str, Any], ids: torch.Tensor) -> dict[str, Any]:
        """The samples of identities ``ids`` (all samples when the data has no identity partition)."""
        if ids.numel() == 0:
            return batch
        return subset_batch(batch, torch.isin(batch["identity"], ids))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        """ANet trains on ANet's identities only (the classifiers' identities are held out, sec. 5);
        a batch with none of them is skipped."""
        batch = self.anet_samples(batch, self.anet_identity_ids)
        if batch["image"].shape[0] == 0:
            return None
        return super().training_step(batch, batch_idx)


@register_method("anet_identity")
class ANetIdentityStage(ANetStage):
    """ANet pre-training on face identities (sec. 4): softmax over ANet's training identities plus
    ``similarity_weight`` times the similarity loss on the FC features. Validation and test measure
    identity retrieval on the (unseen) identities of those splits; there are no attribute outputs.
    """

    monitor = ("val/identity_nn_accuracy", "max")

    def __init__(self, task: Any, *, similarity_weight: float = 0.05, **kwargs: Any):
        self.similarity_weight = similarity_weight
        super().__init__(task, **kwargs)
        self._val_parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def reference_config(cls) -> dict[str, Any]:
        return {"train_identities": list(range(9000))}   # sec. 5: 8,000 ANet identities (+ 1,000 held out)

    def configure_stage_models(self) -> None:
        self.identity_head = nn.Linear(self.anet_cfg.fc_dim, max(len(self.anet_ids), 1))

    def configure_metrics(self) -> None:
        pass

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.anet_ids:
            raise ValueError("anet_identity: the training split has no identities (identity pre-training needs them)")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.identity_head(self.anet_features(image))

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Identity softmax plus ``similarity_weight`` times the similarity loss (sec. 4)."""
        features = self.anet_features(batch["image"])
        logits = self.identity_head(features)
        softmax_loss, target = identity_softmax_loss(logits, batch["identity"], self.anet_identity_ids)
        pull = similarity_loss(features, batch["identity"])
        return softmax_loss + self.similarity_weight * pull, {
            "identity_loss": softmax_loss, "similarity_loss": pull,
            "identity_accuracy": (logits.argmax(1) == target).float().mean()}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        feats = self.anet_features(batch["image"])
        self._val_parts.append((feats.detach().cpu(), batch["identity"].cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_parts:
            return
        feats = torch.cat([p[0] for p in self._val_parts])
        ids = torch.cat([p[1] for p in self._val_parts])
        self._val_parts = []
        scores = identity_retrieval(feats, ids)
        self.log("val/identity_nn_accuracy", scores["nn_accuracy"], prog_bar=True)
        self.log("val/verification_auroc", scores["verification_auroc"])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        feats = self.anet_features(batch["image"])
        buf = self._buffers_out.setdefault(dataloader_idx, {})
        parts = {"features": feats, "identity": batch["identity"], "labels": batch["label"], "index": batch["index"]}
        for k, v in parts.items():
            buf.setdefault(k, []).append(v.detach())

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        scores = identity_retrieval(torch.as_tensor(arrays["features"]), torch.as_tensor(arrays["identity"]))
        return pd.DataFrame([{"target": "identity", "class": "", "metric": k, "value": v} for k, v in scores.items()],
                            columns=["target", "class", "metric", "value"])


@register_method("anet")
class ANetAttributeStage(ANetStage):
    """ANet fine-tuned with attribute labels (sec. 4) on ``x_f``: an attribute layer on its FC
    (whose weight columns the attribute-grouping analysis clusters, Fig. 10), sigmoid cross-entropy,
    trained on ANet's identities only (the classifiers' identities are held out)."""

    def configure_stage_models(self) -> None:
        self.attribute_head = nn.Linear(self.anet_cfg.fc_dim, self.task.n_logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.attribute_head(self.anet_features(image))


@register_method("lnets_anet")
class LNetsANetClassifier(ClosedFormTask, ANetStage):
    """The full cascade (sec. 3, Fig. 3 (d)) and its linear classifiers (sec. 5).

    ANet (frozen, from the ``anet`` stage) is evaluated densely on the located face ``x_f`` cropped
    ``view_margin`` pixels (at ANet's scale) larger than its input; the FC vectors of ``views``
    (centre, corners, the eq. 5 maximum-response window) are concatenated into ``h_a``; one linear
    classifier per attribute (``classifier``: ``linear_svm`` as the paper, or
    ``logistic_regression``; regularisation ``classifier_c``, one value or a list chosen per attribute
    by identity-grouped cross-validation) is fitted with scikit-learn on the
    training images of the held-out classifier identities, within one training epoch
    (:class:`~facebench.lightning_modules.closed_form.ClosedFormTask`). The
    coefficients (features standardised, folded into the weights) are buffers, so the checkpoint
    holds the whole predictor. Probabilities are the sigmoid of the decision values.
    """

    input_size = 80
    trains_anet = False
    default_train_transforms: ClassVar[dict[str, Any]] = {}

    def __init__(self, task: Any, *, views: Sequence[str] = VIEW_NAMES, view_margin: int = 16,
                 classifier: str = "linear_svm", classifier_c: float | Sequence[float] = (0.001, 0.01, 0.1, 1.0),
                 classifier_max_iter: int = 10000,
                 **kwargs: Any):
        unknown = [v for v in views if v not in VIEW_NAMES]
        if unknown or not views:
            raise ValueError(f"lnets_anet: unknown view(s) {unknown}; allowed: {', '.join(VIEW_NAMES)}")
        if classifier not in ("linear_svm", "logistic_regression"):
            raise ValueError(f"lnets_anet: classifier must be linear_svm or logistic_regression, got {classifier!r}")
        if view_margin < 0 or view_margin % 8:
            raise ValueError(f"lnets_anet: view_margin must be a non-negative multiple of 8 pixels (two C2 cells per side), "
                             f"got {view_margin}")
        self.views, self.view_margin = list(views), int(view_margin)
        self.classifier, self.classifier_max_iter = classifier, int(classifier_max_iter)
        self.classifier_c = [float(c) for c in (classifier_c if isinstance(classifier_c, (list, tuple)) else [classifier_c])]
        if not self.classifier_c or min(self.classifier_c) <= 0:
            raise ValueError(f"lnets_anet: classifier_c must be positive (one value or a list to cross-validate), got {classifier_c}")
        super().__init__(task, **kwargs)

    def configure_stage_models(self) -> None:
        self.attribute_head = nn.Linear(self.anet_cfg.fc_dim, self.task.n_logits)
        dim = len(self.views) * self.anet_cfg.fc_dim
        self.register_buffer("classifier_weight", torch.zeros(self.task.n_logits, dim))
        self.register_buffer("classifier_bias", torch.zeros(self.task.n_logits))
        self.register_buffer("classifier_c_chosen", torch.full((self.task.n_logits,), math.nan))
        self.register_buffer("classifier_fitted", torch.zeros((), dtype=torch.bool))

    def frozen_modules(self) -> list[nn.Module]:
        return super().frozen_modules() + [self.anet, self.attribute_head]

    @property
    def view_size(self) -> int:
        return self.anet_cfg.input_size + self.view_margin if self.localize else self.image_size

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.require_trained("anet_trained")

    def multiview_features(self, images: torch.Tensor) -> torch.Tensor:
        """``h_a`` ``[B, len(views) * fc_dim]``: FC vectors of the views of the dense evaluation."""
        feats, energy = self.anet.dense(self.face_input(images, self.view_size))
        b, ny, nx, dim = feats.shape
        fixed = {"center": ((ny - 1) // 2, (nx - 1) // 2), "top_left": (0, 0), "top_right": (0, nx - 1),
                 "bottom_left": (ny - 1, 0), "bottom_right": (ny - 1, nx - 1)}
        flat = feats.reshape(b, ny * nx, dim)
        picks = []
        for view in self.views:
            if view == "peak":
                where = energy.reshape(b, -1).argmax(1)
            else:
                where = torch.full((b,), fixed[view][0] * nx + fixed[view][1], device=feats.device, dtype=torch.long)
            picks.append(flat[torch.arange(b, device=feats.device), where])
        return torch.cat(picks, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.linear(self.multiview_features(image), self.classifier_weight, self.classifier_bias)

    def collect(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``h_a``, labels and identities of the batch's samples of the classifier identities (``None``
        when it has none)."""
        batch = self.anet_samples(batch, self.classifier_identity_ids)
        if not batch["image"].shape[0]:
            return None
        with torch.no_grad():
            return self.multiview_features(batch["image"]).cpu(), batch["label"].cpu(), batch["identity"].cpu()

    def fit_classifiers(self) -> None:
        """Fit the classifiers on the features collected so far (the loop does it before validation
        and at the end of the epoch)."""
        self.fit_collected()

    def fit(self, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
        """One linear classifier per binary column on the collected features (standardised); with
        several ``classifier_c`` values, each attribute's is chosen by identity-grouped, class-stratified
        3-fold cross-validation (accuracy) on the classifier identities, where each class has at least
        3 identities; otherwise the first value is used."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.exceptions import FitFailedWarning
        from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        x = torch.cat([p[0] for p in parts]).double().numpy()
        y = torch.cat([p[1] for p in parts]).numpy()
        groups = torch.cat([p[2] for p in parts]).numpy()
        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        weight = np.zeros((self.task.n_logits, x.shape[1]))
        bias = np.zeros(self.task.n_logits)
        chosen = np.full(self.task.n_logits, np.nan)
        for col, ycol in zip(*self.task.binary_columns()):
            target = y[:, ycol]
            ok = target >= 0
            positives, total = int((target[ok] == 1).sum()), int(ok.sum())
            if positives in (0, total):   # one class only: predict the (smoothed) prior
                bias[col] = math.log((positives + 1) / (total - positives + 1))
                continue
            if self.classifier == "linear_svm":
                model = LinearSVC(C=self.classifier_c[0], max_iter=self.classifier_max_iter)
            else:
                model = LogisticRegression(C=self.classifier_c[0], max_iter=self.classifier_max_iter)
            # each class on at least 3 identities, so that every training fold of the identity-grouped,
            # class-stratified 3 folds sees both classes (a fold without one fails and scores nan)
            spread = min(len(np.unique(groups[ok][target[ok] == c])) for c in (0, 1))
            search = None
            if len(self.classifier_c) > 1 and spread >= 3:
                search = GridSearchCV(model, {"C": self.classifier_c}, cv=StratifiedGroupKFold(3), scoring="accuracy")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", (FitFailedWarning, UserWarning))
                    search.fit(xs[ok], target[ok], groups=groups[ok])
                if not np.isfinite(search.cv_results_["mean_test_score"]).any():
                    search = None           # no fold could be scored: no choice to make
            if search is not None:
                chosen[col] = search.best_params_["C"]
                model = search.best_estimator_
            else:
                model.fit(xs[ok], target[ok])
                chosen[col] = self.classifier_c[0]
            w = model.coef_[0] / scaler.scale_
            weight[col], bias[col] = w, float(model.intercept_[0]) - float(w @ scaler.mean_)
        self.classifier_weight.copy_(torch.as_tensor(weight, dtype=self.classifier_weight.dtype))
        self.classifier_bias.copy_(torch.as_tensor(bias, dtype=self.classifier_bias.dtype))
        self.classifier_c_chosen.copy_(torch.as_tensor(chosen, dtype=self.classifier_c_chosen.dtype))
        self.classifier_fitted.fill_(True)
