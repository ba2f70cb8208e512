"""The shared base of the LNets+ANet Lightning stages (sec. 3, Fig. 3): the two LNets in a stage,
the coarse-to-fine localisation cascade (sec. 3.1), the checkpoint hand-off between stages with
configuration inheritance, and the test-time box collection and localisation measures."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from facebench.core.config import config_from_value
from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.lnets_anet.localization import (LocalizationConfig, calibrate_scale, crop_boxes, densest_region,
                                                       localization_rows, region_box, region_moments_box, resize_square,
                                                       scale_boxes)
from facebench.lightning_modules.lnets_anet.networks import LNet, LNetConfig
from facebench.lightning_modules.metrics import evaluate


def plain_config(cfg: Any) -> dict[str, Any]:
    """A config dataclass as YAML-friendly plain values (lists, not tuples)."""
    def conv(v: Any) -> Any:
        return [conv(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {k: conv(v) for k, v in asdict(cfg).items()}


def read_checkpoint(path: str | None) -> dict[str, Any]:
    """An earlier stage's checkpoint (``init_checkpoint``), memory-mapped on the CPU; ``{}`` without one."""
    if not path:
        return {}
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


class CascadeStage(FaceAttributeTask):
    """Shared machinery of the LNets+ANet stages: the LNets (trained or frozen), localisation,
    checkpoint hand-off with configuration inheritance, box collection and localisation rows.

    Args (beyond :class:`FaceAttributeTask`'s):
        lnet: :class:`LNetConfig` fields; ``None`` inherits the earlier stage's (``init_checkpoint``).
        localization: :class:`LocalizationConfig` fields, merged over the earlier stage's.
        pretrained: LNet+ initialisation of the LNet trained in this stage (``"torchvision"`` or a
            local weights file; default random initialisation).
        calibrate_face_scale: at test time, multiply ``localization.face_scale`` by the factor in
            :data:`FACE_SCALE_GRID` that maximises recall@iou0.5 of the face boxes on the
            ``val`` split (which must be evaluated), and apply it to every split's face boxes. The
            response region's extent is not the annotated face box (whose definition, e.g. how much
            forehead, is a dataset convention); this is the one use of boxes outside the measures,
            and on the validation split only. The factor is reported as ``face_box/face_scale``.
    """

    paper = 'Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015'
    task_kinds = frozenset({"binary"})
    input_size = 227
    #: Config arguments inherited from the earlier stage's checkpoint when not given.
    inherited: ClassVar[tuple[str, ...]] = ("lnet", "localization")
    #: Flags (buffers) a stage sets when it trains a network, checked by the stages that need it.
    trained_flags: ClassVar[tuple[str, ...]] = ("lnet_o_trained", "lnet_s_trained", "anet_trained")

    def __init__(self, task: Any, *, lnet: dict | None = None, localization: dict | None = None,
                 pretrained: str | None = None, calibrate_face_scale: bool = False, **kwargs: Any):
        parent = read_checkpoint(kwargs.get("init_checkpoint")).get("hyper_parameters", {})
        self.calibrate_face_scale = bool(calibrate_face_scale)
        lnet = plain_config(config_from_value(LNetConfig, lnet if lnet is not None else parent.get("lnet"), "lnet"))
        localization = plain_config(config_from_value(
            LocalizationConfig, {**(parent.get("localization") or {}), **(localization or {})}, "localization"))
        self.lnet_cfg, self.loc_cfg = LNetConfig(**lnet), LocalizationConfig(**localization)
        self.pretrained = pretrained
        self._parent_hparams = parent
        super().__init__(task, **kwargs)

    # -- which networks -----------------------------------------------------------------------------
    @property
    def uses_localizer(self) -> bool:
        return True

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def configure_models(self) -> None:
        for flag in self.trained_flags:
            self.register_buffer(flag, torch.zeros((), dtype=torch.bool))
        if self.uses_localizer:
            self.lnet_o = LNet(self.task.n_logits, self.lnet_o_size, self.lnet_cfg, self.in_chans)
            self.lnet_s = LNet(self.task.n_logits, self.lnet_cfg.s_size, self.lnet_cfg, self.in_chans)
        self.configure_stage_models()
        for m in self.frozen_modules():
            m.requires_grad_(False)

    def configure_stage_models(self) -> None:
        """The stage's own layers (after the LNets)."""

    @property
    def lnet_o_size(self) -> int:
        return self.lnet_cfg.o_size or self.image_size

    def load_init_checkpoint(self, path: str) -> None:
        """Load every tensor of the earlier stage whose name exists here; a name whose shape differs
        is a configuration mismatch between the stages and an error."""
        state = read_checkpoint(path)
        state = self.reconcile_parent_state(dict(state.get("state_dict", state)), path)
        own = self.state_dict()
        wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
        if wrong:
            raise ValueError(f"{path}: the earlier stage's networks differ from this stage's configuration "
                             f"({'; '.join(wrong[:4])}); give both stages the same lnet / anet settings")
        matched = {k: v for k, v in state.items() if k in own}
        if not matched:
            raise ValueError(f"{path}: no network of {type(self).__name__} in this checkpoint (is it an earlier stage?)")
        self.load_state_dict(matched, strict=False)

    def reconcile_parent_state(self, state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
        """Check (and drop) entries of the earlier stage's state that are not weights to load."""
        return state

    def require_trained(self, *flags: str) -> None:
        missing = [f for f in flags if not bool(getattr(self, f))]
        if missing:
            nets = ", ".join(f.removesuffix("_trained") for f in missing)
            raise ValueError(f"{self.method_name}: {nets} not trained; chain this stage after the stage that trains it "
                             f"(init_from in the suite){' or set localize: false for aligned faces' if 'anet' not in nets else ''}")

    # -- localisation -------------------------------------------------------------------------------
    def _locate(self, lnet: LNet, images: torch.Tensor, size: int) -> torch.Tensor:
        offset, stride = lnet.cell_geometry()
        response = lnet.response_map(resize_square(images, size))
        region = densest_region(response, self.loc_cfg)
        if self.loc_cfg.box == "moments":
            return region_moments_box(response, region, size, offset, stride)
        return region_box(region, size, offset, stride)

    def head_shoulder(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LNet_o on the whole image -> (square head-shoulder box (normalised), crops ``x_s``)."""
        box = scale_boxes(self._locate(self.lnet_o, images, self.lnet_o_size), self.loc_cfg.head_margin, square=True)
        return box, crop_boxes(images, box, self.lnet_cfg.s_size)

    def face_boxes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The coarse-to-fine cascade (Fig. 3 (a, b)): (LNet_o's head-shoulder box, LNet_s's face
        box), both normalised ``(x, y, w, h)`` in the input image."""
        head, crops = self.head_shoulder(images)
        inner = scale_boxes(self._locate(self.lnet_s, crops, self.lnet_cfg.s_size), self.loc_cfg.face_scale)
        face = torch.cat([head[:, :2] + inner[:, :2] * head[:, 2:], inner[:, 2:] * head[:, 2:]], 1)
        return head, face

    def test_boxes(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The boxes this stage proposes for a test batch (compared with ``batch["box"]``)."""
        if not self.uses_localizer:
            return {}
        head, face = self.face_boxes(images)
        return {"head_box": head, "face_box": face}

    # -- evaluation ---------------------------------------------------------------------------------
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if "box" not in batch:
            return
        with torch.no_grad():
            boxes = self.test_boxes(batch["image"])
        if boxes:
            buf = self._buffers_out[dataloader_idx]
            buf.setdefault("true_box", []).append(batch["box"].float() / batch["image"].shape[-1])
            for k, v in boxes.items():
                buf.setdefault(k, []).append(v.detach().float())

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.calibrate_face_scale and any("face_box" in c for c in self.collected.values()):
            val = self.collected.get("val")
            if val is None or "face_box" not in val or "true_box" not in val:
                raise ValueError(f"{self.method_name}: calibrate_face_scale needs the val split with face boxes among the "
                                 f"evaluated splits (evaluation.splits)")
            factor = calibrate_scale(val["face_box"], val["true_box"])
            for arrays in self.collected.values():
                if "face_box" in arrays:
                    arrays["face_box"] = scale_boxes(torch.as_tensor(arrays["face_box"]), factor).numpy()
                    arrays["face_scale"] = np.full(len(arrays["face_box"]), self.loc_cfg.face_scale * factor)

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame | None:
        loc = localization_rows(arrays)
        if loc.empty:
            return None
        return pd.concat([evaluate(self.task, arrays["probs"], arrays["labels"]), loc], ignore_index=True)
