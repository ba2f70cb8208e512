"""The PCA shape model of an active appearance model (Cootes et al.) used by the semantic-features
CNN's shape regression (``semantic_cnn_shape``, Section 4.2.6 of
``papers/semantic_facial_features_fer_vv.txt``): Procrustes alignment of landmarks, the PCA fit of
the aligned shapes, the encoder / decoder module and the Section 4.2.6 metrics (cosine similarity
of shape parameters, in-plane angle error).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


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
