"""The semantic-features CNN ("Recognizing semantic features in faces using deep learning",
``papers/semantic_facial_features_fer_vv.txt``) and its shape-regression variant.

Registered names:

* ``semantic_cnn``: the network of Section 4.1.1 for binary, multi-class, ordinal and multi-label
  targets, trained as in Section 3.4; every architectural choice that the paper sweeps (depth and
  width, Figure 7; LCN / max-pool placement, Figure 8; dropout, Figure 9) is a constructor
  argument, so a suite ``grid:`` reproduces a sweep. ``per_task_networks: true`` trains one
  network per target inside one module (the paper's individual networks of Section 4.2.7),
  ``sigmoid_all_classes: true`` the paper's joint network over all classes as non-exclusive labels.
* ``semantic_cnn_shape``: the AAM regression of Section 4.2.6 on landmark data: the same network
  regresses a PCA-compressed shape vector plus the in-plane angle; reported as cosine similarity
  and angle error.

The paper's first-layer similarity analysis (Section 4.2.7, Figure 16) is
``facebench analyze first-layer-similarity`` (:mod:`facebench.benchmarks.analyses.semantic_cnn`).

Preprocessing (Section 3.3): face detection / alignment is the datamodule's job
(``datamodules/preprocess.py``). Global contrast normalisation has two parts: the per-image part
(subtract the image's mean, scale it to a fixed norm, pylearn2's ``GlobalContrastNormalization``
with scale 100) is the datamodule's ``preprocess: {global_contrast: true}``, which the ``fer`` and
``celeba`` suites set for this method; the per-pixel part (subtract each pixel's training-set mean,
divide by its standard deviation) is this method's first layer, :class:`PixelStandardize`, fitted
on the training split when fitting starts (``pixel_standardize``).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import CosineSimilarity, MeanAbsoluteError

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.registry import register_method

ALL_TARGET_KINDS = frozenset({"binary", "multiclass", "multilabel", "ordinal"})


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# the classification method
# ------------------------------------------------------------------------------------------------
def class_indicators(task: TaskSpec, labels: torch.Tensor, soft: dict[str, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 targets and a validity mask in the logit layout: every class of every target as one
    non-exclusive label (Section 4.2.7's 37 labels); rater distributions replace the one-hot rows
    of targets named in ``soft``."""
    target = torch.zeros(labels.shape[0], task.n_logits, device=labels.device)
    valid = torch.zeros_like(target, dtype=torch.bool)
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        y = labels[:, ys]
        if t.is_sigmoid:
            target[:, ls], valid[:, ls] = y.clamp(min=0).float(), y >= 0
        elif soft and t.name in soft:   # an all-zero distribution marks an image without a label
            q = soft[t.name].float()
            target[:, ls], valid[:, ls] = q, (q.sum(dim=1) > 0)[:, None]
        else:
            y0 = y[:, 0]
            target[:, ls] = F.one_hot(y0.clamp(min=0), t.n_classes).float()
            valid[:, ls] = (y0 >= 0)[:, None]
    return target, valid


