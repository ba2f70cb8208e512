"""SynthFaces' face geometry in the canonical face frame, its 68 + 5 landmarks and the similarity
transform to pixels.

Everything is drawn from polygons in a canonical face frame (x right, y down, the jaw's centre
line at ``JAW_CENTER_Y``; a face is ~1.7 units wide) mapped by one similarity transform
(rotation, scale, shift) to supersampled pixels, then downsampled with LANCZOS.  The 68 iBUG-300W
landmarks and the 5 CelebA landmarks are computed from the same curves and mapped by the same
transform, in *pixel-index* coordinates of the output: (0, 0) is the centre of the top-left
pixel.  Rotation is stored per image (degrees, positive = counter-clockwise on screen).

Wild mode renders the same person (same pose, same traits) at a random scale (face box 20-60 % of
the canvas width) and position on a bigger cluttered canvas and records the face box (the
axis-aligned box of the jaw, brows and a forehead margin) and landmarks in canvas coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from facebench.datamodules.synthfaces.priors import BROW_ARCH, SMILE_SQUINT, SMILE_WIDEN
from facebench.datamodules.synthfaces.generative_model import IdentityTraits, ImageTraits

#: The canonical face frame (x right, y down; a face is ~1.7 units wide).
JAW_CENTER_Y = -0.15
FOREHEAD_HEIGHT = 1.05
EYE_Y = -0.20
BROW_OFFSET = 0.17
HAIRLINE_Y = -0.78
NECK_BASE_Y = 1.30
HAIR_END_Y = 1.60
VIEW_PIVOT = (0.0, 0.15)  # canonical point placed at the centre of the aligned crop
VIEW_SPAN = 3.4  # canonical units across the aligned crop
FACE_BOX_FOREHEAD = 0.30  # forehead margin above the brows included in the wild face box


@dataclass
class FaceGeometry:
    """The curves of one face in the canonical frame and its 68 landmarks (``face_geometry``)."""

    lm68: np.ndarray
    outline: np.ndarray
    jaw: Callable[[np.ndarray], np.ndarray]  # alpha in [0, pi] -> points
    face_x: Callable[[np.ndarray], np.ndarray]  # half-width of the face at height y
    chin_y: float
    eyes: list[dict]
    brows: list[tuple[np.ndarray, np.ndarray]]
    nose_tip: float
    nose_base: float
    mouth_y: float
    mouth: dict[str, np.ndarray]
    neck_w: float


def _mouth_curves(u: np.ndarray, my: float, mw: float, lift: float, gap: float, ut: float,
                  lt: float) -> dict[str, np.ndarray]:
    """Outer/inner lip curves at parameters u in [-1, 1] (inner curves span 0.85 of the width)."""
    env = np.clip(1 - u ** 2, 0, 1)
    line = my - lift * u ** 2
    cupid = 1 - 0.35 * np.exp(-(u / 0.18) ** 2)
    ui = 0.85 * u
    line_i = my - lift * ui ** 2
    return {
        "upper_outer": np.stack([mw * u, line - gap / 2 * env - ut * np.sqrt(env) * cupid], -1),
        "lower_outer": np.stack([mw * u, line + gap / 2 * env + lt * env ** 0.7], -1),
        "upper_inner": np.stack([mw * ui, line_i - gap / 2 * env], -1),
        "lower_inner": np.stack([mw * ui, line_i + gap / 2 * env], -1),
    }


def face_geometry(ident: IdentityTraits, img: ImageTraits) -> FaceGeometry:
    """Canonical face geometry and its 68 landmarks."""
    fw, jh, n, taper = ident.width, ident.jaw_height, ident.jaw_power, ident.taper

    def jaw(alpha: np.ndarray) -> np.ndarray:
        c, s = np.cos(alpha), np.sin(alpha)
        x = fw * np.sign(c) * np.abs(c) ** (2 / n) * (1 - taper * s ** 2)
        y = JAW_CENTER_Y + jh * np.abs(s) ** (2 / n)
        return np.stack([x, y], -1)

    dense = jaw(np.linspace(0, np.pi / 2, 64))

    def face_x(y: np.ndarray) -> np.ndarray:
        return np.interp(y, dense[:, 1], dense[:, 0], left=fw, right=0.0)

    top = np.linspace(np.pi, 2 * np.pi, 40)
    c, s = np.cos(top), np.sin(top)
    forehead = np.stack([fw * 0.97 * np.sign(c) * np.abs(c) ** (2 / 2.3),
                         JAW_CENTER_Y - FOREHEAD_HEIGHT * np.abs(s) ** (2 / 2.3)], -1)
    outline = np.concatenate([jaw(np.linspace(0, np.pi, 48)), forehead[1:-1]])
    chin_y = JAW_CENTER_Y + jh

    lm = np.zeros((68, 2))
    lm[0:17] = jaw(np.pi - np.arange(17) * np.pi / 16)

    # eyes: image-left eye (subject's right) first
    squint = SMILE_SQUINT if img.labels["Smiling"] else 1.0
    eh, ew, es = ident.eye_height * squint, ident.eye_width, ident.eye_spacing
    eyes = []
    for k, side in enumerate((-1, 1)):
        cx = side * es

        def lids(u: np.ndarray, cx: float = cx, side: int = side) -> tuple[np.ndarray, np.ndarray]:
            tilt = -0.012 * (-u * side)
            env = np.clip(1 - u ** 2, 0, 1)
            return EYE_Y + tilt - eh * env ** 0.75, EYE_Y + tilt + eh * 0.7 * env ** 0.9

        ul = np.array([-1, -1 / 3, 1 / 3, 1])
        up, lo = lids(ul)
        pts = [(cx + ew * ul[0], up[0]), (cx + ew * ul[1], up[1]), (cx + ew * ul[2], up[2]),
               (cx + ew * ul[3], up[3]), (cx + ew * ul[2], lo[2]), (cx + ew * ul[1], lo[1])]
        lm[36 + 6 * k: 42 + 6 * k] = pts
        eyes.append({"cx": cx, "ew": ew, "eh": eh, "lids": lids, "side": side})

    # brows: t = 0 at the inner end, 1 at the outer end
    tt = np.linspace(0, 1, 15)
    if ident.traits["Arched_Eyebrows"]:
        peak = 0.6
        arch = BROW_ARCH[True]
        h = np.where(tt < peak, arch * np.clip(tt / peak, 0, 1) ** 0.8,
                     arch * (1 - 1.15 * np.clip((tt - peak) / (1 - peak), 0, 1) ** 1.3))
    else:
        h = BROW_ARCH[False] * np.sin(np.pi * tt) + 0.005 * tt
    thick = ident.brow_thickness * (1 - 0.45 * tt)
    brows = []
    base = EYE_Y - BROW_OFFSET - ident.brow_raise
    for k, side in enumerate((-1, 1)):
        x = side * (es - ew * 0.85 + tt * (2 * ew + 0.05))
        y = base - h + 0.02 * (1 - tt)
        centre = np.stack([x, y], -1)
        brows.append((centre, thick))
        idx = np.round(np.linspace(0, 14, 5)).astype(int)
        pts = centre[idx]
        lm[17 + 5 * k: 22 + 5 * k] = pts[::-1] if side < 0 else pts

    # nose
    tip = JAW_CENTER_Y + 0.33 * jh + ident.nose_length
    nb = tip + 0.05 + (0.02 if ident.traits["Big_Nose"] else 0.0)
    nw = ident.nose_width
    lm[27:31] = np.stack([np.zeros(4), np.linspace(EYE_Y - 0.03, tip, 4)], -1)
    lm[31:36] = [(-nw, nb - 0.02), (-nw * 0.5, nb + 0.01), (0, nb + 0.02), (nw * 0.5, nb + 0.01), (nw, nb - 0.02)]

    # mouth
    my = JAW_CENTER_Y + 0.56 * jh + (0.02 if ident.traits["Big_Nose"] else 0.0)
    mw = ident.mouth_width * (SMILE_WIDEN if img.labels["Smiling"] else 1.0)
    args = (my, mw, img.smile, img.gap, ident.lip_upper, ident.lip_lower)
    mouth = _mouth_curves(np.linspace(-1, 1, 25), *args)
    uo = np.array([-1, -0.66, -0.3, 0, 0.3, 0.66, 1])
    c_o = _mouth_curves(uo, *args)
    lm[48:55] = c_o["upper_outer"]
    lm[55:60] = c_o["lower_outer"][[5, 4, 3, 2, 1]]
    ui = np.array([-1, -0.45, 0, 0.45, 1])
    c_i = _mouth_curves(ui, *args)
    lm[60:65] = c_i["upper_inner"]
    lm[65:68] = c_i["lower_inner"][[3, 2, 1]]
    return FaceGeometry(
        lm68=lm, outline=outline, jaw=jaw, face_x=face_x, chin_y=chin_y, eyes=eyes, brows=brows,
        nose_tip=tip, nose_base=nb, mouth_y=my, mouth=mouth,
        neck_w=(0.40 if ident.male else 0.33) * fw / 0.8,
    )


def landmarks5_from_68(lm68: np.ndarray) -> np.ndarray:
    """CelebA's 5 points (lefteye = the eye on the image's left) from the 68."""
    return np.stack([lm68[..., 36:42, :].mean(-2), lm68[..., 42:48, :].mean(-2), lm68[..., 30, :],
                     lm68[..., 48, :], lm68[..., 54, :]], -2)


def face_box_points(lm68: np.ndarray) -> np.ndarray:
    """Points whose bounding box is the face box: jaw, brows and a forehead margin above the brows."""
    brows = lm68[17:27]
    return np.concatenate([lm68[0:17], brows, brows - np.array([0.0, FACE_BOX_FOREHEAD])])


def view_transform(centre: np.ndarray, scale: float, rotation_deg: float) -> np.ndarray:
    """2x3 map canonical -> output pixel-index coordinates (rotation CCW on screen)."""
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) * scale
    pivot = np.asarray(VIEW_PIVOT)
    return np.concatenate([rot, (np.asarray(centre) - rot @ pivot)[:, None]], 1)


def apply_transform(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points ``[..., 2]`` mapped by the 2x3 matrix ``m``."""
    return pts @ m[:, :2].T + m[:, 2]
