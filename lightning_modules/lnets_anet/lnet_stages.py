"""The LNet stages of LNets+ANet (sec. 3.1, 4): ``lnet_plus`` (offline LNet+ stand-in), ``lnet_o``
(whole image -> head-shoulder crop) and ``lnet_s`` (crop -> face box), trained with attribute tags
only, and the clutter-only images of their optional "face present" output."""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from facebench.lightning_modules.lnets_anet.cascade import CascadeStage, read_checkpoint
from facebench.lightning_modules.lnets_anet.localization import resize_square
from facebench.lightning_modules.lnets_anet.networks import LNet, load_pretrained_convs
from facebench.lightning_modules.metrics import evaluate
from facebench.lightning_modules.registry import register_method


def clutter_canvases(n: int, size: int, seed: int) -> torch.Tensor:
    """``uint8 [n, 3, size, size]`` images of SynthFaces' background alone (no person): a flat colour
    and random shapes drawn by the generator's clutter routine (``facebench.datamodules.synthfaces.render_clutter``),
    as many shapes per area as its canvases, 2x supersampled, Gaussian blur of the generator's radius
    range (scaled by ``sqrt(size / 64)``) and sensor noise. Deterministic in ``seed``."""
    from facebench.datamodules.synthfaces import clutter_canvas

    rng = np.random.default_rng([int(seed), 0x10E7])
    out = np.stack([clutter_canvas(size, rng) for _ in range(n)]) if n else np.empty((0, size, size, 3), np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class LNetTrainingStage(CascadeStage):
    """Shared by the stages that train an LNet (``lnet_plus``, ``lnet_o``, ``lnet_s``): the attribute
    loss (sigmoid cross-entropy, sec. 4) on the LNet's input, plus two training aids that are not in
    the paper and default to off:

    * ``clutter_negatives``: with ``lnet.face_logit``, each batch gets ``round(clutter_negatives *
      batch)`` clutter-only images (:func:`clutter_canvases`, from a bank of ``clutter_bank`` images
      rendered at the start of training at the stage's input size) and the face logit learns "face
      present" (1 on every dataset image, 0 on clutter; the clutter has no attribute loss; one
      cross-entropy averaged over all outputs and samples, so the face output weighs as one attribute). This is
      an image-level tag like the attributes (no box); it stands in for what the ImageNet
      pre-training teaches LNet+: background clutter is not what attributes are about.
    * ``activation_l1``: weight of the mean C5 activation added to the loss, so that C5 responds
      only where the evidence is (the paper notes that ``h^(5)`` is sparse, sec. 3.1).
    """

    #: The LNet's input is a crop located by an earlier LNet (clutter images are not cropped).
    crops_input: ClassVar[bool] = False

    def __init__(self, task: Any, *, activation_l1: float = 0.0, clutter_negatives: float = 0.0, clutter_bank: int = 1000,
                 **kwargs: Any):
        if activation_l1 < 0 or clutter_negatives < 0 or clutter_bank < 1:
            raise ValueError(f"{type(self).__name__}: activation_l1 and clutter_negatives must be >= 0 and clutter_bank >= 1")
        self.activation_l1, self.clutter_negatives, self.clutter_bank = float(activation_l1), float(clutter_negatives), int(clutter_bank)
        self._clutter: torch.Tensor | None = None
        super().__init__(task, **kwargs)
        if self.clutter_negatives and not self.lnet_cfg.face_logit:
            raise ValueError(f"{type(self).__name__}: clutter_negatives needs lnet.face_logit: true (the output they train)")

    @property
    def trained_lnet(self) -> LNet:
        raise NotImplementedError

    @property
    def clutter_size(self) -> int:
        """Side of the clutter images, before :meth:`lnet_input` (the loader's image size)."""
        return self.image_size

    def lnet_input(self, images: torch.Tensor) -> torch.Tensor:
        """The trained LNet's input for a batch of loader images."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.trained_lnet(self.lnet_input(image))[:, :self.task.n_logits]

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.clutter_negatives and self._clutter is None:
            self._clutter = clutter_canvases(self.clutter_bank, self.clutter_size, seed=zlib.crc32(self.method_name.encode()))

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not (self.clutter_negatives or self.activation_l1):
            return super().training_loss(batch)
        images = batch["image"]
        n = images.shape[0]
        if self.clutter_negatives:
            assert self._clutter is not None
            pick = torch.randint(len(self._clutter), (max(1, round(self.clutter_negatives * n)),))
            clutter = self._clutter[pick].to(images.device, images.dtype) / 127.5 - 1.0   # the loaders' (0.5, 0.5) normalisation
            if self.crops_input:    # LNet_s: crops of the images; the clutter is rendered at the crop size
                x = self.lnet_input(images)
                x = torch.cat([x, resize_square(clutter, x.shape[-1])])
            else:
                x = self.lnet_input(torch.cat([images, clutter]))
        else:
            x = self.lnet_input(images)
        net = self.trained_lnet
        feats = net.features(x)
        out = net.head(feats)
        if self.clutter_negatives:
            # one sigmoid cross-entropy over the attribute outputs and the face output, averaged over every
            # output of every sample; the clutter images have no attribute terms (weight 0), so the face
            # output weighs as one attribute among the n_logits + 1
            k = self.task.n_logits
            label = batch["label"].reshape(n, -1)[:, :k].to(out.dtype)
            target, weight = torch.zeros_like(out), torch.zeros_like(out)
            target[:n, :k], weight[:n, :k] = label.clamp(min=0), (label >= 0).to(out.dtype)
            target[:n, k], weight[:, k] = 1.0, 1.0
            loss = F.binary_cross_entropy_with_logits(out, target, weight=weight)
            parts = {"face_loss": F.binary_cross_entropy_with_logits(out[:, k], target[:, k])}
        else:
            loss = self.compute_loss(out[:, :self.task.n_logits], batch)
            parts = {}
        if self.activation_l1:
            loss = loss + self.activation_l1 * feats.mean()
        return loss, parts


@register_method("lnet_plus")
class LNetPlusStage(LNetTrainingStage):
    """Offline stand-in for LNet+ (sec. 4), the network whose C1-C5 initialise LNet_o and LNet_s.

    The paper pre-trains LNet+ on ImageNet's 1,000 object categories, which are not available
    offline (and ``pretrained: torchvision`` needs the network). This stage instead trains C1-C5
    with attribute labels (sigmoid cross-entropy) on *aligned* faces, i.e. the same data read with
    ``in_the_wild: false`` (``datamodule_args`` of the suite): the filters become selective for face
    parts before LNet_o is fine-tuned on whole in-the-wild images, which is what the pre-training
    gives the paper's LNets (Fig. 7 (b)). No face box is used. Each training batch is resized to a
    random side in ``scale_range`` times the input size (the faces of in-the-wild images come at
    many scales); the two FC layers on top pool C5 globally (``lnet.pooling`` is forced to
    ``global_max`` here, so any size works) and, as in the paper, are not handed on: the next stage
    (``lnet_o``, ``init_from: lnet_plus``) takes C1-C5 (and their batch norms) only.
    """

    input_size = 64
    default_optimizer = {"name": "AdamW", "lr": 3e-3, "weight_decay": 5e-4}
    default_train_transforms = {"hflip": 0.5}

    def __init__(self, task: Any, *, scale_range: Sequence[float] = (1.0, 2.5), scale_step: int = 16, **kwargs: Any):
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi or scale_step < 1:
            raise ValueError(f"lnet_plus: scale_range must be 0 < low <= high and scale_step >= 1, got {scale_range}, {scale_step}")
        self.scale_range, self.scale_step = (lo, hi), int(scale_step)
        super().__init__(task, **kwargs)

    @property
    def uses_localizer(self) -> bool:
        return False

    def configure_stage_models(self) -> None:
        self.lnet_plus = LNet(self.task.n_logits, self.image_size, replace(self.lnet_cfg, pooling="global_max"), self.in_chans)
        if self.pretrained:
            load_pretrained_convs(self.lnet_plus, self.pretrained)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Attribute probabilities on the (aligned) test images, stored as ``aligned_probs``: they are
        not predictions of the in-the-wild task, so they stay out of the suite's paired comparisons."""
        buf = self._buffers_out.setdefault(dataloader_idx, {})
        for k, v in {"aligned_probs": self.probabilities(batch), "labels": batch["label"], "index": batch["index"]}.items():
            buf.setdefault(k, []).append(v.detach())

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        return evaluate(self.task, arrays["aligned_probs"], arrays["labels"])

    def training_sizes(self) -> list[int]:
        """The input sides a training batch is resized to (multiples of ``scale_step``)."""
        lo, hi = (max(self.scale_step, int(round(f * self.image_size / self.scale_step)) * self.scale_step)
                  for f in self.scale_range)
        return list(range(lo, hi + 1, self.scale_step))

    @property
    def trained_lnet(self) -> LNet:
        return self.lnet_plus

    def lnet_input(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            sizes = self.training_sizes()
            images = resize_square(images, sizes[int(torch.randint(len(sizes), ()))])
        return images


@register_method("lnet_o")
class LNetOStage(LNetTrainingStage):
    """LNet_o (sec. 3.1, 4): C1-C5 (+ LNet+ initialisation when ``pretrained``) and two FC layers
    fine-tuned with attribute labels on whole images; at test time it also proposes the
    head-shoulder crop from its averaged C5 map (eq. 3)."""

    default_optimizer = {"name": "AdamW", "lr": 3e-4, "weight_decay": 5e-4}

    @property
    def uses_localizer(self) -> bool:
        return False

    def configure_stage_models(self) -> None:
        self.lnet_o = LNet(self.task.n_logits, self.lnet_o_size, self.lnet_cfg, self.in_chans)
        if self.pretrained:
            load_pretrained_convs(self.lnet_o, self.pretrained)

    @property
    def trained_lnet(self) -> LNet:
        return self.lnet_o

    def lnet_input(self, images: torch.Tensor) -> torch.Tensor:
        return resize_square(images, self.lnet_o_size)

    def load_init_checkpoint(self, path: str) -> None:
        """From an ``lnet_plus`` stage: C1-C5 and their batch norms (the FC layers start afresh, sec. 4)."""
        state = read_checkpoint(path)
        state = state.get("state_dict", state)
        if not any(k.startswith("lnet_plus.") for k in state):
            return super().load_init_checkpoint(path)
        convs = {k.removeprefix("lnet_plus."): v for k, v in state.items() if k.startswith(("lnet_plus.convs.", "lnet_plus.bns."))}
        own = self.lnet_o.state_dict()
        wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in convs.items() if k not in own or own[k].shape != v.shape]
        if wrong:
            raise ValueError(f"{path}: LNet+'s convolutions differ from LNet_o's ({'; '.join(wrong[:4])}); give both stages "
                             f"the same lnet settings")
        self.lnet_o.load_state_dict(convs, strict=False)

    def on_train_start(self) -> None:
        self.lnet_o_trained.fill_(True)

    def test_boxes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"head_box": self.head_shoulder(images)[0]}


