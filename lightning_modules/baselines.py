"""Reference methods: the majority-class baseline and a timm backbone with one logit per output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.closed_form import ClosedFormTask
from facebench.lightning_modules.registry import register_method


@register_method("majority")
class MajorityBaseline(ClosedFormTask):
    """Predicts each target's training prior for every image: the "Baseline" column of the
    MCNN-AUX paper's Tables 2 and 3 (always the majority class; AUROC 0.5 by construction).

    It runs through the ordinary loop: one pass over the training split counts the labels
    (summed across DDP ranks), nothing is optimised.
    """

    paper = 'none: the majority-class baseline (the "Baseline" column of Hand & Chellappa, AAAI 2017, Tables 2-3)'
    task_kinds = frozenset({"binary", "multiclass", "multilabel", "ordinal"})

    def configure_models(self) -> None:
        self.register_buffer("counts", torch.zeros(self.task.n_logits, dtype=torch.float64))
        self.register_buffer("totals", torch.zeros(self.task.n_logits, dtype=torch.float64))
        self.register_buffer("prior_logits", torch.zeros(self.task.n_logits))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.prior_logits.unsqueeze(0).expand(image.shape[0], -1)

    def probabilities(self, batch: dict[str, Any], logits: torch.Tensor | None = None) -> torch.Tensor:
        # one probability vector, repeated: exactly equal scores (AUROC exactly 0.5)
        prior = self.task.probabilities(self.prior_logits.unsqueeze(0))
        return prior.expand(batch["image"].shape[0], -1).contiguous()

    def collect(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per logit column: (positives of a 0/1 column or samples of a class, labelled samples)."""
        y = batch["label"].cpu()
        counts = torch.zeros(self.task.n_logits, dtype=torch.float64)
        totals = torch.zeros(self.task.n_logits, dtype=torch.float64)
        for t, ls, ys in zip(self.task.targets, self.task.logit_slices, self.task.label_slices):
            yt = y[:, ys]
            if t.is_sigmoid:
                valid = (yt >= 0).double()
                counts[ls] = ((yt == 1).double() * valid).sum(0)
                totals[ls] = valid.sum(0)
            else:
                v = yt[:, 0]
                v = v[v >= 0]
                counts[ls] = torch.bincount(v, minlength=t.n_classes).double()
                totals[ls] = float(len(v))
        return counts, totals

    def fit(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Training prior from the epoch's counts, summed over DDP ranks (kept when nothing is labelled)."""
        counts = self.trainer.strategy.reduce(sum(p[0] for p in parts).to(self.device), reduce_op="sum")
        totals = self.trainer.strategy.reduce(sum(p[1] for p in parts).to(self.device), reduce_op="sum")
        if float(totals.sum()) == 0:
            return
        self.counts.copy_(counts.to(self.counts))
        self.totals.copy_(totals.to(self.totals))
        prior = (self.counts / self.totals.clamp(min=1)).clamp(1e-6, 1 - 1e-6)
        logits = torch.empty_like(prior)
        for t, ls in zip(self.task.targets, self.task.logit_slices):
            p = prior[ls]
            logits[ls] = torch.log(p / (1 - p)) if t.is_sigmoid else torch.log(p)
        self.prior_logits.copy_(logits.float())


@register_method("timm")
class TimmBaseline(FaceAttributeTask):
    """A modern baseline: any timm backbone with one output per logit of the task, trained with the
    task's sigmoid / softmax cross-entropy (AdamW, cosine schedule).

    Args:
        backbone: a timm model name (``timm.list_models()``), default ``resnet18``.
        pretrained: load timm's ImageNet weights (needs the network or a local ``pretrained_file``).
        pretrained_file: a local weights file for the backbone (offline pre-training).
        drop_rate: dropout before the classifier.
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``{patch_size: 8}`` for a ViT at a
            small input, ``drop_path_rate``).

    The network input size is passed to timm as ``img_size`` for the models whose layers depend on it
    (vision transformers, Swin, ...), so any backbone works at any ``input_size``; convolutional
    models, which take no such argument, are created without it.
    """

    paper = "none: a modern baseline on timm backbones (PyTorch Image Models)"
    task_kinds = frozenset({"binary", "multiclass", "multilabel", "ordinal"})

    def __init__(self, task: Any, *, backbone: str = "resnet18", pretrained: bool = False,
                 pretrained_file: str | None = None, drop_rate: float = 0.0, model_kwargs: dict[str, Any] | None = None,
                 **kwargs: Any):
        self.backbone_name, self.pretrained, self.pretrained_file, self.drop_rate = backbone, pretrained, pretrained_file, drop_rate
        self.model_kwargs = dict(model_kwargs or {})
        super().__init__(task, **kwargs)

    def configure_models(self) -> None:
        self.net = create_timm_model(self.backbone_name, pretrained=self.pretrained, pretrained_file=self.pretrained_file,
                                     img_size=self.image_size, num_classes=self.task.n_logits, in_chans=self.in_chans,
                                     drop_rate=self.drop_rate, **self.model_kwargs)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk: every parameter but the classifier head's (multi-task gradient methods)."""
        head = {id(p) for p in self.net.get_classifier().parameters()}
        return [p for p in self.net.parameters() if id(p) not in head]

    def shared_representation(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The classifier's input (timm's pre-logits features) and the classifier as the heads
        (``mtl: {gradients: representation}``)."""
        features = self.net.forward_head(self.net.forward_features(batch["image"]), pre_logits=True)
        return features, self.net.get_classifier()


def create_timm_model(name: str, *, pretrained: bool = False, pretrained_file: str | None = None,
                      img_size: int | None = None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with a one-line error when pre-trained weights cannot be fetched offline.
    ``img_size`` goes to the models whose constructor takes it (ViTs and other models with
    size-dependent layers); the others are built without it (their layers do not depend on it)."""
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ValueError(f"timm has no model {name!r} (see timm.list_models())")
    if pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
        pretrained = True
    try:
        if img_size is not None:
            try:
                return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as exc:  # network / hub errors come in many types
        if not pretrained:
            raise
        raise RuntimeError(f"could not load pre-trained weights for timm model {name!r} ({type(exc).__name__}); "
                           f"this machine may be offline: set pretrained: false or give pretrained_file: <local weights>") from None
