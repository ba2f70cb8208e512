"""Stage 2 of the image pipeline on whole batches, on the accelerator (``augment_on: batch``).

With ``augment_on: batch`` the training DataLoader workers only read stage-1 images (see
:mod:`facebench.datamodules.cache`: a memmap slice when the image cache is on) and collate them as ``uint8``
canvases; :class:`BatchAugment`, called from :meth:`FaceDataModule.on_after_batch_transfer`
(after the batch reached the GPU), applies the per-sample affine warp of
:mod:`facebench.datamodules.transforms` to the whole batch with one ``F.affine_grid``-style sampling grid and
one ``F.grid_sample``, then colour jitter and normalisation.

* The random parameters are those of the worker path: each sample's matrix comes from
  :meth:`FaceTransform.geometry <facebench.datamodules.transforms.FaceTransform.geometry>` with the generator
  seeded by (seed, epoch, index), so both paths draw the same crop / flip / rotation / jitter /
  colour factors; only the interpolation differs (bilinear ``grid_sample`` vs ``cv2.warpAffine``,
  within a few grey levels of each other at the usual stage-2 scales of 0.75-1; the worker path
  switches to area interpolation below 0.75, ``grid_sample`` does not).
* Coordinates follow OpenCV's pixel-index convention (``align_corners=True`` on the canvas) so the
  same 2x3 matrix moves pixels, landmarks and boxes; a flip re-orders landmark indices with
  :data:`~facebench.datamodules.transforms.FLIP_PERMUTATIONS`.
* Borders: ``reflect`` reflects about each image's own valid region (``BORDER_REFLECT_101``; a
  letter-boxed canvas never leaks its padding), ``constant`` reads zeros.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from facebench.datamodules.transforms import FLIP_PERMUTATIONS, FaceTransform

#: Keys a stage-1 ("stored") sample carries besides the usual ones; ``stored_size`` marks such a batch.
STORED_KEYS: tuple[str, ...] = ("stored_size", "crop_box", "angle", "epoch")


def is_stored_batch(batch: Any) -> bool:
    return isinstance(batch, dict) and "stored_size" in batch


def collate_stored(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Default collation after zero-padding every ``uint8 [C, h, w]`` image to the batch's largest
    (images of a cache share one canvas already; uncached images of varied sizes do not)."""
    h = max(int(s["image"].shape[1]) for s in samples)
    w = max(int(s["image"].shape[2]) for s in samples)
    padded = []
    for s in samples:
        img = s["image"]
        if img.shape[1:] != (h, w):
            s = {**s, "image": F.pad(img, (0, w - img.shape[2], 0, h - img.shape[1]))}
        padded.append(s)
    return default_collate(padded)