@register_method("lnet_s")
class LNetSStage(LNetTrainingStage):
    """LNet_s (sec. 3.1, 4): fine-tuned with attribute labels on the head-shoulder crops ``x_s`` of the
    frozen LNet_o (from the ``lnet_o`` stage); its averaged C5 map locates the face.

    ``init_from_lnet_o``: start LNet_s's C1-C5 (and batch norms) from the fine-tuned LNet_o (the paper starts both from
    LNet+, sec. 4; without an LNet+ this is the closest substitute). With ``pretrained`` and
    ``init_from_lnet_o: false`` it starts from the pre-trained network instead.
    """

    default_optimizer = {"name": "AdamW", "lr": 3e-4, "weight_decay": 5e-4}

    def __init__(self, task: Any, *, init_from_lnet_o: bool = True, **kwargs: Any):
        self.init_from_lnet_o = init_from_lnet_o
        super().__init__(task, **kwargs)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.lnet_o]

    def configure_stage_models(self) -> None:
        if self.pretrained and not self.init_from_lnet_o:
            load_pretrained_convs(self.lnet_s, self.pretrained)

    def load_init_checkpoint(self, path: str) -> None:
        super().load_init_checkpoint(path)
        if self.init_from_lnet_o:
            self.lnet_s.convs.load_state_dict(self.lnet_o.convs.state_dict())
            self.lnet_s.bns.load_state_dict(self.lnet_o.bns.state_dict())

    def on_fit_start(self) -> None:
        self.require_trained("lnet_o_trained")
        super().on_fit_start()

    def on_train_start(self) -> None:
        self.lnet_s_trained.fill_(True)

    @property
    def trained_lnet(self) -> LNet:
        return self.lnet_s

    crops_input = True

    @property
    def clutter_size(self) -> int:
        return self.lnet_cfg.s_size

    def lnet_input(self, images: torch.Tensor) -> torch.Tensor:
        """Head-shoulder crops ``x_s`` of the frozen LNet_o."""
        with torch.no_grad():
            return self.head_shoulder(images)[1]
