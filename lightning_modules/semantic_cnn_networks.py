"""The networks of the semantic-features CNN ("Recognizing semantic features in faces using deep
learning", ``papers/semantic_facial_features_fer_vv.txt``): the convolutional network of Section
4.1.1 (Figure 5) with the sweep arguments of Section 4.1, its local contrast normalisation layer
(Jarrett et al., the paper's ref. [9]) and the per-pixel standardisation of Section 3.3.

The methods that train them (``semantic_cnn``, ``semantic_cnn_shape``) are in
:mod:`facebench.lightning_modules.semantic_cnn`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_window(kernel_size: int, sigma: float) -> torch.Tensor:
    """A ``kernel_size x kernel_size`` Gaussian window summing to 1."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"the LCN window size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"the LCN Gaussian sigma must be positive, got {sigma}")
    r = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).float()


class LocalContrastNorm(nn.Module):
    """Local contrast normalisation of Jarrett et al. (ICCV 2009, Section 2), the paper's ref. [9].

    Subtractive step: ``v_ijk = x_ijk - sum_{ipq} w_pq x_{i,j+p,k+q}`` with a Gaussian window
    ``w`` normalised so that it sums to 1 over the window *and all feature maps* (the local mean
    is shared across maps). Divisive step: ``y_ijk = v_ijk / max(c, sigma_jk)`` with
    ``sigma_jk = sqrt(sum_{ipq} w_pq v^2_{i,j+p,k+q})`` and ``c`` the mean of ``sigma`` over the
    image's positions (per image); ``eps`` bounds the divisor from below.

    Open details (standard choices): the window is 9x9 (Jarrett's size) with sigma 2 (pylearn2's
    ``gaussian_filter``, the library the paper used); at the borders the window is cut to the
    image and renormalised to the weight it keeps (torch7 ``SpatialContrastiveNormalization``),
    so the border is not biased towards zero.
    """

    def __init__(self, kernel_size: int = 9, sigma: float = 2.0, eps: float = 1e-4):
        super().__init__()
        self.kernel_size, self.sigma, self.eps = kernel_size, sigma, eps
        self.register_buffer("window", gaussian_window(kernel_size, sigma), persistent=False)
        # the Gaussian window is separable: its 1-D factor, applied along rows then columns
        self.register_buffer("window_1d", self.window.sum(dim=1), persistent=False)

    def _local_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Window- and map-weighted mean around every position, ``[B, 1, H, W]``: the mean over
        maps, then the separable window (both linear, so the order does not matter)."""
        pad = self.kernel_size // 2
        g = self.window_1d.to(x.dtype)

        def smooth(m: torch.Tensor) -> torch.Tensor:
            m = F.conv2d(m, g.view(1, 1, -1, 1), padding=(pad, 0))
            return F.conv2d(m, g.view(1, 1, 1, -1), padding=(0, pad))

        return smooth(x.mean(dim=1, keepdim=True)) / smooth(torch.ones_like(x[:1, :1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x - self._local_mean(x)
        # clamp before sqrt: a window of dead ReLUs has zero variance (sqrt' would be infinite)
        sigma = self._local_mean(v * v).clamp_min(self.eps ** 2).sqrt()
        c = sigma.mean(dim=(2, 3), keepdim=True)
        return v / torch.maximum(sigma, c)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}, eps={self.eps}"


class PixelStandardize(nn.Module):
    """Per-pixel standardisation with training-set statistics (Section 3.3, last GCN step):
    ``(x - mean_xy) / (std_xy + eps)`` (pylearn2's ``Standardize``, ``std_eps = 1e-4``).
    Identity until :meth:`fit` is called; the statistics are buffers saved in checkpoints."""

    def __init__(self, channels: int, size: int, eps: float = 1e-4):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(channels, size, size))
        self.register_buffer("std", torch.ones(channels, size, size) - eps)   # (x - 0) / (1 - eps + eps): identity
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, images: Any) -> None:
        """Statistics from an iterable of image batches ``[B, C, H, W]``."""
        total, total_sq, n = None, None, 0
        for x in images:
            x = x.double()
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x * x).sum(0) if total_sq is None else total_sq + (x * x).sum(0)
            n += x.shape[0]
        if not n:
            raise ValueError("PixelStandardize.fit: no images")
        if total.shape != self.mean.shape:
            raise ValueError(f"PixelStandardize.fit: images of shape {tuple(total.shape)}, the network expects "
                             f"{tuple(self.mean.shape)}")
        mean = total / n
        self.mean.copy_(mean.float())
        self.std.copy_((total_sq / n - mean * mean).clamp_min(0).sqrt().float())
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std + self.eps)


def _layer_set(value: int | Sequence[int] | None, depth: int, what: str) -> frozenset[int]:
    """1-based conv layer numbers from an int, a list or None (none)."""
    if value is None:
        return frozenset()
    items = [value] if isinstance(value, int) else list(value)
    bad = [v for v in items if not isinstance(v, int) or not 1 <= v <= depth]
    if bad:
        raise ValueError(f"{what} must name conv layers 1..{depth} (an int, a list or null), got {value!r}")
    return frozenset(items)


class ConvBlock(nn.Module):
    """conv (stride 1, no padding) -> ReLU -> [dropout] -> [LCN] -> [max-pool], Section 4.1.1."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, *, lcn: LocalContrastNorm | None,
                 pool: nn.Module | None, dropout: float):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lcn = lcn if lcn is not None else nn.Identity()
        self.pool = pool if pool is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.lcn(self.dropout(F.relu(self.conv(x)))))


