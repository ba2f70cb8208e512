"""Weakly supervised localisation of LNets+ANet (sec. 3.1, eq. 3), pure tensor code: averaged C5
response maps -> density peaks -> the densest region -> boxes; box scaling and cropping, IoU,
the face-scale calibration and the localisation measures (Fig. 7 (a))."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

#: IoU thresholds of the localisation recall curve (Fig. 7 (a)).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Coverage of the true face box by the head-shoulder crop counted as "face inside the crop".
COVERAGE_THRESHOLD = 0.9
#: Factors searched by ``calibrate_face_scale`` (about the box centre).
FACE_SCALE_GRID: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(31))


@dataclass
class LocalizationConfig:
    """Density-peak localisation (sec. 3.1, eq. 3) and crop geometry.

    ``density_kernel``: window (cells) summing the averaged C5 response into a density;
    ``peak_threshold``: minimum ``d_i`` of a density peak (with ``rho`` and ``sigma`` in [0, 1]);
    ``min_peak_density``: minimum ``rho`` of a peak, as a fraction of the maximum;
    ``region_threshold``: a cluster's region keeps responses above this fraction of its peak;
    ``head_margin``: side of the square head-shoulder crop over the longer side of LNet_o's region;
    ``face_scale``: the face box is LNet_s's region scaled by this factor (width and height);
    ``face_margin``: side of ANet's square face crop ``x_f`` over the longer side of the face box;
    ``box``: how the region becomes a box, ``extent`` (the bounding box of its cells) or ``moments``
    (not in the paper: centred on the response-weighted centroid of the region, each side
    ``sqrt(12 var)`` with ``var`` the response-weighted variance of the cell positions plus a cell's
    own ``stride^2 / 12``, i.e. the extent of a uniform region; sub-cell precision on coarse maps).
    """

    density_kernel: int = 3
    peak_threshold: float = 0.5
    min_peak_density: float = 0.1
    region_threshold: float = 0.5
    head_margin: float = 1.2
    face_scale: float = 1.0
    face_margin: float = 1.2
    box: str = "extent"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.box not in ("extent", "moments"):
            raise ValueError(f"localization.box must be extent or moments, got {self.box!r}")
        if self.density_kernel < 1 or self.density_kernel % 2 == 0:
            raise ValueError(f"localization.density_kernel must be a positive odd number, got {self.density_kernel}")
        if not 0.0 <= self.region_threshold <= 1.0:
            raise ValueError(f"localization.region_threshold must be in [0, 1], got {self.region_threshold}")
        for name in ("head_margin", "face_scale", "face_margin"):
            if getattr(self, name) <= 0:
                raise ValueError(f"localization.{name} must be positive, got {getattr(self, name)}")


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an image batch to ``size x size`` (antialiased), a no-op when it already is."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class DensityPeaks:
    """Per position of a ``[B, h, w]`` map, flattened to ``[B, P]``: the density ``rho`` (scaled to
    [0, 1]), ``sigma`` (distance in cells to the nearest denser position), the score ``d`` of eq. 3
    (from ``rho`` and ``sigma / diagonal``) and the index of the nearest denser position."""

    rho: torch.Tensor
    sigma: torch.Tensor
    d: torch.Tensor
    nearest_denser: torch.Tensor
    is_top: torch.Tensor


def density_peaks(response: torch.Tensor, density_kernel: int = 3) -> DensityPeaks:
    """Eq. 3 on a batch of response maps, vectorised over positions (pairwise distances)."""
    b, h, w = response.shape
    rho = F.avg_pool2d(response[:, None].float(), density_kernel, stride=1, padding=density_kernel // 2,
                       count_include_pad=False)[:, 0].flatten(1)
    rho = rho / rho.amax(1, keepdim=True).clamp_min(1e-12)
    ys, xs = torch.meshgrid(torch.arange(h, device=response.device), torch.arange(w, device=response.device), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], 1).float()
    dist = torch.cdist(coords, coords)                                       # [P, P]
    idx = torch.arange(h * w, device=response.device)
    # position j is denser than i (ties broken by index, so that every map has one top position)
    denser = (rho[:, None, :] > rho[:, :, None]) | ((rho[:, None, :] == rho[:, :, None]) & (idx[None, None, :] < idx[None, :, None]))
    sigma, nearest = torch.where(denser, dist, torch.full_like(dist, math.inf)).min(-1)
    is_top = torch.isinf(sigma)
    sigma = torch.where(is_top, dist.max(1).values.expand(b, -1), sigma)     # the top: its largest distance
    nearest = torch.where(is_top, idx.expand(b, -1), nearest)
    diagonal = max(math.hypot(h - 1, w - 1), 1.0)
    d = torch.sqrt(rho ** 2 + (sigma / diagonal) ** 2)
    return DensityPeaks(rho=rho, sigma=sigma, d=d, nearest_denser=nearest, is_top=is_top)


def densest_region(response: torch.Tensor, cfg: LocalizationConfig) -> torch.Tensor:
    """The region to crop (sec. 3.1): ``BoolTensor [B, h, w]``.

    Peaks are local maxima (no denser position among the 8 neighbours) with ``d_i >=
    peak_threshold`` and ``rho_i >= min_peak_density``; every position joins the peak reached by
    following nearest denser positions (pointer jumping); a cluster's region keeps the positions
    whose density is at least ``region_threshold`` of its peak's; the region with the largest summed
    density wins (several faces or clutter give several peaks, Fig. 4 (a))."""
    b, h, w = response.shape
    p = density_peaks(response, cfg.density_kernel)
    n = h * w
    idx = torch.arange(n, device=response.device).expand(b, -1)
    is_peak = p.is_top | ((p.sigma > math.sqrt(2) + 1e-6) & (p.d >= cfg.peak_threshold) & (p.rho >= cfg.min_peak_density))
    root = torch.where(is_peak, idx, p.nearest_denser)
    for _ in range(max(1, math.ceil(math.log2(n))) + 1):                     # pointer jumping to the peaks
        root = root.gather(1, root)
    in_region = p.rho >= cfg.region_threshold * p.rho.gather(1, root)
    mass = torch.zeros_like(p.rho).scatter_add_(1, root, p.rho * in_region)
    chosen = mass.argmax(1, keepdim=True)
    return (in_region & (root == chosen)).reshape(b, h, w)


def region_box(region: torch.Tensor, image_size: int, offset: float, stride: float) -> torch.Tensor:
    """Bounding box of a region of C5 cells in input pixels -> normalised ``(x, y, w, h)`` ``[B, 4]``
    (cells tile the image: ``offset + stride * j`` is cell ``j``'s centre, ``stride`` its extent)."""
    b, h, w = region.shape
    rows, cols = region.any(2), region.any(1)
    ar_h, ar_w = torch.arange(h, device=region.device), torch.arange(w, device=region.device)
    y0 = torch.where(rows, ar_h, h).amin(1).float()
    y1 = torch.where(rows, ar_h, -1).amax(1).float()
    x0 = torch.where(cols, ar_w, w).amin(1).float()
    x1 = torch.where(cols, ar_w, -1).amax(1).float()
    lo = torch.stack([x0, y0], 1) * stride + offset - stride / 2
    hi = torch.stack([x1, y1], 1) * stride + offset + stride / 2
    lo, hi = lo.clamp(0, image_size), hi.clamp(0, image_size)
    return torch.cat([lo, hi - lo], 1) / image_size


def region_moments_box(response: torch.Tensor, region: torch.Tensor, image_size: int, offset: float,
                       stride: float) -> torch.Tensor:
    """The ``moments`` box of a region (:class:`LocalizationConfig`): centre at the centroid of the
    response inside the region, sides ``sqrt(12 var)`` per axis (``var``: response-weighted variance
    of the cell centres plus ``stride^2 / 12``, so a uniform region gives its extent) -> normalised
    ``(x, y, w, h)`` ``[B, 4]``, clipped to the image."""
    b, h, w = region.shape
    weight = response.float().clamp_min(0) * region
    weight = torch.where(weight.flatten(1).sum(1)[:, None, None] > 0, weight, region.float())
    weight = weight / weight.flatten(1).sum(1).clamp_min(1e-12)[:, None, None]
    ys = torch.arange(h, device=region.device, dtype=weight.dtype) * stride + offset
    xs = torch.arange(w, device=region.device, dtype=weight.dtype) * stride + offset
    py, px = weight.sum(2), weight.sum(1)                                    # marginals [B, h], [B, w]
    cy, cx = (py * ys).sum(1), (px * xs).sum(1)
    vy = (py * (ys - cy[:, None]) ** 2).sum(1) + stride ** 2 / 12
    vx = (px * (xs - cx[:, None]) ** 2).sum(1) + stride ** 2 / 12
    half = torch.stack([vx, vy], 1).mul(12).sqrt() / 2
    centre = torch.stack([cx, cy], 1)
    lo, hi = (centre - half).clamp(0, image_size), (centre + half).clamp(0, image_size)
    return torch.cat([lo, hi - lo], 1) / image_size


def scale_boxes(boxes: torch.Tensor, factor: float, square: bool = False) -> torch.Tensor:
    """Scale normalised ``(x, y, w, h)`` boxes about their centres (optionally to squares of the longer side)."""
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    size = boxes[:, 2:]
    if square:
        size = size.amax(1, keepdim=True).expand(-1, 2)
    size = size * factor
    return torch.cat([centre - size / 2, size], 1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop normalised ``(x, y, w, h)`` boxes of square images to ``size x size`` (bilinear,
    averaged over samples; outside the image reads zeros)."""
    from torchvision.ops import roi_align

    side = images.shape[-1]
    xyxy = torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) * side
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=boxes.dtype)[:, None], xyxy], 1)
    return roi_align(images, rois.to(images.dtype), output_size=(size, size), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


def box_iou_xywh(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Element-wise IoU of ``(x, y, w, h)`` boxes ``[N, 4]``."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    lo = np.maximum(pred[:, :2], true[:, :2])
    hi = np.minimum(pred[:, :2] + pred[:, 2:], true[:, :2] + true[:, 2:])
    inter = np.clip(hi - lo, 0, None).prod(1)
    union = pred[:, 2:].prod(1) + true[:, 2:].prod(1) - inter
    return inter / np.clip(union, 1e-12, None)


def calibrate_scale(pred: np.ndarray, true: np.ndarray, grid: Sequence[float] = FACE_SCALE_GRID) -> float:
    """The factor of ``grid`` that maximises recall@iou0.5 of ``pred`` boxes scaled about their
    centres (ties: the one closest to 1)."""
    pred_t = torch.as_tensor(np.asarray(pred, dtype=np.float64))
    scores = [(float((box_iou_xywh(scale_boxes(pred_t, f).numpy(), true) >= 0.5).mean()), -abs(math.log(f)), f) for f in grid]
    return float(max(scores)[2])


def localization_rows(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """Localisation metrics rows (``target, class, metric, value``) from collected boxes.

    ``face_box``: mean IoU and ``recall@iou<t>`` (fraction with IoU >= t, the curve of Fig. 7 (a))
    against the true face boxes; ``head_shoulder_box``: the mean fraction of the true face box inside
    the head-shoulder crop and ``recall@coverage0.9``."""
    rows: list[dict[str, Any]] = []
    if "true_box" not in arrays:
        return pd.DataFrame(rows, columns=["target", "class", "metric", "value"])
    true = np.asarray(arrays["true_box"], dtype=np.float64)
    if "face_box" in arrays:
        iou = box_iou_xywh(arrays["face_box"], true)
        rows.append({"target": "face_box", "class": "", "metric": "mean_iou", "value": float(iou.mean())})
        rows += [{"target": "face_box", "class": "", "metric": f"recall@iou{t:g}", "value": float((iou >= t).mean())}
                 for t in IOU_THRESHOLDS]
        if "face_scale" in arrays:
            rows.append({"target": "face_box", "class": "", "metric": "face_scale", "value": float(np.mean(arrays["face_scale"]))})
    if "head_box" in arrays:
        head = np.asarray(arrays["head_box"], dtype=np.float64)
        lo, hi = np.maximum(head[:, :2], true[:, :2]), np.minimum(head[:, :2] + head[:, 2:], true[:, :2] + true[:, 2:])
        coverage = np.clip(hi - lo, 0, None).prod(1) / np.clip(true[:, 2:].prod(1), 1e-12, None)
        rows.append({"target": "head_shoulder_box", "class": "", "metric": "mean_face_coverage", "value": float(coverage.mean())})
        rows.append({"target": "head_shoulder_box", "class": "", "metric": f"recall@coverage{COVERAGE_THRESHOLD:g}",
                     "value": float((coverage >= COVERAGE_THRESHOLD).mean())})
    return pd.DataFrame(rows, columns=["target", "class", "metric", "value"])
