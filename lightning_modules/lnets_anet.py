"""LNets+ANet (Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015).

Four cascaded stages (section 3, Fig. 3), each a registered method; the runner chains them with
``init_from`` and every stage's checkpoint carries the networks of the stages before it:

=====================  ========================================================================
``lnet_plus``          Optional offline stand-in for LNet+ (sec. 4, ImageNet pre-training): C1-C5
                       trained with attribute labels on aligned faces at random scales; hands
                       its convolutions to ``lnet_o`` (``init_from``).
``lnet_o``             LNet_o (C1-C5 + two FC, sec. 3.1/4) fine-tuned with attribute labels on the
                       whole image ``x_o`` (sigmoid cross-entropy). Test: attributes of LNet_o and
                       the head-shoulder crop located from its averaged C5 map (eq. 3).
``lnet_s``             LNet_s, same structure, fine-tuned on the head-shoulder crops ``x_s`` that
                       the frozen LNet_o proposes; its C5 map gives the face box (coarse to fine).
                       Test: face-box recall at IoU thresholds against ground-truth boxes.
``anet_identity``      ANet (C1-C2 global, C3-C4 locally shared (eq. 4), FC) pre-trained on the
                       face identities of its training identities: softmax + the similarity loss
                       of sec. 4. Test: identity retrieval (1-NN accuracy, verification AUROC).
``anet``               ANet fine-tuned on attributes through an attribute layer on its FC.
``lnets_anet``         The full cascade (sec. 3, Fig. 3 (d)): multi-view ANet features of the
                       located face, concatenated, then one linear SVM (or logistic regression) per
                       attribute, fitted on identities held out from ANet training (sec. 5).
=====================  ========================================================================

No face box is used in training: LNets learn from attribute tags only and boxes, when the data
has them (``batch["box"]``), are only compared with the predictions at test time. On aligned faces
(``localize: false``) the ANet stages take the image itself as the face region ``x_f``.

Choices where the text leaves details open (the layer sizes of Fig. 3 are not in the text):

* LNet: AlexNet [10] convolutions, with the widths the text gives (C1 96 filters of 11x11x3,
  C4 384, C5 256) and AlexNet's C2 256 / C3 384, 3x3/2 max-pooling after C1 and C2 (the "two
  max-pooling" layers), optional LRN as in AlexNet, two FC layers (4096 hidden, as LNet+) on
  AlexNet's pool5 of C5 (an FC on the unpooled 13x13 C5 map would have 177M weights).
* ANet: 5x5 / 3x3 kernels, 2x2 max-pooling after C1, C2 and C4 (the three max-pooling layers),
  C3 and C4 with 2x2 cells (the cells of Fig. 5), no padding in the locally shared layers, FC 256.
* Density (eq. 3): ``rho_i`` is the averaged C5 response summed over a small window (the cut-off
  kernel of Rodriguez & Laio [21]); ``rho`` is scaled to [0, 1] by its maximum and ``sigma`` (in
  cells) by the map diagonal before ``d_i = sqrt(rho_i^2 + sigma_i^2)``; peaks are local maxima
  with a large ``d``; every position joins the peak its chain of nearest denser neighbours reaches
  ([21]); the proposed window is the cluster region (responses above a fraction of its peak) with
  the largest summed density ("the region with the highest density").
* Similarity loss (sec. 4): mean over same-identity pairs in a batch of ``1/2 ||f_i - f_j||^2``
  on the FC features, weighted by ``similarity_weight`` (0.05, DeepID2 [23]).
* Multi-view features (sec. 3.2): ANet is evaluated densely over a face crop slightly larger than
  its input; the views are the centre, the four corner windows and the window whose C4 response
  is largest (the maximum search of eq. 5); their FC vectors are concatenated into ``h_a``.
* Optimiser: the paper uses SGD; the default here is AdamW, which converges within CPU budgets
  from random initialisation (set ``optimizer: {name: SGD, ...}`` to follow the paper).
* LNet+ (ImageNet pre-training, sec. 4) cannot be fetched offline: ``pretrained`` takes torchvision's
  AlexNet weights or a local file, else LNets start from random weights; ``lnet.batch_norm`` (not in
  the paper) is offered as a stand-in that makes training from scratch converge on CPU budgets.
* Not in the paper, all off by default (see :class:`LNetConfig`, :class:`LocalizationConfig`,
  :class:`LNetTrainingStage`, :class:`LNetPlusStage`): the ``lnet_plus`` stand-in; reflect padding and
  global max pooling under the FC layers; a "face present" output trained against clutter-only
  images of the SynthFaces background generator and an L1 penalty on C5 (sparse maps); the
  ``moments`` box of a region; ``calibrate_face_scale`` (one box scale factor chosen on ``val``).
"""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.core.config import config_from_value
from lightning_modules.base import FaceAttributeTask
from lightning_modules.local_conv import LocallySharedConv2d
from lightning_modules.metrics import evaluate
from lightning_modules.registry import register_analysis, register_method