class SemanticCNN(nn.Module):
    """The network of Section 4.1.1 (Figure 5), parameterised for the sweeps of Section 4.1.

    Default: 48x48x1 -> conv 5x5x64 -> LCN -> max-pool 3x3/2 (44 -> 22) -> conv 5x5x64 (18) ->
    conv 4x4x128 (15) -> FC 3072 -> ReLU -> dropout 0.2 -> outputs.

    The FC layer's activation is our choice: Section 4.1.1 calls it "a fully connected linear
    layer" and, two sentences later, says "All layers in the network are made up of ReLu units".
    We apply ReLU (a linear 3072-unit layer followed by the linear output layer would collapse into
    one linear map of the conv features, making its width meaningless); dropout acts on its output.

    * ``depth``: number of conv layers; fewer keeps the first ones, more repeats the last layer's
      kernel size and width ("addition or removal of a convolutional layer, keeping the fully
      connected layer last", Section 4.1.2);
    * ``width_multiplier``: scales every conv layer's number of feature maps (Section 4.1.2);
    * ``lcn_after`` / ``pool_after``: 1-based conv layers followed by LCN / max-pooling (Section
      4.1.3; LCN comes before pooling, as in Section 4.1.1);
    * ``conv_dropout`` / ``fc_dropout``: dropout on the units of every conv layer / of the FC layer
      (Section 4.1.4; dropping a layer's units = dropping its outputs, Srivastava et al.).

    Pooling uses ``ceil_mode`` so that 44 -> 22 as the paper states (cuda-convnet / pylearn2 pooling
    covers the border).
    """

    def __init__(self, in_chans: int = 1, image_size: int = 48, n_outputs: int = 7, *,
                 conv_channels: Sequence[int] = (64, 64, 128), kernel_sizes: Sequence[int] = (5, 5, 4),
                 depth: int | None = None, width_multiplier: float = 1.0, fc_units: int = 3072,
                 fc_dropout: float = 0.2, conv_dropout: float = 0.0, lcn_after: int | Sequence[int] | None = (1,),
                 pool_after: int | Sequence[int] | None = (1,), pool_size: int = 3, pool_stride: int = 2,
                 lcn_kernel_size: int = 9, lcn_sigma: float = 2.0):
        super().__init__()
        channels, kernels = list(conv_channels), list(kernel_sizes)
        if not channels or len(channels) != len(kernels):
            raise ValueError(f"conv_channels {channels} and kernel_sizes {kernels} must be non-empty and of equal length")
        depth = len(channels) if depth is None else int(depth)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        channels = (channels + [channels[-1]] * depth)[:depth]
        kernels = (kernels + [kernels[-1]] * depth)[:depth]
        if width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        channels = [max(1, int(round(c * width_multiplier))) for c in channels]
        for name, p in (("fc_dropout", fc_dropout), ("conv_dropout", conv_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        lcn_at, pool_at = _layer_set(lcn_after, depth, "lcn_after"), _layer_set(pool_after, depth, "pool_after")
        self.channels, self.kernels = channels, kernels
        blocks, c_in = [], in_chans
        for i, (c, k) in enumerate(zip(channels, kernels), start=1):
            blocks.append(ConvBlock(
                c_in, c, k, dropout=conv_dropout,
                lcn=LocalContrastNorm(lcn_kernel_size, lcn_sigma) if i in lcn_at else None,
                pool=nn.MaxPool2d(pool_size, pool_stride, ceil_mode=True) if i in pool_at else None))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.feature_shape = self._feature_shape(in_chans, image_size)
        self.fc = nn.Linear(math.prod(self.feature_shape), fc_units)
        self.fc_dropout = nn.Dropout(fc_dropout) if fc_dropout > 0 else nn.Identity()
        self.out = nn.Linear(fc_units, n_outputs)

    def _feature_shape(self, in_chans: int, image_size: int) -> tuple[int, int, int]:
        size = image_size
        for i, b in enumerate(self.blocks, start=1):
            size = size - b.conv.kernel_size[0] + 1
            if size < 1:
                raise ValueError(f"conv layer {i} (kernel {b.conv.kernel_size[0]}) gets a feature map smaller than its "
                                 f"kernel: an input of {image_size}px cannot feed {len(self.blocks)} conv layers "
                                 f"{self.kernels} with this pooling; lower depth or add pooling")
            if isinstance(b.pool, nn.MaxPool2d):
                k, s = b.pool.kernel_size, b.pool.stride
                size = math.ceil((size - k) / s) + 1 if size >= k else 1
        return self.blocks[-1].conv.out_channels, size, size

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(self.features(x).flatten(1)))
        return self.out(self.fc_dropout(h))
