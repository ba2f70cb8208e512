"""Rendering SynthFaces canvases: the background clutter (``render_clutter``, ``clutter_canvas``), one supersampled
canvas with a person and its post-processing (blur, contrast, lighting gradient, noise), one image
with its labels, landmarks and optional wild canvas, and ``render_single`` (one image of a config,
optionally with image-level traits overridden: counterfactual pairs).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facebench.datamodules.synthfaces.config import SynthFacesConfig
from facebench.datamodules.synthfaces.draw import Painter, draw_person
from facebench.datamodules.synthfaces.geometry import (
    VIEW_SPAN, FaceGeometry, apply_transform, face_box_points, face_geometry, landmarks5_from_68, view_transform,
)
from facebench.datamodules.synthfaces.priors import (
    BLUR_RADIUS_RANGE, CLUTTER_SHAPES, NOISE_SIGMA_MAX, STREAM_NOISE, STREAM_WILD, WILD_FACE_FRACTION,
)
from facebench.datamodules.synthfaces.generative_model import IdentityTraits, ImageTraits, sample_identity, sample_image, visible_labels


def render_clutter(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator, n_shapes: int) -> None:
    """Draw ``n_shapes`` random shapes (rectangle, ellipse, polygon or line, random colours and sizes
    relative to ``size``) on ``draw``, a ``size`` x ``size`` canvas, from ``rng``: the background
    clutter of every SynthFaces canvas.  Deterministic in the state of ``rng``."""
    for _ in range(n_shapes):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(4))
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.04, 0.3) * size
        if kind == 0:
            draw.rectangle([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r * rng.uniform(0.3, 1)], fill=colour)
        elif kind == 1:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=colour)
        elif kind == 2:
            pts = rng.uniform(-r, r, (int(rng.integers(3, 7)), 2)) + (cx, cy)
            draw.polygon(pts.ravel().tolist(), fill=colour)
        else:
            pts = rng.uniform(-r, r, (2, 2)) + (cx, cy)
            draw.line(pts.ravel().tolist(), fill=colour, width=max(1, int(r * 0.08)))



def clutter_canvas(size: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [size, size, 3]``: SynthFaces' background alone (no person), from ``rng``: a flat colour
    and random shapes (``render_clutter``), as many shapes per area as the generator's canvases, 2x
    supersampled, a Gaussian blur of the generator's radius range (scaled by ``sqrt(size / 64)``) and
    sensor noise. Used for LNet's clutter negatives and the wild composites' backgrounds."""
    area = (size / 64) ** 2
    big = 2 * size
    im = Image.new("RGB", (big, big), tuple(int(c) for c in rng.integers(30, 226, 3)))
    render_clutter(ImageDraw.Draw(im), big, rng,
                   int(rng.integers(int(CLUTTER_SHAPES[0] * area), int(CLUTTER_SHAPES[1] * area) + 1)))
    radius = float(rng.uniform(*BLUR_RADIUS_RANGE)) * math.sqrt(size / 64)
    im = im.resize((size, size), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(radius))
    a = np.asarray(im, np.float32) + rng.normal(0, rng.uniform(0, NOISE_SIGMA_MAX), (size, size, 3))
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)

def _supersample(size: int) -> int:
    return 3 if size <= 96 else 2