#: IoU thresholds of the localisation recall curve (Fig. 7 (a)).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Coverage of the true face box by the head-shoulder crop counted as "face inside the crop".
COVERAGE_THRESHOLD = 0.9
#: Factors searched by ``calibrate_face_scale`` (about the box centre).
FACE_SCALE_GRID: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(31))
#: Dense-evaluation views of the multi-view features (sec. 3.2).
VIEW_NAMES: tuple[str, ...] = ("center", "top_left", "top_right", "bottom_left", "bottom_right", "peak")


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
def _plain(cfg: Any) -> dict[str, Any]:
    """A config dataclass as YAML-friendly plain values (lists, not tuples)."""
    def conv(v: Any) -> Any:
        return [conv(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {k: conv(v) for k, v in asdict(cfg).items()}


@dataclass
class LNetConfig:
    """LNet_o / LNet_s structure (Fig. 3 (a, b), sec. 3.1) and input sizes.

    ``channels``: C1-C5 widths; ``fc_dim``: the hidden FC layer of the two added FC layers (sec. 4);
    ``o_size``: LNet_o's input (the whole image, resized; ``None``: the loader's image size);
    ``s_size``: LNet_s's input (the head-shoulder crop); ``local_response_norm``: AlexNet's LRN after
    C1 and C2 [10]; ``batch_norm``: batch normalisation after every convolution (not in the paper:
    a substitute for the ImageNet initialisation that makes training from scratch converge within
    CPU budgets).

    Not in the paper either (both default to the paper's choices):
    ``padding_mode``: padding of the convolutions (``zeros`` as AlexNet; ``reflect`` keeps the C5
    maps from lighting up along the image border, an artefact of zero padding with batch norm);
    ``pooling``: what feeds the two FC layers, ``pool5`` (AlexNet's 3x3/2 max-pooling of C5, sec. 4)
    or ``global_max`` (the maximum of every C5 channel over the map: the FC layers cannot learn
    position-specific responses, so a face anywhere must light the same C5 filters, and the head
    works at any input size); ``face_logit``: one more output after the attributes, "a face is in
    the image", trained against clutter-only images (``clutter_negatives`` of the LNet stages).
    """

    channels: tuple[int, ...] = (96, 256, 384, 384, 256)
    fc_dim: int = 4096
    dropout: float = 0.5
    local_response_norm: bool = True
    batch_norm: bool = False
    o_size: int | None = None
    s_size: int = 227
    padding_mode: str = "zeros"
    pooling: str = "pool5"
    face_logit: bool = False

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.validate()

    def validate(self) -> None:
        if len(self.channels) != 5 or min(self.channels) < 1:
            raise ValueError(f"lnet.channels must be five positive widths (C1..C5), got {self.channels}")
        if self.padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"lnet.padding_mode must be zeros, reflect or replicate, got {self.padding_mode!r}")
        if self.pooling not in ("pool5", "global_max"):
            raise ValueError(f"lnet.pooling must be pool5 or global_max, got {self.pooling!r}")


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


@dataclass
class ANetConfig:
    """ANet structure (Fig. 3 (c), sec. 3.2): ``channels``/``kernels`` of C1-C4, ``grids`` of the
    locally shared C3 and C4 (rows, cols of cells), the FC width and the input size."""

    input_size: int = 64
    channels: tuple[int, ...] = (64, 128, 160, 192)
    kernels: tuple[int, ...] = (5, 3, 3, 3)
    grids: tuple[tuple[int, int], ...] = ((2, 2), (2, 2))
    fc_dim: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.kernels = tuple(int(k) for k in self.kernels)
        self.grids = tuple((int(g[0]), int(g[1])) for g in self.grids)
        self.validate()

    def validate(self) -> None:
        if len(self.channels) != 4 or len(self.kernels) != 4 or len(self.grids) != 2:
            raise ValueError("anet needs 4 channels, 4 kernels (C1..C4) and 2 grids (C3, C4)")
        if self.kernels[0] % 2 == 0 or self.kernels[1] % 2 == 0:
            raise ValueError(f"anet.kernels of C1 and C2 must be odd ('same' padding), got {self.kernels[:2]}")
        if self.input_size % 4:
            raise ValueError(f"anet.input_size must be a multiple of 4 (two 2x2 poolings), got {self.input_size}")


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an image batch to ``size x size`` (antialiased), a no-op when it already is."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class LNet(nn.Module):
    """LNet_o / LNet_s (sec. 3.1, eq. 1-2): five convolutions with globally shared filters, max-pooling
    after C1 and C2, then the two FC layers added for attribute fine-tuning (sec. 4)."""

    #: (kernel, stride, padding) of every layer up to C5, for the receptive-field geometry.
    LAYERS: ClassVar[tuple[tuple[int, int, int], ...]] = ((11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1),
                                                          (3, 1, 1), (3, 1, 1))

    def __init__(self, n_outputs: int, input_size: int, cfg: LNetConfig, in_chans: int = 3):
        super().__init__()
        c = cfg.channels
        pm = cfg.padding_mode
        self.convs = nn.ModuleList([
            nn.Conv2d(in_chans, c[0], 11, stride=4, padding=2, padding_mode=pm), nn.Conv2d(c[0], c[1], 5, padding=2, padding_mode=pm),
            nn.Conv2d(c[1], c[2], 3, padding=1, padding_mode=pm), nn.Conv2d(c[2], c[3], 3, padding=1, padding_mode=pm),
            nn.Conv2d(c[3], c[4], 3, padding=1, padding_mode=pm)])
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0) if cfg.local_response_norm else nn.Identity()
        self.bns = nn.ModuleList([nn.BatchNorm2d(w) if cfg.batch_norm else nn.Identity() for w in c])
        self.pool = nn.MaxPool2d(3, 2)
        if cfg.pooling == "global_max":
            pooled, n_in = nn.AdaptiveMaxPool2d(1), c[4]
        else:
            side = (self.map_size(input_size) - 3) // 2 + 1
            if side < 1:
                raise ValueError(f"LNet input {input_size}px gives a {self.map_size(input_size)}-cell C5 map, too small for the "
                                 f"3x3 pooling of the FC head (use at least 63px)")
            # AlexNet's pool5 [10] feeds the FC layers; the response maps (C5) keep the two max-poolings
            pooled, n_in = nn.MaxPool2d(3, 2), c[4] * side * side
        self.head = nn.Sequential(pooled, nn.Flatten(), nn.Dropout(cfg.dropout),
                                  nn.Linear(n_in, cfg.fc_dim), nn.ReLU(inplace=True),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.fc_dim, n_outputs + int(cfg.face_logit)))

    @classmethod
    def map_size(cls, size: int) -> int:
        for k, s, p in cls.LAYERS:
            size = (size + 2 * p - k) // s + 1
        return size

    @classmethod
    def cell_geometry(cls) -> tuple[float, float]:
        """(offset, stride): the centre of C5 cell ``j`` is at ``offset + stride * j`` input pixels
        (continuous coordinates, pixel ``i`` covering ``[i, i + 1)``)."""
        offset, stride = 0.0, 1.0
        for k, s, p in reversed(cls.LAYERS):
            offset, stride = s * offset - p + (k - 1) / 2.0, s * stride
        return offset + 0.5, stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """C5 response maps ``h^(5)`` ``[B, 256, h, w]`` for an image of any size."""
        x = self.pool(self.norm(F.relu(self.bns[0](self.convs[0](x)))))
        x = self.pool(self.norm(F.relu(self.bns[1](self.convs[1](x)))))
        for conv, bn in zip(self.convs[2:], self.bns[2:]):
            x = F.relu(bn(conv(x)))
        return x

    def response_map(self, x: torch.Tensor) -> torch.Tensor:
        """The averaged C5 response (Fig. 3 (a, b)) ``[B, h, w]``."""
        return self.features(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The FC outputs: the attribute logits, then the face logit when ``face_logit``."""
        return self.head(self.features(x))


def clutter_canvases(n: int, size: int, seed: int) -> torch.Tensor:
    """``uint8 [n, 3, size, size]`` images of SynthFaces' background alone (no person): a flat colour
    and random shapes drawn by the generator's clutter routine (``datamodules.synthetic``), as many
    shapes per area as its canvases, 2x supersampled, Gaussian blur of the generator's radius range
    (scaled by ``sqrt(size / 64)``) and sensor noise. Deterministic in ``seed``."""
    from PIL import Image, ImageDraw, ImageFilter

    from datamodules.synthetic import BLUR_RADIUS_RANGE, CLUTTER_SHAPES, NOISE_SIGMA_MAX, _draw_clutter

    rng = np.random.default_rng([int(seed), 0x10E7])
    area = (size / 64) ** 2
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        big = 2 * size
        im = Image.new("RGB", (big, big), tuple(int(c) for c in rng.integers(30, 226, 3)))
        _draw_clutter(ImageDraw.Draw(im), big, rng,
                      int(rng.integers(int(CLUTTER_SHAPES[0] * area), int(CLUTTER_SHAPES[1] * area) + 1)))
        radius = float(rng.uniform(*BLUR_RADIUS_RANGE)) * math.sqrt(size / 64)
        im = im.resize((size, size), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(radius))
        a = np.asarray(im, np.float32) + rng.normal(0, rng.uniform(0, NOISE_SIGMA_MAX), (size, size, 3))
        out[i] = np.clip(np.rint(a), 0, 255)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


#: torchvision AlexNet ``features`` indices of C1..C5.
TORCHVISION_ALEXNET_CONVS = (0, 3, 6, 8, 10)


def load_pretrained_convs(lnet: LNet, source: str) -> None:
    """Initialise C1-C5 from a pre-trained network (LNet+, sec. 4): ``"torchvision"`` (ImageNet
    AlexNet, needs the network once; its widths are 64/192/384/256/256) or a local weights file (a
    torchvision AlexNet state dict, an LNet state dict or a facebench checkpoint)."""
    if source == "torchvision":
        try:
            from torchvision.models import AlexNet_Weights

            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001  (URL / hub errors come in many types)
            raise RuntimeError(f"could not fetch torchvision's ImageNet AlexNet weights ({type(exc).__name__}); this "
                               f"machine may be offline: give 'pretrained: <local weights file>' or leave it unset "
                               f"for random initialisation") from None
        where = "torchvision AlexNet"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pre-trained LNet weights file is missing")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        where = str(path)
    own = lnet.state_dict()
    loaded = {}
    for i, tv in enumerate(TORCHVISION_ALEXNET_CONVS):
        for part in ("weight", "bias"):
            names = [f"features.{tv}.{part}", f"convs.{i}.{part}", f"lnet_o.convs.{i}.{part}", f"lnet_s.convs.{i}.{part}"]
            key = next((n for n in names if n in state), None)
            if key is None:
                raise ValueError(f"{where}: no weights for C{i + 1} (looked for {', '.join(names)})")
            if state[key].shape != own[f"convs.{i}.{part}"].shape:
                raise ValueError(f"{where}: {key} has shape {tuple(state[key].shape)}, LNet C{i + 1} needs "
                                 f"{tuple(own[f'convs.{i}.{part}'].shape)} (set lnet.channels to the network's widths, "
                                 f"torchvision AlexNet: [64, 192, 384, 256, 256])")
            loaded[f"convs.{i}.{part}"] = state[key]
    lnet.load_state_dict(loaded, strict=False)


class ANet(nn.Module):
    """ANet (sec. 3.2, Fig. 3 (c)): C1-C2 globally shared, C3-C4 locally shared (eq. 4), three
    max-poolings (after C1, C2, C4) and one FC layer whose ReLU units are the face representation."""

    def __init__(self, cfg: ANetConfig, in_chans: int = 3):
        super().__init__()
        c, k = cfg.channels, cfg.kernels
        self.cfg = cfg
        self.c1 = nn.Conv2d(in_chans, c[0], k[0], padding=k[0] // 2)
        self.c2 = nn.Conv2d(c[0], c[1], k[1], padding=k[1] // 2)
        self.c3 = LocallySharedConv2d(c[1], c[2], k[2], grid=cfg.grids[0])
        self.c4 = LocallySharedConv2d(c[2], c[3], k[3], grid=cfg.grids[1])
        self.pool = nn.MaxPool2d(2)
        self.window = cfg.input_size // 4                      # C2 map of one input window
        side = (self.window - k[2] + 1 - k[3] + 1) // 2
        if side < 1:
            raise ValueError(f"anet.input_size {cfg.input_size} is too small for the C3/C4 kernels {k[2:]}")
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c[3] * side * side, cfg.fc_dim),
                                nn.ReLU(inplace=True))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Globally shared C1-C2 (with their max-pooling) for an image of any size."""
        return self.pool(F.relu(self.c2(self.pool(F.relu(self.c1(x))))))

    def local(self, c2: torch.Tensor) -> torch.Tensor:
        """Locally shared C3-C4 on aligned C2 windows -> C4 maps ``h^(4)``."""
        return F.relu(self.c4(F.relu(self.c3(c2))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """FC features ``[B, fc_dim]`` of aligned faces at the input size."""
        return self.fc(self.pool(self.local(self.trunk(x))))

    def dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate ANet at every window of an image of any size (>= the input size) in one pass
        (sec. 3.2): C1-C2 once over the image, C3 by the interweaved operation (Fig. 5), C4 and FC
        per window. Windows step by one C2 cell (4 pixels). Returns FC features
        ``[B, n_y, n_x, fc_dim]`` and the mean C4 response of each window ``[B, n_y, n_x]``
        (searched for its maximum as in eq. 5). Equals :meth:`forward` on C2-map windows."""
        c2 = self.trunk(x)
        c3 = F.relu(self.c3.interweaved(c2, (self.window, self.window)))       # [B, ny, nx, C, h, w]
        b, ny, nx = c3.shape[:3]
        c4 = F.relu(self.c4(c3.reshape(b * ny * nx, *c3.shape[3:])))
        feats = self.fc(self.pool(c4))
        return feats.reshape(b, ny, nx, -1), c4.mean(dim=(1, 2, 3)).reshape(b, ny, nx)


# ------------------------------------------------------------------------------------------------
# weakly supervised localisation (sec. 3.1)
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# identity losses and measures (sec. 4)
# ------------------------------------------------------------------------------------------------
def similarity_loss(features: torch.Tensor, identities: torch.Tensor) -> torch.Tensor:
    """Sec. 4: pull features of the same identity together, mean over same-identity pairs of the
    batch of ``1/2 ||f_i - f_j||^2`` (zero when the batch has no such pair)."""
    same = torch.triu(identities[:, None] == identities[None, :], diagonal=1)
    if not same.any():
        return features.sum() * 0.0
    d2 = (features[:, None, :] - features[None, :, :]).pow(2).sum(-1)
    return 0.5 * d2[same].mean()


def identity_retrieval(features: torch.Tensor, identities: torch.Tensor) -> dict[str, float]:
    """Identity measures on unseen identities: leave-one-out 1-NN accuracy (cosine similarity, over
    samples whose identity has another sample) and same/different verification AUROC over all pairs."""
    from torchmetrics.functional.classification import binary_auroc

    f = F.normalize(features.float(), dim=1)
    sim = f @ f.t()
    same = identities[:, None] == identities[None, :]
    sim_nn = sim.clone().fill_diagonal_(-math.inf)
    has_mate = (same.sum(1) > 1)
    nn_hit = identities[sim_nn.argmax(1)] == identities
    pairs = torch.triu(torch.ones_like(same), diagonal=1)
    out = {"nn_accuracy": float(nn_hit[has_mate].float().mean()) if has_mate.any() else math.nan}
    labels = same[pairs]
    out["verification_auroc"] = float(binary_auroc(sim[pairs], labels.long())) if 0 < labels.sum() < labels.numel() else math.nan
    return out


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


# ------------------------------------------------------------------------------------------------
# the stages
# ------------------------------------------------------------------------------------------------
def _read_checkpoint(path: str | None) -> dict[str, Any]:
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

    task_kinds = frozenset({"binary"})
    input_size = 227
    #: Config arguments inherited from the earlier stage's checkpoint when not given.
    inherited: ClassVar[tuple[str, ...]] = ("lnet", "localization")
    #: Flags (buffers) a stage sets when it trains a network, checked by the stages that need it.
    trained_flags: ClassVar[tuple[str, ...]] = ("lnet_o_trained", "lnet_s_trained", "anet_trained")

    def __init__(self, task: Any, *, lnet: dict | None = None, localization: dict | None = None,
                 pretrained: str | None = None, calibrate_face_scale: bool = False, **kwargs: Any):
        parent = _read_checkpoint(kwargs.get("init_checkpoint")).get("hyper_parameters", {})
        self.calibrate_face_scale = bool(calibrate_face_scale)
        lnet = _plain(config_from_value(LNetConfig, lnet if lnet is not None else parent.get("lnet"), "lnet"))
        localization = _plain(config_from_value(LocalizationConfig, {**(parent.get("localization") or {}), **(localization or {})},
                                          "localization"))
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
        state = _read_checkpoint(path)
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
        state = _read_checkpoint(path)
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
        parent = _read_checkpoint(kwargs.get("init_checkpoint")).get("hyper_parameters", {})
        anet = _plain(config_from_value(ANetConfig, anet if anet is not None else parent.get("anet"), "anet"))
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
        target = torch.searchsorted(self.anet_identity_ids, batch["identity"])
        softmax_loss = F.cross_entropy(logits, target)
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
class LNetsANetClassifier(ANetStage):
    """The full cascade (sec. 3, Fig. 3 (d)) and its linear classifiers (sec. 5).

    ANet (frozen, from the ``anet`` stage) is evaluated densely on the located face ``x_f`` cropped
    ``view_margin`` pixels (at ANet's scale) larger than its input; the FC vectors of ``views``
    (centre, corners, the eq. 5 maximum-response window) are concatenated into ``h_a``; one linear
    classifier per attribute (``classifier``: ``linear_svm`` as the paper, or
    ``logistic_regression``; regularisation ``classifier_c``, one value or a list chosen per attribute
    by identity-grouped cross-validation) is fitted with scikit-learn on the
    training images of the held-out classifier identities, within one training epoch. The
    coefficients (features standardised, folded into the weights) are buffers, so the checkpoint
    holds the whole predictor. Probabilities are the sigmoid of the decision values.
    """

    input_size = 80
    trains_anet = False
    gradient_trained = False
    default_scheduler = None
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
        self.automatic_optimization = False
        self._train_parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

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

    def on_train_epoch_start(self) -> None:
        self._train_parts = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch = self.anet_samples(batch, self.classifier_identity_ids)
        if batch["image"].shape[0]:
            with torch.no_grad():
                self._train_parts.append((self.multiview_features(batch["image"]).cpu(), batch["label"].cpu(),
                                          batch["identity"].cpu()))
        return None

    def on_validation_epoch_start(self) -> None:
        self.fit_classifiers()     # validation inside fit runs before on_train_epoch_end

    def on_train_epoch_end(self) -> None:
        self.fit_classifiers()

    def fit_classifiers(self) -> None:
        """One linear classifier per binary column on the collected features (standardised); with
        several ``classifier_c`` values, each attribute's is chosen by identity-grouped 3-fold
        cross-validation (accuracy) on the classifier identities."""
        if not self._train_parts:
            return
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, GroupKFold
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        x = torch.cat([p[0] for p in self._train_parts]).double().numpy()
        y = torch.cat([p[1] for p in self._train_parts]).numpy()
        groups = torch.cat([p[2] for p in self._train_parts]).numpy()
        self._train_parts = []
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
            n_groups = len(np.unique(groups[ok]))
            if len(self.classifier_c) > 1 and n_groups >= 3 and min(positives, total - positives) >= 3:
                model = GridSearchCV(model, {"C": self.classifier_c}, cv=GroupKFold(3), scoring="accuracy")
                model.fit(xs[ok], target[ok], groups=groups[ok])
                chosen[col] = model.best_params_["C"]
                model = model.best_estimator_
            else:
                model.fit(xs[ok], target[ok])
                chosen[col] = self.classifier_c[0]
            w = model.coef_[0] / scaler.scale_
            weight[col], bias[col] = w, float(model.intercept_[0]) - float(w @ scaler.mean_)
        self.classifier_weight.copy_(torch.as_tensor(weight, dtype=self.classifier_weight.dtype))
        self.classifier_bias.copy_(torch.as_tensor(bias, dtype=self.classifier_bias.dtype))
        self.classifier_c_chosen.copy_(torch.as_tensor(chosen, dtype=self.classifier_c_chosen.dtype))
        self.classifier_fitted.fill_(True)

    def configure_optimizers(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------
# analyses
# ------------------------------------------------------------------------------------------------
def attribute_groups(weight: np.ndarray, names: Sequence[str], n_groups: int, seed: int = 0,
                     normalize: bool = True) -> pd.DataFrame:
    """k-means over the attribute vectors of ANet's attribute layer (sec. 5.1, Fig. 10): one row per
    attribute with its group and its distance to the group centre."""
    from sklearn.cluster import KMeans

    vectors = np.asarray(weight, dtype=np.float64)
    if normalize:
        vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    k = min(int(n_groups), len(names))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    dist = np.linalg.norm(vectors - km.cluster_centers_[km.labels_], axis=1)
    out = pd.DataFrame({"attribute": list(names), "group": km.labels_ + 1, "distance_to_centre": dist})
    return out.sort_values(["group", "distance_to_centre"]).reset_index(drop=True)


def _plot_groups(weight: np.ndarray, groups: pd.DataFrame, names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    vectors = weight / np.clip(np.linalg.norm(weight, axis=1, keepdims=True), 1e-12, None)
    xy = PCA(n_components=2).fit_transform(vectors) if len(names) > 2 else np.zeros((len(names), 2))
    group_of = dict(zip(groups["attribute"], groups["group"]))
    order = list(groups["attribute"])
    pos = [list(names).index(a) for a in order]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(17, 8))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        g = group_of[name]
        ax1.scatter(xy[i, 0], xy[i, 1], color=cmap((g - 1) % 10), s=30)
        ax1.annotate(name, xy[i], fontsize=7, color=cmap((g - 1) % 10))
    ax1.set_title("ANet attribute vectors (PCA), coloured by k-means group")
    sim = vectors[pos] @ vectors[pos].T
    im = ax2.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax2.set_xticks(range(len(order)), order, rotation=90, fontsize=6)
    ax2.set_yticks(range(len(order)), [f"{group_of[a]}: {a}" for a in order], fontsize=6)
    ax2.set_title("cosine similarity of attribute vectors, grouped")
    fig.colorbar(im, ax=ax2, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register_analysis("anet-attribute-groups")
def anet_attribute_groups_command(argv: list[str]) -> int:
    """``facebench analyze anet-attribute-groups CHECKPOINT [--groups 6] [--out DIR]``: k-means over
    the attribute layer of an ``anet`` / ``lnets_anet`` checkpoint (Fig. 10) -> CSV + PNG."""
    ap = argparse.ArgumentParser(prog="facebench analyze anet-attribute-groups",
                                 description="Group attributes by k-means over ANet's attribute weight vectors (Fig. 10).")
    ap.add_argument("checkpoint", type=Path, help="checkpoint of an anet or lnets_anet run (checkpoints/best.ckpt)")
    ap.add_argument("--groups", type=int, default=6, help="number of k-means groups (Fig. 10 shows 6)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--raw", action="store_true", help="cluster the raw vectors instead of unit-length ones")
    ap.add_argument("--out", type=Path, help="output folder (default: <run>/analysis)")
    args = ap.parse_args(argv)
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint}: checkpoint file is missing")
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict", ckpt)
    if "attribute_head.weight" not in state:
        raise ValueError(f"{args.checkpoint}: no ANet attribute layer (attribute_head.weight); give a checkpoint of the "
                         f"anet or lnets_anet stage")
    task = (ckpt.get("hyper_parameters") or {}).get("task")
    weight = state["attribute_head.weight"].float().numpy()
    names = [t["name"] for t in task["targets"]] if task else [f"attribute_{i}" for i in range(len(weight))]
    groups = attribute_groups(weight, names, args.groups, args.seed, normalize=not args.raw)
    out = args.out or args.checkpoint.resolve().parent.parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    groups.to_csv(out / "anet_attribute_groups.csv", index=False)
    _plot_groups(weight, groups, names, out / "anet_attribute_groups.png")
    for g, rows in groups.groupby("group"):
        print(f"group {g}: {', '.join(rows['attribute'])}")
    print(f"wrote {out / 'anet_attribute_groups.csv'} and {out / 'anet_attribute_groups.png'}")
    return 0


@register_analysis("lnet-localization")
def lnet_localization_command(argv: list[str]) -> int:
    """``facebench analyze lnet-localization RUN_DIR [--split test]``: the face-localisation recall
    curve over IoU thresholds (Fig. 7 (a)) from a run's saved boxes -> CSV + PNG."""
    ap = argparse.ArgumentParser(prog="facebench analyze lnet-localization",
                                 description="Recall of the LNets' face boxes over IoU thresholds (Fig. 7 (a)).")
    ap.add_argument("run_dirs", type=Path, nargs="+", help="run folders of lnet_s / anet / lnets_anet runs on data with boxes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, help="output folder (default: the first run's analysis/)")
    args = ap.parse_args(argv)
    thresholds = np.round(np.linspace(0.05, 0.95, 19), 2)
    curves = []
    for run in args.run_dirs:
        path = run / f"predictions_{args.split}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no saved predictions for split {args.split!r}")
        with np.load(path) as z:
            if "face_box" not in z.files or "true_box" not in z.files:
                raise ValueError(f"{path}: no face_box / true_box arrays (a run of lnet_s or later on data with boxes)")
            iou = box_iou_xywh(z["face_box"], z["true_box"])
        curves.append(pd.DataFrame({"run": run.name, "iou_threshold": thresholds,
                                    "recall": [(iou >= t).mean() for t in thresholds]}))
    table = pd.concat(curves, ignore_index=True)
    out = args.out or args.run_dirs[0] / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "lnet_localization_recall.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for run, rows in table.groupby("run", sort=False):
        ax.plot(rows["iou_threshold"], rows["recall"], marker="o", ms=3, label=run)
    ax.set_xlabel("overlap ratio (IoU)")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "lnet_localization_recall.png", dpi=120)
    plt.close(fig)
    at = table[np.isclose(table["iou_threshold"], 0.5)]
    for _, r in at.iterrows():
        print(f"{r['run']}: recall@iou0.5 = {r['recall']:.4f}")
    print(f"wrote {out / 'lnet_localization_recall.csv'} and {out / 'lnet_localization_recall.png'}")
    return 0
