"""Image transforms shared by all datamodules.

Every geometric step (resize, crop, scale, rotation, translation jitter, horizontal flip) is folded
into one affine matrix and applied with a single ``cv2.warpAffine`` per image; landmarks and boxes
go through the same matrix, so they stay aligned with the pixels (which the LACNN landmark channel
relies on). A horizontal flip also re-orders landmark indices (left eye <-> right eye), so a
landmark's index keeps its meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
import torch

#: iBUG-300W / dlib 68-point index of each point's mirror image.
FLIP_68: tuple[int, ...] = tuple(
    list(range(16, -1, -1))                      # jaw
    + list(range(26, 16, -1))                    # brows
    + [27, 28, 29, 30]                           # nose bridge
    + [35, 34, 33, 32, 31]                       # nostrils
    + [45, 44, 43, 42, 47, 46]                   # right eye <- left eye
    + [39, 38, 37, 36, 41, 40]                   # left eye <- right eye
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lip
    + [64, 63, 62, 61, 60, 67, 66, 65]           # inner lip
)
#: CelebA 5-point order (lefteye, righteye, nose, leftmouth, rightmouth) mirrored.
FLIP_5: tuple[int, ...] = (1, 0, 2, 4, 3)
FLIP_PERMUTATIONS = {68: FLIP_68, 5: FLIP_5}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TransformConfig:
    """What a user changes about preprocessing (YAML ``transforms:`` / ``train_transforms:``).

    ``image_size`` is the network input. ``resize_to`` first scales the source so that its shorter
    side (or the crop box) matches it (default ``image_size``); then a ``crop`` of ``image_size``
    is taken at the centre (eval) or at a random position (train, ``random_crop``). ``rotation``
    is a uniform range in degrees and ``rotation_choices`` a discrete set (the LACNN paper's
    {-40,-20,0,20,40}); ``jitter`` translates by up to that many output pixels (MCNN on LFWA);
    ``scale`` is a random zoom range.
    """

    image_size: int = 64
    resize_to: int | None = None
    channels: int = 3
    random_crop: bool = False
    hflip: float = 0.0
    rotation: float = 0.0
    rotation_choices: Sequence[float] | None = None
    jitter: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    color_jitter: float = 0.0
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    per_image_standardize: bool = False   # global contrast normalisation (semantic-features paper s3.3)
    border: str = "reflect"

    @property
    def is_random(self) -> bool:
        return bool(self.random_crop or self.hflip or self.rotation or self.rotation_choices
                    or self.jitter or self.scale != (1.0, 1.0) or self.color_jitter)


def _affine(src_w: int, src_h: int, cfg: TransformConfig, rng: np.random.Generator | None,
            box: Sequence[float] | None = None, base_angle: float = 0.0) -> tuple[np.ndarray, bool]:
    """2x3 matrix mapping source pixels to output pixels, and whether it flips. ``base_angle``
    (degrees) is a per-image in-plane rotation applied before augmentation (eye alignment)."""
    out = cfg.image_size
    base = cfg.resize_to or out
    if box is not None:   # crop a box (x, y, w, h), e.g. a detected face, to the output size
        bx, by, bw, bh = box
        cx, cy, side = bx + bw / 2.0, by + bh / 2.0, max(bw, bh)
        s = base / side
    else:
        cx, cy = src_w / 2.0, src_h / 2.0
        s = base / min(src_w, src_h)
    angle, flip, tx, ty = float(base_angle), False, 0.0, 0.0
    if rng is not None:
        s *= rng.uniform(*cfg.scale)
        if cfg.rotation_choices:
            angle += float(rng.choice(np.asarray(cfg.rotation_choices, dtype=float)))
        elif cfg.rotation:
            angle += rng.uniform(-cfg.rotation, cfg.rotation)
        flip = bool(cfg.hflip and rng.random() < cfg.hflip)
        if cfg.random_crop:
            slack = max(base - out, 0) / 2.0
            tx, ty = rng.uniform(-slack, slack), rng.uniform(-slack, slack)
        if cfg.jitter:
            tx += rng.uniform(-cfg.jitter, cfg.jitter)
            ty += rng.uniform(-cfg.jitter, cfg.jitter)
    a = math.radians(angle)
    cos, sin = math.cos(a) * s, math.sin(a) * s
    fx = -1.0 if flip else 1.0
    # out = R * (p - c) * s (optionally mirrored) + out/2 + t
    m = np.array([[fx * cos, fx * sin, 0.0], [-sin, cos, 0.0]], dtype=np.float64)
    m[:, 2] = -m[:, :2] @ np.array([cx, cy]) + np.array([out / 2.0 + tx, out / 2.0 + ty])
    return m, flip


def apply_points(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``[..., 2]`` points."""
    return points @ m[:, :2].T + m[:, 2]