def reflect_101(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Continuous ``BORDER_REFLECT_101`` of pixel coordinates ``x`` into ``[0, n - 1]`` (``n`` per row)."""
    last = (n - 1).clamp(min=0).to(x.dtype)
    period = (2 * last).clamp(min=1e-6)
    r = torch.remainder(x, period)
    return torch.where(last > 0, torch.where(r > last, period - r, r), torch.zeros_like(x))


class BatchAugment:
    """Stage 2 for a batch of stage-1 samples (see the module docstring).

    Args:
        transform: the training :class:`FaceTransform` (its config: output size, augmentation,
            normalisation, border).
        seed: the run's augmentation seed (``FaceDataModule.augment_seed``).
        normalizer: the datamodule's photometric preprocessing, applied per image after the warp.
    """

    def __init__(self, transform: FaceTransform, seed: int,
                 normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.transform, self.seed, self.normalizer = transform, int(seed), normalizer
        self._normalizer_device: torch.device | None = None

    # -- per-sample parameters (CPU, the same draws as the worker path) ------------------------------
    def parameters(self, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per sample: the 2x3 stored -> output matrix, whether it flips, and the colour factors
        ``(contrast, brightness)`` (ones without colour jitter)."""
        t = self.transform
        sizes = batch["stored_size"].cpu().numpy()
        crop = batch["crop_box"].cpu().numpy().astype(np.float64)
        angle = batch["angle"].cpu().numpy().astype(np.float64)
        index, epoch = batch["index"].cpu().numpy(), batch["epoch"].cpu().numpy()
        n = len(sizes)
        mats, flips, colour = np.zeros((n, 2, 3)), np.zeros(n, dtype=bool), np.ones((n, 2))
        jitter = t.cfg.color_jitter if t.train else 0.0
        for k in range(n):
            rng = np.random.default_rng([self.seed, int(epoch[k]), int(index[k])]) if t.train else None
            box = tuple(crop[k]) if np.isfinite(crop[k]).all() else None
            mats[k], flips[k] = t.geometry(int(sizes[k, 0]), int(sizes[k, 1]), rng, box, float(angle[k]))
            if jitter and rng is not None:
                colour[k] = rng.uniform(1 - jitter, 1 + jitter), rng.uniform(1 - jitter, 1 + jitter)
        return mats, flips, colour

    # -- the batch --------------------------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        images = batch["image"]
        device = images.device
        mats, flips, colour = self.parameters(batch)
        m = torch.as_tensor(mats, dtype=torch.float32, device=device)
        inverse = torch.as_tensor(np.linalg.inv(np.concatenate([mats, np.tile([[[0.0, 0.0, 1.0]]], (len(mats), 1, 1))], 1))[:, :2],
                                  dtype=torch.float32, device=device)
        sizes = batch["stored_size"].to(device)
        x = self.warp(images, inverse, sizes)
        cfg = self.transform.cfg
        if x.shape[1] != cfg.channels:   # stage 1 stores the network's channels; kept for safety
            x = x.mean(1, keepdim=True) if cfg.channels == 1 else x.expand(-1, cfg.channels, -1, -1)
        if (colour != 1).any():
            c = torch.as_tensor(colour, dtype=torch.float32, device=device)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * c[:, 0].view(-1, 1, 1, 1) + mean * c[:, 1].view(-1, 1, 1, 1)).clamp_(0, 1)
        if cfg.per_image_standardize:
            flat = x.flatten(1)
            x = (x - flat.mean(1).view(-1, 1, 1, 1)) / flat.std(1).clamp(min=1e-6).view(-1, 1, 1, 1)
        else:
            x = (x - self.transform.mean.to(device)) / self.transform.std.to(device)
        if self.normalizer is not None:
            norm = self._device_normalizer(device)
            x = torch.stack([norm(xi) for xi in x])
        out = {k: v for k, v in batch.items() if k not in STORED_KEYS}
        out["image"] = x
        flip_t = torch.as_tensor(flips, device=device)
        if "landmarks" in batch:
            out["landmarks"] = self.points(batch["landmarks"].float(), m, flip_t)
        if "box" in batch:
            out["box"] = self.boxes(batch["box"].float(), m)
        return out

    def warp(self, images: torch.Tensor, inverse: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, C, H, W]`` canvases -> ``float [B, C, S, S]`` in [0, 1]; ``inverse`` maps
        output pixels to stored pixels, ``sizes`` is each image's valid (width, height)."""
        b, _, h, w = images.shape
        s = self.transform.cfg.image_size
        device = images.device
        ys, xs = torch.meshgrid(torch.arange(s, device=device, dtype=torch.float32),
                                torch.arange(s, device=device, dtype=torch.float32), indexing="ij")
        out_px = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(s * s, device=device)])   # [3, S*S]
        src = inverse @ out_px                                                                        # [B, 2, S*S]
        sx, sy = src[:, 0], src[:, 1]
        if self.transform.cfg.border == "reflect":
            sx = reflect_101(sx, sizes[:, 0:1])
            sy = reflect_101(sy, sizes[:, 1:2])
        grid = torch.stack([sx * (2.0 / max(w - 1, 1)) - 1.0, sy * (2.0 / max(h - 1, 1)) - 1.0], dim=-1)
        grid = grid.view(b, s, s, 2)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return x.div_(255.0)

    @staticmethod
    def points(points: torch.Tensor, m: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """``[B, K, 2]`` stored points through each sample's matrix; flipped samples re-ordered."""
        out = points @ m[:, :, :2].transpose(1, 2) + m[:, :, 2].unsqueeze(1)
        k = out.shape[1]
        if flips.any() and k in FLIP_PERMUTATIONS:
            perm = torch.as_tensor(FLIP_PERMUTATIONS[k], device=out.device)
            order = torch.where(flips.view(-1, 1), perm.view(1, -1), torch.arange(k, device=out.device).view(1, -1))
            out = torch.gather(out, 1, order.unsqueeze(-1).expand(-1, -1, 2))
        return out

    @staticmethod
    def boxes(boxes: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``[B, 4]`` (x, y, w, h) boxes -> the axis-aligned boxes enclosing their transformed corners."""
        x, y, w, h = boxes.unbind(1)
        corners = torch.stack([torch.stack([x, y], 1), torch.stack([x + w, y], 1),
                               torch.stack([x, y + h], 1), torch.stack([x + w, y + h], 1)], 1)
        pts = corners @ m[:, :, :2].transpose(1, 2) + m[:, :, 2].unsqueeze(1)
        lo, hi = pts.min(1).values, pts.max(1).values
        return torch.cat([lo, hi - lo], 1)

    def _device_normalizer(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The photometric normaliser with its statistics on ``device`` (moved once)."""
        from facebench.datamodules.preprocess import Normalizer, PixelStatistics

        norm = self.normalizer
        if isinstance(norm, Normalizer) and norm.stats is not None and self._normalizer_device != device:
            self.normalizer = Normalizer(norm.cfg, PixelStatistics(norm.stats.mean.to(device), norm.stats.std.to(device)))
            self._normalizer_device = device
        assert self.normalizer is not None
        return self.normalizer
