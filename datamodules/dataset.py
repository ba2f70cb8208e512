"""The base ``Dataset`` of every datamodule (:class:`FaceDataset`): one split's :class:`SampleTable`
read into sample dicts (image, labels, identity, votes, landmarks, box), with the framing of each
sample's network input (:func:`crop_boxes`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from facebench.datamodules.cache import StoredGeometry, StoredImages, box_to_stored, plan_row, prescale, to_stored
from facebench.core.tasks import MISSING
from facebench.datamodules.formats import DatasetFormatError
from facebench.datamodules.image_files import load_image
from facebench.datamodules.table import SampleTable
from facebench.datamodules.transforms import FaceTransform


def crop_boxes(table: SampleTable, crop: str, box_margin: float) -> np.ndarray | None:
    """``[N, 4]`` (x, y, w, h) source region each sample's network input frames, or ``None`` (whole
    images): the per-image alignment (``extra["align_box"]``) when there is one, else with
    ``crop="box"`` the face box scaled by ``box_margin`` about its centre."""
    if "align_box" in table.extra:
        return np.asarray(table.extra["align_box"], dtype=np.float64)
    if crop == "box" and table.boxes is not None:
        b = np.asarray(table.boxes, dtype=np.float64)
        x, y, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        m = box_margin
        return np.stack([x + w / 2 - w * m / 2, y + h / 2 - h * m / 2, w * m, h * m], axis=1)
    return None


class FaceDataset(Dataset):
    """A split of a face dataset: returns ``{"image", "label", "identity", "index", ...}`` dicts.

    ``crop`` chooses what the network sees: ``"image"`` the whole (aligned) image, ``"box"`` the
    face box of each sample scaled by ``box_margin`` (in-the-wild images). A per-image alignment
    (``table.extra["align_box"]`` / ``["align_angle"]``, see :mod:`facebench.datamodules.preprocess`) takes
    precedence. ``normalizer`` maps the image tensor after the transform (global contrast
    normalisation, training-mean subtraction). An image that fails to decode raises in ``strict``
    mode; otherwise it is replaced by a blank image whose labels are all missing (``-1``, ignored by
    losses and metrics) and a warning names the file.

    Images go through two stages (:mod:`facebench.datamodules.cache`): stage 1 (:meth:`stage1`: decode and
    pre-resize to the stored ``geometry``, or read it from the image cache ``stored``), then the
    per-sample warp of ``transform``. ``output="stored"`` returns stage 1 only (``uint8`` image,
    coordinates in stored pixels, ``stored_size``, ``crop_box``, ``angle``, ``epoch``) for
    :class:`~facebench.datamodules.batch_augment.BatchAugment` to warp on the batch.
    """

    def __init__(self, table: SampleTable, root: Path, transform: FaceTransform, *, crop: str = "image",
                 box_margin: float = 1.0, augment_seed: int = 0, landmarks: bool = True, strict: bool = False,
                 normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 geometry: StoredGeometry | None = None, stored: StoredImages | None = None, output: str = "tensor"):
        self.table, self.root, self.transform, self.landmarks = table, Path(root), transform, landmarks
        self.crop, self.box_margin, self.augment_seed = crop, box_margin, augment_seed
        self.strict, self.normalizer = strict, normalizer
        cfg = transform.cfg
        self.geometry = geometry or StoredGeometry.for_input(cfg.image_size, cfg.resize_to, cfg.channels)
        if stored is not None and len(stored) != len(table):
            raise ValueError(f"image cache {stored.pixels_path} has {len(stored)} images, the split {len(table)}")
        if output not in ("tensor", "stored"):
            raise ValueError(f"output must be 'tensor' or 'stored', got {output!r}")
        self.stored, self.output = stored, output
        self.crop_boxes = crop_boxes(table, crop, box_margin)

    def __len__(self) -> int:
        return len(self.table)

    def read(self, i: int) -> np.ndarray:
        """The decoded source image (``HxWxC`` uint8)."""
        if self.table.arrays is not None:
            return self.table.arrays[i]
        return load_image(self.root / self.table.paths[i])

    def stage1(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 of sample ``i`` (see :mod:`facebench.datamodules.cache`): the stored image and its plan row,
        from the image cache when there is one, else decoded and pre-resized now (same pixels)."""
        if self.stored is not None:
            if not self.stored.usable(i):
                raise DatasetFormatError(self.root / self.table.paths[i], None,
                                         "could not be decoded when the image cache was built")
            return self.stored.image(i), self.stored.plan[i]
        image = self.read(i)
        row = plan_row(image.shape[1], image.shape[0], None if self.crop_boxes is None else self.crop_boxes[i],
                       self.geometry)
        return prescale(image, row, self.geometry.channels), row

    def __getitem__(self, key: int) -> dict[str, Any]:
        """``key`` is a sample index, or ``epoch * len(self) + index`` from :class:`EpochShardSampler`:
        training augmentation is drawn from (augment_seed, epoch, index) only."""
        t = self.table
        epoch, i = divmod(int(key), len(t))
        try:
            (image, row), usable = self.stage1(i), True
        except (DatasetFormatError, FileNotFoundError) as exc:
            if self.strict:
                raise
            warnings.warn(f"{exc}; using a blank image with all labels missing instead", stacklevel=2)
            size = self.transform.cfg.image_size
            image, usable = np.zeros((size, size, self.geometry.channels), dtype=np.uint8), False
            row = np.array([0, 0, size, size, size, size])
        box = t.boxes[i] if t.boxes is not None else None
        crop_box = self.crop_boxes[i] if self.crop_boxes is not None and (usable or "align_box" not in t.extra) else None
        angle = float(t.extra["align_angle"][i]) if "align_box" in t.extra and usable else 0.0
        lm = t.landmarks[i] if t.landmarks is not None and self.landmarks else None
        # landmarks and boxes follow the pixels into stage-1 coordinates
        lm = to_stored(row, lm) if lm is not None else None
        box = box_to_stored(row, box) if box is not None else None
        crop_box = box_to_stored(row, crop_box) if crop_box is not None and np.isfinite(crop_box).all() else None
        if self.output == "stored":   # stage 2 runs on the batch (facebench.datamodules.batch_augment)
            sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                      "stored_size": torch.tensor([image.shape[1], image.shape[0]], dtype=torch.long),
                      "crop_box": torch.tensor(crop_box if crop_box is not None else [float("nan")] * 4, dtype=torch.float64),
                      "angle": torch.tensor(angle, dtype=torch.float64), "epoch": torch.tensor(epoch, dtype=torch.long)}
            if lm is not None:
                sample["landmarks"] = torch.from_numpy(lm.astype(np.float32))
            if box is not None:
                sample["box"] = torch.from_numpy(box.astype(np.float32))
        else:
            rng = np.random.default_rng([self.augment_seed, epoch, i]) if self.transform.train else None
            sample = self.transform(image, landmarks=lm, box=box, rng=rng, crop_box=crop_box, angle=angle)
            if self.normalizer is not None:
                sample["image"] = self.normalizer(sample["image"])
        labels = np.asarray(t.labels[i], dtype=np.int64)
        sample["label"] = torch.from_numpy(labels if usable else np.full_like(labels, MISSING))
        sample["index"] = torch.tensor(i, dtype=torch.long)
        sample["identity"] = torch.tensor(int(t.identities[i]) if t.identities is not None else -1, dtype=torch.long)
        if t.votes:
            sample["votes"] = {k: torch.from_numpy(np.asarray(v[i], dtype=np.int64) * usable) for k, v in t.votes.items()}
        if t.soft_labels:
            sample["soft_label"] = {k: torch.from_numpy(np.asarray(v[i], dtype=np.float32) * usable)
                                    for k, v in t.soft_labels.items()}
        return sample