def _render_canvas(size: int, m: np.ndarray, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry,
                   clutter_rng: np.random.Generator, noise_rng: np.random.Generator, n_clutter: int,
                   blur: float) -> np.ndarray:
    """Render one canvas (background, clutter, person) and post-process it."""
    k = _supersample(size)
    big = size * k
    bg = tuple(int(c) for c in clutter_rng.integers(30, 226, 3))
    canvas = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(canvas)
    render_clutter(draw, big, clutter_rng, n_clutter)
    ss = m * k
    ss[:, 2] += (k - 1) / 2
    draw_person(Painter(canvas, ss, unit=float(np.hypot(*ss[:, 0]))), ident, img, g)
    out = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(out, np.float32)
    mean = a.mean()
    a = (a - mean) * img.contrast + mean
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size / 2) - 1
    ang, amp = img.gradient
    a *= (img.brightness * (1 + amp * (np.cos(ang) * xx + np.sin(ang) * yy)))[..., None]
    if img.noise > 0:
        a += noise_rng.normal(0, img.noise, a.shape).astype(np.float32)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def render_one(seed: int, index: int, per_identity: int, size: int, wild_size: int | None,
               ident: IdentityTraits | None = None, overrides: Mapping[str, object] | None = None) -> dict:
    """Render image ``index`` (and its wild canvas): image, labels, landmarks, rotation."""
    if ident is None:
        ident = sample_identity(seed, index // per_identity)
    img = sample_image(seed, index, ident, overrides)
    g = face_geometry(ident, img)
    centre = size / 2 - 0.5 + img.shift * size
    m = view_transform(centre, size / VIEW_SPAN * img.scale, img.rotation)
    clutter = np.random.default_rng(img.style["clutter_seed"])
    n_clutter = int(clutter.integers(*CLUTTER_SHAPES))
    image = _render_canvas(size, m, ident, img, g, clutter, np.random.default_rng([seed, STREAM_NOISE, index, 0]),
                           n_clutter, img.blur * size / 64)
    out = {"image": image, "labels": visible_labels(ident, img), "lm68": apply_transform(m, g.lm68),
           "rotation": img.rotation}
    if wild_size is not None:
        rng = np.random.default_rng([seed, STREAM_WILD, index])
        box_unit = apply_transform(view_transform((0.0, 0.0), 1.0, img.rotation), face_box_points(g.lm68))
        width1 = float(np.ptp(box_unit[:, 0]))
        height1 = float(np.ptp(box_unit[:, 1]))
        scale = rng.uniform(*WILD_FACE_FRACTION) * wild_size / width1
        scale = min(scale, 0.95 * wild_size / height1)
        lo = box_unit.min(0) * scale
        extent = np.array([width1, height1]) * scale
        corner = rng.uniform(0, 1, 2) * (wild_size - 1 - extent)
        mw = view_transform(corner - lo, scale, img.rotation)
        area = (wild_size / size) ** 2
        n_wild = int(rng.integers(int(CLUTTER_SHAPES[0] * area), int(CLUTTER_SHAPES[1] * area) + 1))
        aligned_scale = size / VIEW_SPAN * img.scale
        wild = _render_canvas(wild_size, mw, ident, img, g, rng, np.random.default_rng([seed, STREAM_NOISE, index, 1]),
                              n_wild, img.blur * size / 64 * scale / aligned_scale)
        pts = apply_transform(mw, face_box_points(g.lm68))
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        out.update(wild=wild, wild_box=np.array([x0, y0, x1 - x0, y1 - y0]), wild_lm68=apply_transform(mw, g.lm68))
    return out


def render_single(config: SynthFacesConfig, index: int, overrides: Mapping[str, object] | None = None) -> dict:
    """Render image ``index`` of ``config`` alone, optionally with image-level traits overridden.

    ``overrides`` maps image-level labels (e.g. ``{"Eyeglasses": True}``) or ``beard`` (a key of
    ``FACIAL_HAIR_STYLES``) / ``stubble`` / ``sideburns`` to values; everything else (identity,
    pose, lighting, clutter) is unchanged, which gives counterfactual pairs.  Returns ``image``,
    ``attributes``, ``landmarks68``, ``landmarks5`` and ``rotation`` (plus ``wild_*`` in wild mode).
    """
    config.validate()
    if not 0 <= index < config.n_images:
        raise IndexError(index)
    wild_size = config.resolved_wild_size if config.wild else None
    r = render_one(config.seed, index, config.images_per_identity, config.image_size, wild_size, overrides=overrides)
    out = {"image": r["image"], "attributes": r["labels"], "landmarks68": r["lm68"].astype(np.float32),
           "landmarks5": landmarks5_from_68(r["lm68"]).astype(np.float32), "rotation": np.float32(r["rotation"])}
    if wild_size is not None:
        out.update(wild_image=r["wild"], wild_box=r["wild_box"].astype(np.float32),
                   wild_landmarks68=r["wild_lm68"].astype(np.float32))
    return out