def box_through(m: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Axis-aligned (x, y, w, h) box enclosing the transformed corners of ``box``."""
    x, y, w, h = box
    pts = apply_points(m, np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]], dtype=np.float64))
    lo, hi = pts.min(0), pts.max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], dtype=np.float32)


class FaceTransform:
    """Callable turning a uint8 HxWxC array (+ landmarks, box) into network-ready tensors."""

    def __init__(self, cfg: TransformConfig, train: bool):
        self.cfg = cfg
        self.train = train and cfg.is_random
        c = cfg.channels
        self.mean = torch.tensor(list(cfg.mean)[:c] if len(cfg.mean) >= c else [cfg.mean[0]] * c).view(c, 1, 1)
        self.std = torch.tensor(list(cfg.std)[:c] if len(cfg.std) >= c else [cfg.std[0]] * c).view(c, 1, 1)

    def geometry(self, src_w: int, src_h: int, rng: np.random.Generator | None,
                 crop_box: Sequence[float] | None = None, angle: float = 0.0) -> tuple[np.ndarray, bool]:
        return _affine(src_w, src_h, self.cfg, rng if self.train else None, crop_box, angle)

    def __call__(self, image: np.ndarray, landmarks: np.ndarray | None = None, box: Sequence[float] | None = None,
                 rng: np.random.Generator | None = None, crop_box: Sequence[float] | None = None,
                 angle: float = 0.0) -> dict:
        h, w = image.shape[:2]
        m, flip = self.geometry(w, h, rng, crop_box, angle)
        out = self.warp(image, m)
        sample: dict = {"image": self.to_tensor(out, rng)}
        if landmarks is not None:
            pts = apply_points(m, np.asarray(landmarks, dtype=np.float64))
            if flip:
                pts = pts[list(FLIP_PERMUTATIONS.get(len(pts), range(len(pts))))]
            sample["landmarks"] = torch.from_numpy(pts.astype(np.float32))
        if box is not None:
            sample["box"] = torch.from_numpy(box_through(m, box))
        return sample

    def warp(self, image: np.ndarray, m: np.ndarray) -> np.ndarray:
        s = self.cfg.image_size
        border = cv2.BORDER_REFLECT_101 if self.cfg.border == "reflect" else cv2.BORDER_CONSTANT
        scale = math.hypot(m[0, 0], m[0, 1])
        interp = cv2.INTER_AREA if scale < 0.75 else cv2.INTER_LINEAR
        out = cv2.warpAffine(image, m, (s, s), flags=interp, borderMode=border)
        if out.ndim == 2:
            out = out[:, :, None]
        if self.cfg.channels == 1 and out.shape[2] == 3:
            out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None]
        elif self.cfg.channels == 3 and out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)
        return out

    def to_tensor(self, image: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        if self.train and self.cfg.color_jitter and rng is not None:
            j = self.cfg.color_jitter
            x = ((x - x.mean()) * rng.uniform(1 - j, 1 + j) + x.mean() * rng.uniform(1 - j, 1 + j)).clamp_(0, 1)
        if self.cfg.per_image_standardize:
            return (x - x.mean()) / x.std().clamp(min=1e-6)
        return (x - self.mean) / self.std