@register_method("semantic_cnn")
class SemanticFeaturesCNN(FaceAttributeTask):
    """The semantic-features CNN (Section 4.1.1) trained as in Section 3.4: SGD with momentum,
    negative log-likelihood, learning rate 0.0025 decreased linearly to 0.001 over 50 epochs
    (``LinearLR`` with ``end_factor`` 0.4), batches of 100 (the datamodule's ``batch_size``), and
    checkpoint selection / early stopping on the validation accuracy (the paper stops on the
    misclassification rate).

    Network arguments: see :class:`SemanticCNN`. Others:

    * ``per_task_networks``: one separate network per target (the paper's individual networks),
      instead of one joint network with all outputs. As if each were trained alone, the training
      loss is the *sum* of the per-target losses (each network gets its own loss's gradient at the
      full learning rate; a mean would train each at ``lr / T``) and each network keeps the weights
      of its own best validation epoch (its own accuracy: :mod:`facebench.lightning_modules.selection`);
    * ``sigmoid_all_classes``: the joint network of Section 4.2.7: every class of every target is a
      non-exclusive label with a sigmoid output (binary cross-entropy averaged over all labels);
      probabilities of a multi-class slice are its sigmoids normalised to sum to 1; with
      ``soft_targets`` the rater distributions are the per-class sigmoid targets. Default: the
      task's loss (sigmoid for binary targets, softmax for multi-class / ordinal ones: Section 4.1.1's
      softmax; a 2-way softmax equals a sigmoid on one logit);
    * ``pixel_standardize``: the per-pixel standardisation of Section 3.3, fitted on the training
      split at the start of fitting.

    Open details: the momentum (not given) is 0.9 and there is no weight decay (none mentioned).
    Memory: the default FC layer has 128*15*15*3072 = 88.5M weights per network, so
    ``per_task_networks`` is for a handful of targets, not 40.
    """

    task_kinds = ALL_TARGET_KINDS
    input_size = 48
    input_channels = 1
    default_optimizer = {"name": "SGD", "lr": 0.0025, "momentum": 0.9}
    default_scheduler = {"name": "LinearLR", "start_factor": 1.0, "end_factor": 0.4, "total_iters": 50,
                         "interval": "epoch"}
    monitor = ("val/mean_accuracy", "max")

    def __init__(self, task: Any, *, conv_channels: Sequence[int] = (64, 64, 128), kernel_sizes: Sequence[int] = (5, 5, 4),
                 depth: int | None = None, width_multiplier: float = 1.0, fc_units: int = 3072, fc_dropout: float = 0.2,
                 conv_dropout: float = 0.0, lcn_after: int | Sequence[int] | None = (1,),
                 pool_after: int | Sequence[int] | None = (1,), pool_size: int = 3, pool_stride: int = 2,
                 lcn_kernel_size: int = 9, lcn_sigma: float = 2.0, per_task_networks: bool = False,
                 sigmoid_all_classes: bool = False, pixel_standardize: bool = True, **kwargs: Any):
        self.network_args = dict(conv_channels=tuple(conv_channels), kernel_sizes=tuple(kernel_sizes), depth=depth,
                                 width_multiplier=width_multiplier, fc_units=fc_units, fc_dropout=fc_dropout,
                                 conv_dropout=conv_dropout, lcn_after=lcn_after, pool_after=pool_after,
                                 pool_size=pool_size, pool_stride=pool_stride, lcn_kernel_size=lcn_kernel_size,
                                 lcn_sigma=lcn_sigma)
        self.per_task_networks, self.sigmoid_all_classes = per_task_networks, sigmoid_all_classes
        self.pixel_standardize = pixel_standardize
        super().__init__(task, **kwargs)

    # -- model -----------------------------------------------------------------------------------
    def output_sizes(self) -> list[int]:
        """Outputs of each network: one entry per target (per-task networks) or one for all."""
        if self.per_task_networks:
            return [t.n_logits for t in self.task.targets]
        return [self.task.n_logits]

    def configure_models(self) -> None:
        """One network per entry of :meth:`output_sizes`. Every per-task network is drawn from the
        same RNG state, so it starts from the weights a separate run of the same seed would: the
        paper's individual networks, whose first layers Figure 16 compares index by index."""
        self.input_norm = PixelStandardize(self.in_chans, self.image_size)
        rng_state = torch.get_rng_state()
        networks = []
        for n_outputs in self.output_sizes():
            torch.set_rng_state(rng_state)
            networks.append(SemanticCNN(self.in_chans, self.image_size, n_outputs, **self.network_args))
        self.networks = nn.ModuleList(networks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(image)
        return torch.cat([net(x) for net in self.networks], dim=1)

    def independent_networks(self) -> list[tuple[nn.Module, list[int]]]:
        """Per-task networks: network ``i`` predicts target ``i`` (none in joint mode)."""
        return [(net, [i]) for i, net in enumerate(self.networks)] if self.per_task_networks else []

    def on_fit_start(self) -> None:
        """Fit the per-pixel statistics on the training split (once; restored from checkpoints)."""
        if not self.pixel_standardize or bool(self.input_norm.fitted):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "dataset"):
            rank_zero_warn(f"{self.method_name}: no facebench datamodule to fit the per-pixel standardisation on; "
                           f"the input is used as it comes (set pixel_standardize: false to silence this)")
            return
        loader = torch.utils.data.DataLoader(dm.dataset("train", train=False), batch_size=256,
                                             num_workers=getattr(dm, "num_workers", 0))
        self.input_norm.fit(batch["image"] for batch in loader)

    # -- loss and probabilities ------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if not self.sigmoid_all_classes:
            return super().compute_loss(logits, batch)
        soft = batch.get("soft_label") if self.use_soft_targets else None
        target, valid = class_indicators(self.task, batch["label"], soft)
        if not valid.any():
            return logits.sum() * 0.0
        per = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
        return (per * valid).sum() / valid.sum()

    def probabilities(self, batch: dict[str, Any], logits: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits(batch) if logits is None else logits
        if not self.sigmoid_all_classes:
            return self.task.probabilities(logits)
        p = torch.sigmoid(logits.float())
        for t, ls in zip(self.task.targets, self.task.logit_slices):
            if t.is_softmax:
                p[:, ls] = p[:, ls] / p[:, ls].sum(dim=1, keepdim=True).clamp_min(1e-12)
        return p


# ------------------------------------------------------------------------------------------------
# shape model (Section 4.2.6)
# ------------------------------------------------------------------------------------------------
def procrustes_align(shapes: torch.Tensor, reference: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Similarity-align ``shapes [N, K, 2]`` (x right, y down) to a centred ``reference [K, 2]``.

    Returns (aligned shapes ``[N, K, 2]``, in-plane angle in radians ``[N]`` (positive =
    counter-clockwise on screen), size ``[N]`` (the shape's scale relative to the reference),
    centroid ``[N, 2]``) such that ``shape = rotate(aligned * size, angle) + centroid``.
    Least squares over rotation and scale (Cootes' AAM alignment), in complex form.
    """
    centroid = shapes.mean(dim=1)
    z = torch.complex(shapes[..., 0] - centroid[:, None, 0], shapes[..., 1] - centroid[:, None, 1])
    r = torch.complex(reference[:, 0], reference[:, 1]).to(z.dtype)
    a = (z.conj() * r).sum(dim=1) / (z.abs() ** 2).sum(dim=1).clamp_min(1e-12)
    aligned = a[:, None] * z
    # with y pointing down, multiplying by exp(+i t) turns a shape clockwise on screen; a undoes
    # the shape's own turn, so the shape is turned counter-clockwise by arg(a)
    return torch.stack([aligned.real, aligned.imag], dim=-1), torch.angle(a), 1.0 / a.abs().clamp_min(1e-12), centroid


def unalign(aligned: torch.Tensor, angle: torch.Tensor, size: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`procrustes_align`: shapes ``[N, K, 2]`` in image coordinates."""
    z = torch.complex(aligned[..., 0], aligned[..., 1])
    a_inv = (size * torch.exp(torch.complex(torch.zeros_like(angle), -angle)))[:, None]
    w = z * a_inv
    return torch.stack([w.real + centroid[:, None, 0], w.imag + centroid[:, None, 1]], dim=-1)


def fit_shape_model(landmarks: np.ndarray | torch.Tensor, n_components: int, iterations: int = 20,
                    tol: float = 1e-10) -> dict[str, Any]:
    """The PCA shape model of an AAM (Cootes et al.) from training landmarks ``[N, K, 2]``.

    Generalised Procrustes analysis aligns every shape to the mean (rotation, scale, translation),
    the mean is turned so that the training shapes' in-plane angles average to zero, then PCA
    (scikit-learn) keeps ``min(n_components, 2K - 4, N - 1)`` modes (2K - 4: the aligned shapes
    have no translation, scale or rotation left). Returns plain lists (constructor arguments):
    ``reference [K][2]``, ``mean [2K]``, ``components [M][2K]``, ``variances [M]``, ``angle_std``.
    """
    from sklearn.decomposition import PCA

    x = torch.as_tensor(np.asarray(landmarks), dtype=torch.float64)
    if x.ndim != 3 or x.shape[2] != 2 or x.shape[1] < 3:
        raise ValueError(f"landmarks must be [N, K>=3, 2], got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("landmarks contain NaN or infinite values")
    n, k = x.shape[0], x.shape[1]
    m = min(int(n_components), 2 * k - 4, n - 1)
    if m < 1:
        raise ValueError(f"cannot fit a shape model with {n} shapes of {k} points (need >= 2 shapes, >= 3 points)")
    ref = x[0] - x[0].mean(0)
    ref = ref / ref.norm()
    for _ in range(iterations):
        aligned = procrustes_align(x, ref)[0]
        new = aligned.mean(0)
        new = new - new.mean(0)
        new = procrustes_align(new[None] / new.norm(), ref)[0][0]   # keep the orientation of ref
        new = new / new.norm()
        done = float((new - ref).norm()) < tol
        ref = new
        if done:
            break
    angles = procrustes_align(x, ref)[1]
    mean_angle = torch.atan2(torch.sin(angles).mean(), torch.cos(angles).mean())
    # turn the reference counter-clockwise on screen by the mean angle: angles then average zero
    ref = unalign(ref[None], mean_angle[None], torch.ones(1, dtype=ref.dtype), torch.zeros(1, 2, dtype=ref.dtype))[0]
    aligned, angles, _, _ = procrustes_align(x, ref)
    pca = PCA(n_components=m, svd_solver="full").fit(aligned.reshape(n, -1).numpy())
    return {"reference": ref.tolist(), "mean": pca.mean_.tolist(), "components": pca.components_.tolist(),
            "variances": np.maximum(pca.explained_variance_, 1e-12).tolist(),
            "angle_std": max(float(angles.std()), 1e-3)}


class PCAShapeModel(nn.Module):
    """Encodes landmarks as (PCA shape parameters, in-plane angle) and back; buffers only."""

    def __init__(self, n_landmarks: int, n_components: int, fitted: dict[str, Any] | None = None):
        super().__init__()
        if fitted is not None:
            n_landmarks, n_components = len(fitted["reference"]), len(fitted["components"])
        self.register_buffer("reference", torch.zeros(n_landmarks, 2))
        self.register_buffer("mean", torch.zeros(2 * n_landmarks))
        self.register_buffer("components", torch.zeros(n_components, 2 * n_landmarks))
        self.register_buffer("scales", torch.ones(n_components))
        self.register_buffer("angle_std", torch.tensor(1.0))
        self.register_buffer("fitted", torch.tensor(False))
        if fitted is not None:
            self.reference.copy_(torch.tensor(fitted["reference"]))
            self.mean.copy_(torch.tensor(fitted["mean"]))
            self.components.copy_(torch.tensor(fitted["components"]))
            self.scales.copy_(torch.tensor(fitted["variances"]).sqrt())
            self.angle_std.fill_(float(fitted["angle_std"]))
            self.fitted.fill_(True)

    @property
    def n_landmarks(self) -> int:
        return self.reference.shape[0]

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def encode(self, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, K, 2]`` -> params ``[B, M]`` (deviation from the mean shape), angle (rad), size, centroid."""
        if landmarks.shape[1:] != (self.n_landmarks, 2):
            raise ValueError(f"the shape model has {self.n_landmarks} points, the batch has landmarks of shape "
                             f"{tuple(landmarks.shape)}")
        aligned, angle, size, centroid = procrustes_align(landmarks.float(), self.reference)
        params = (aligned.flatten(1) - self.mean) @ self.components.T
        return {"params": params, "angle": angle, "size": size, "centroid": centroid}

    def decode(self, params: torch.Tensor, angle: torch.Tensor, size: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
        aligned = (self.mean + params @ self.components).view(-1, self.n_landmarks, 2)
        return unalign(aligned, angle, size, centroid)

    def standardize(self, params: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Regression target ``[B, M + 1]``: params / sqrt(variance), angle / training std."""
        return torch.cat([params / self.scales, (angle / self.angle_std)[:, None]], dim=1)

    def unstandardize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:, :-1] * self.scales, z[:, -1] * self.angle_std


def wrapped_degrees(a: torch.Tensor) -> torch.Tensor:
    """Angle differences in radians -> degrees in (-180, 180]."""
    return torch.rad2deg(torch.atan2(torch.sin(a), torch.cos(a)))


def shape_metrics(pred: torch.Tensor, true: torch.Tensor) -> dict[tuple[str, str], float]:
    """Section 4.2.6 metrics from ``[N, M + 1]`` rows (shape params, angle in degrees):
    cosine similarity of the shape-parameter vectors (mean and median over images) and the
    absolute in-plane angle error in degrees (mean and median)."""
    from torchmetrics.functional import cosine_similarity

    cos = cosine_similarity(pred[:, :-1].double(), true[:, :-1].double(), reduction="none")
    err = wrapped_degrees(torch.deg2rad(pred[:, -1].double() - true[:, -1].double())).abs()
    return {("shape", "cosine_similarity"): float(cos.mean()), ("shape", "cosine_similarity_median"): float(cos.median()),
            ("in_plane_angle", "mean_abs_error_deg"): float(err.mean()),
            ("in_plane_angle", "median_abs_error_deg"): float(err.median())}


@register_method("semantic_cnn_shape")
class SemanticShapeCNN(SemanticFeaturesCNN):
    """AAM modelling with the semantic-features CNN (Section 4.2.6): the network of Section 4.1.1
    regresses a PCA-compressed shape vector plus the in-plane angle of the face's landmarks
    (``batch["landmarks"]``, any number of points), trained with the mean squared error (Section
    3.4 stops on the validation MSE: ``monitor`` is ``val/loss``).

    ``shape_model`` (the output of :func:`fit_shape_model`) is fitted on the training split's
    landmarks by :meth:`datamodule_kwargs` before the model is built, keeping ``shape_components``
    modes; the targets are the parameters divided by the square root of their variance and the
    angle divided by its training standard deviation (so that every output has unit scale);
    ``angle_weight`` weighs the angle's squared error against the shape's.

    Differences from the paper, by necessity: the AAM's appearance (texture) part is not modelled
    (datasets here carry landmarks, not AAM fits), and with 2-D landmarks the pose is the in-plane
    angle instead of the two out-of-plane angles. The paper trains on synthetic faces (exact AAM
    labels) and tests on real ones; SynthFaces' exact landmarks play the synthetic part.
    """

    needs_landmarks = True
    monitor = ("val/loss", "min")

    def __init__(self, task: Any, *, shape_model: dict[str, Any] | None = None, shape_components: int = 20,
                 n_landmarks: int = 68, angle_weight: float = 1.0, **kwargs: Any):
        for key in ("per_task_networks", "sigmoid_all_classes"):
            if kwargs.get(key):
                raise ValueError(f"semantic_cnn_shape: {key} applies to classification (semantic_cnn) only")
        self.shape_fit, self.shape_components, self.n_landmarks, self.angle_weight = \
            shape_model, shape_components, n_landmarks, angle_weight
        super().__init__(task, **kwargs)

    @classmethod
    def datamodule_kwargs(cls, dm: Any, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("shape_model"):
            return {}
        table = dm.tables.get("train")
        if table is None or table.landmarks is None:
            raise ValueError(f"semantic_cnn_shape: dataset {getattr(dm, 'registered_name', '?')!r} has no landmarks in "
                             f"its train split (CelebA needs list_landmarks_align_celeba.txt; SynthFaces has them)")
        return {"shape_model": fit_shape_model(table.landmarks, int(args.get("shape_components", 20)))}

    def output_sizes(self) -> list[int]:
        return [self.shape_pca.n_components + 1]

    def configure_models(self) -> None:
        self.shape_pca = PCAShapeModel(self.n_landmarks, self.shape_components, self.shape_fit)
        super().configure_models()

    def configure_metrics(self) -> None:
        self.val_cosine = CosineSimilarity(reduction="mean")
        self.val_angle_error = MeanAbsoluteError()

    def shape_targets(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "landmarks" not in batch:
            raise ValueError("semantic_cnn_shape: the batch has no 'landmarks' (does the dataset provide them?)")
        if not bool(self.shape_pca.fitted):
            raise ValueError("semantic_cnn_shape: the shape model is not fitted; pass shape_model (fit_shape_model) or "
                             "train through the runner, which fits it on the training landmarks")
        with torch.no_grad():
            return self.shape_pca.encode(batch["landmarks"].to(self.device))

    def compute_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        enc = self.shape_targets(batch)
        target = self.shape_pca.standardize(enc["params"], enc["angle"])
        weights = torch.ones(target.shape[1], device=target.device)
        weights[-1] = self.angle_weight
        return (((logits.float() - target) ** 2) * weights).sum(dim=1).mean() / weights.sum()

    def predicted_and_true(self, batch: dict[str, Any], logits: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, M + 1]`` rows (shape params, angle in degrees), prediction and ground truth."""
        logits = self.logits(batch) if logits is None else logits
        params, angle = self.shape_pca.unstandardize(logits.float())
        enc = self.shape_targets(batch)
        return (torch.cat([params, torch.rad2deg(angle)[:, None]], dim=1),
                torch.cat([enc["params"], torch.rad2deg(enc["angle"])[:, None]], dim=1))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.logits(batch)
        self.log("val/loss", self.compute_loss(logits, batch), prog_bar=True, on_epoch=True, sync_dist=True,
                 batch_size=batch["image"].shape[0])
        pred, true = self.predicted_and_true(batch, logits)
        self.val_cosine.update(pred[:, :-1], true[:, :-1])
        self.val_angle_error.update(wrapped_degrees(torch.deg2rad(pred[:, -1] - true[:, -1])), torch.zeros_like(pred[:, -1]))

    def on_validation_epoch_end(self) -> None:
        self.log("val/cosine_similarity", self.val_cosine.compute())
        self.log("val/angle_error_deg", self.val_angle_error.compute())
        self.val_cosine.reset()
        self.val_angle_error.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        pred, true = self.predicted_and_true(batch)
        buf = self._buffers_out.setdefault(dataloader_idx, {})
        for k, v in {"shape_pred": pred, "shape_true": true, "labels": batch["label"], "index": batch["index"]}.items():
            buf.setdefault(k, []).append(v.detach())

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        params, angle = self.shape_pca.unstandardize(self.logits(batch).float())
        return torch.cat([params, torch.rad2deg(angle)[:, None]], dim=1)

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        values = shape_metrics(torch.as_tensor(arrays["shape_pred"]), torch.as_tensor(arrays["shape_true"]))
        return pd.DataFrame([{"target": t, "class": "", "metric": m, "value": v} for (t, m), v in values.items()],
                            columns=["target", "class", "metric", "value"])
