"""Drawing one SynthFaces person (head, hair, body, accessories) in the canonical face frame
through an affine map onto a PIL image (``draw_person``); canvases are made in ``render.py``.

What is rendered
----------------
Face outline (oval / round / long, wider when chubby, squarer jaw for males), skin tone (incl.
pale), ears, neck with double chin, shoulders and shirt (jacket + white shirt + tie, scoop neckline
+ necklace), eyes (sclera, iris, pupil, lids; narrow eyes; eye bags; eye shadow + eyeliner),
eyebrows (thickness, arch), nose (size, pointy vs round tip, nostrils), lips (size, smile, open
mouth with teeth, lipstick), cheeks (highlights for high cheekbones, blush for rosy cheeks), age
(forehead lines, nasolabial folds, crow's feet), stubble, full beard, goatee, moustache, sideburns,
hair (colour, straight / wavy / curly / cropped strands, long or short, bangs, receding M-shaped
hairline, bald with a side fringe), hats (beanie, fedora, cap), glasses (incl. sunglasses),
earrings (studs, hoops, drops); ``render.py`` then adds Gaussian blur, a brightness/contrast gradient
and noise.
``Attractive`` is not rendered and therefore absent from ``ATTRIBUTE_NAMES``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from facebench.datamodules.synthfaces.geometry import (
    EYE_Y, FOREHEAD_HEIGHT, HAIR_END_Y, HAIRLINE_Y, JAW_CENTER_Y, NECK_BASE_Y, FaceGeometry,
)
from facebench.datamodules.synthfaces.generative_model import IdentityTraits, ImageTraits

#: Rendering colours and stroke sizes (canonical units).
TEETH_RGB = (242, 240, 230)
MOUTH_RGB = (70, 22, 28)
SCLERA_RGB = (240, 238, 234)
ROSY_RGB, ROSY_ALPHA = (235, 70, 95), 150
NATURAL_LIP_TINT = np.array([0.88, 0.56, 0.6])
STRAND_WIDTH, STRAND_ALPHA = 0.04, 210
DARK_HAIR_LUMINANCE = 60.0  # hair strand lines (canonical width ~0.75 px at 64 px)
WRINKLE_WIDTH, WRINKLE_ALPHA = 0.045, 210
GLASSES_FRAME = 0.055
LUMA = np.array([0.299, 0.587, 0.114])
FACIAL_HAIR_DARKEN = 0.65
MIN_FACIAL_HAIR_CONTRAST = 45.0  # luminance levels between beard and skin
STUBBLE_DARKEN, STUBBLE_ALPHA = 0.35, 150


def _rgba(colour, alpha: int = 255) -> tuple[int, int, int, int]:
    c = np.clip(np.asarray(colour, float), 0, 255)
    return int(c[0]), int(c[1]), int(c[2]), int(alpha)


def _ellipse_pts(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * np.pi,
                 n: int = 24) -> np.ndarray:
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], -1)


class Painter:
    """Draws canonical-frame shapes through an affine map onto a (supersampled) PIL image."""

    def __init__(self, image: Image.Image, matrix: np.ndarray, unit: float) -> None:
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.m = matrix
        self.unit = unit

    def _xy(self, pts) -> list[float]:
        p = np.asarray(pts, float).reshape(-1, 2) @ self.m[:, :2].T + self.m[:, 2]
        return p.ravel().tolist()

    def poly(self, pts, colour, alpha: int = 255) -> None:
        self.draw.polygon(self._xy(pts), fill=_rgba(colour, alpha))

    def line(self, pts, width: float, colour, alpha: int = 255) -> None:
        w = max(1, int(round(width * self.unit)))
        self.draw.line(self._xy(pts), fill=_rgba(colour, alpha), width=w, joint="curve")

    def ellipse(self, cx, cy, rx, ry, colour, alpha: int = 255, n: int = 24) -> None:
        self.poly(_ellipse_pts(cx, cy, rx, ry, n=n), colour, alpha)

    def ring(self, cx, cy, r, width, colour, alpha: int = 255) -> None:
        self.line(_ellipse_pts(cx, cy, r, r, n=25), width, colour, alpha)


def _hairline(ident: IdentityTraits) -> np.ndarray:
    """The hairline from the right temple to the left temple (canonical)."""
    fw = ident.width
    if ident.traits["Receding_Hairline"]:
        half = [(fw * 0.98, JAW_CENTER_Y - 0.05), (fw * 0.93, EYE_Y - 0.3), (fw * 0.62, -1.05),
                (fw * 0.3, -0.93), (0.0, -0.9)]
    else:
        half = [(fw * 0.98, JAW_CENTER_Y - 0.02), (fw * 0.94, EYE_Y - 0.22), (fw * 0.7, HAIRLINE_Y + 0.08),
                (fw * 0.3, HAIRLINE_Y + 0.01), (0.0, HAIRLINE_Y)]
    half = np.array(half)
    other = half[::-1][1:] * np.array([-1.0, 1.0])
    return np.concatenate([half, other])


def _hair_mod(texture: str, a: np.ndarray, phase: float) -> np.ndarray:
    if texture == "wavy":
        return 0.04 * np.sin(9 * a + phase)
    if texture == "curly":
        return 0.055 * np.abs(np.sin(14 * a + phase))
    return np.zeros_like(a)


def _cap_outer(ident: IdentityTraits, phase: float) -> np.ndarray:
    """Outer outline of the hair over the skull from the left side to the right side."""
    a = np.linspace(np.pi, 2 * np.pi, 48)
    mod = 1 + _hair_mod(ident.hair_texture, a, phase)
    rx = ident.width * 0.97 + ident.hair_volume
    ry = FOREHEAD_HEIGHT + ident.hair_volume
    return np.stack([rx * np.cos(a) * mod, JAW_CENTER_Y + ry * np.sin(a) * mod], -1)


def _side_edge(ident: IdentityTraits, y: np.ndarray, phase: float) -> np.ndarray:
    """Outer x of long hair at heights y."""
    frac = (y - JAW_CENTER_Y) / (HAIR_END_Y - JAW_CENTER_Y)
    x = ident.width * 0.97 + ident.hair_volume + 0.15 * frac
    if ident.hair_texture == "wavy":
        x = x + 0.06 * np.sin(2 * np.pi * y / 0.35 + phase)
    elif ident.hair_texture == "curly":
        x = x + 0.07 * np.abs(np.sin(2 * np.pi * y / 0.22 + phase))
    return x


def _draw_long_hair_back(p: Painter, ident: IdentityTraits, phase: float) -> None:
    cap = _cap_outer(ident, phase)
    y = np.linspace(JAW_CENTER_Y, HAIR_END_Y, 24)
    right = np.stack([_side_edge(ident, y, phase), y], -1)
    left = np.stack([-_side_edge(ident, y[::-1], phase + 1.0), y[::-1]], -1)
    p.poly(np.concatenate([cap, right, left]), ident.hair_rgb * 0.8)


def _long_hair_locks(ident: IdentityTraits, g: FaceGeometry, phase: float) -> list[np.ndarray]:
    """Front locks of long hair on both sides of the face (cover the ears and face edges)."""
    locks = []
    inset = 0.07 + 0.05 * ident.hair_volume / 0.2
    for side in (-1, 1):
        ph = phase if side > 0 else phase + 1.0
        y_out = np.linspace(JAW_CENTER_Y - 0.05, HAIR_END_Y, 20)
        outer = np.stack([_side_edge(ident, y_out, ph), y_out], -1)
        y_in = np.linspace(g.chin_y - 0.3, EYE_Y - 0.15, 10)
        inner = np.stack([g.face_x(y_in) - inset, y_in], -1)
        bottom = np.array([(g.neck_w + 0.1, HAIR_END_Y)])
        pts = np.concatenate([outer, bottom, inner])
        pts[:, 0] *= side
        locks.append(pts)
    return locks


def _strand_colours(ident: IdentityTraits) -> tuple[np.ndarray, np.ndarray]:
    """(shadow, sheen) colours of hair strands; on very dark hair the shadow is a lighter tone."""
    light = np.minimum(ident.hair_rgb * 1.25 + 45, 255)
    dark = ident.hair_rgb * 0.55 if _luminance(ident.hair_rgb) > DARK_HAIR_LUMINANCE else ident.hair_rgb + 40
    return dark, light


def _draw_hair_front(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    rng = np.random.default_rng(ident.hair_seed)
    phase = float(rng.uniform(0, 2 * np.pi))
    tex = ident.hair_texture
    hair = ident.hair_rgb
    dark, light = _strand_colours(ident)
    fw = ident.width
    if ident.traits["Bald"]:
        for side in (-1, 1):
            pts = np.array([(fw * 0.93, EYE_Y - 0.32), (fw + 0.09, EYE_Y - 0.3), (fw + 0.08, EYE_Y + 0.12),
                            (fw * 0.96, EYE_Y + 0.1)])
            pts[:, 0] *= side
            p.poly(pts, hair)
        p.ellipse(-0.25 * fw, JAW_CENTER_Y - FOREHEAD_HEIGHT * 0.8, 0.22, 0.09, (255, 255, 255), 70)
        return
    if ident.traits["Long_Hair"]:
        for lock in _long_hair_locks(ident, g, phase):
            p.poly(lock, hair)
    cap = _cap_outer(ident, phase)
    p.poly(np.concatenate([cap, _hairline(ident)]), hair)

    # strands
    w = STRAND_WIDTH
    if tex in ("straight", "wavy"):
        amp = 0.05 if tex == "wavy" else 0.0
        for f in (0.35, 0.6, 0.85):
            a = np.linspace(np.pi + 0.25, 2 * np.pi - 0.25, 30)
            r = 1 - (1 - f) * 0.18 + amp * np.sin(12 * a + phase) * 0.4
            rx, ry = fw * 0.97 + ident.hair_volume * f, FOREHEAD_HEIGHT + ident.hair_volume * f
            pts = np.stack([rx * np.cos(a) * r, JAW_CENTER_Y + ry * np.sin(a) * r], -1)
            sheen = f == 0.6
            p.line(pts, w * (1.6 if sheen and tex == "straight" else 1.0), light if sheen else dark, STRAND_ALPHA)
        if ident.traits["Long_Hair"]:
            y = np.linspace(EYE_Y - 0.05, HAIR_END_Y - 0.08, 20)
            for side in (-1, 1):
                for f in (0.3, 0.65):
                    x_out = _side_edge(ident, y, phase)
                    x_in = np.maximum(g.face_x(y) - 0.05, g.neck_w + 0.12)
                    x = x_in + f * (x_out - x_in)
                    if tex == "wavy":
                        x = x + 0.05 * np.sin(2 * np.pi * y / 0.35 + phase + f)
                    p.line(np.stack([side * x, y], -1), w, dark if f < 0.5 else light, STRAND_ALPHA)
    elif tex == "curly":
        for _ in range(22):
            a = rng.uniform(np.pi + 0.2, 2 * np.pi - 0.2)
            f = rng.uniform(0.2, 0.9)
            rx, ry = fw * 0.97 + ident.hair_volume * f, FOREHEAD_HEIGHT + ident.hair_volume * f
            r = 1 - (1 - f) * 0.15
            p.ring(rx * np.cos(a) * r, JAW_CENTER_Y + ry * np.sin(a) * r, 0.04, w, dark, 190)
        if ident.traits["Long_Hair"]:
            for _ in range(20):
                side = 1 if rng.random() < 0.5 else -1
                y = rng.uniform(EYE_Y, HAIR_END_Y - 0.1)
                x_out = float(_side_edge(ident, np.array([y]), phase)[0])
                x_in = max(float(g.face_x(np.array([y]))[0]) - 0.05, g.neck_w + 0.12)
                p.ring(side * (x_in + rng.uniform(0.15, 0.85) * (x_out - x_in)), y, 0.045, w, dark, 190)
    else:  # cropped: stipple
        for _ in range(30):
            a = rng.uniform(np.pi + 0.2, 2 * np.pi - 0.2)
            r = rng.uniform(0.9, 1.0)
            rx, ry = fw * 0.97 + ident.hair_volume, FOREHEAD_HEIGHT + ident.hair_volume
            p.ellipse(rx * np.cos(a) * r, JAW_CENTER_Y + ry * np.sin(a) * r, 0.015, 0.015, dark, 160, n=8)

    if img.labels["Bangs"]:
        brow_top = min(float(b[0][:, 1].min()) for b in g.brows) - 0.05
        x = np.linspace(-fw * 0.88, fw * 0.88, 13)
        top_y = np.full_like(x, HAIRLINE_Y - 0.06)
        bottom_y = brow_top - 0.03 * (np.arange(13) % 2) - 0.04 * (np.abs(x) / fw) ** 2
        if tex == "curly":
            bottom_y = bottom_y - 0.03 * np.abs(np.sin(np.arange(13) * 1.7))
        pts = np.concatenate([np.stack([x, top_y], -1), np.stack([x[::-1], bottom_y[::-1]], -1)])
        p.poly(pts, hair)
        for xi in x[1:-1:2]:
            p.line([(xi * 0.9, HAIRLINE_Y), (xi, brow_top - 0.06)], w, dark, 150)
    if img.sideburns:
        _draw_sideburns(p, ident, g)


def _draw_sideburns(p: Painter, ident: IdentityTraits, g: FaceGeometry) -> None:
    y = np.linspace(EYE_Y - 0.3, g.nose_tip + 0.06, 8)
    edge = g.face_x(y)
    colour = _facial_hair_colour(ident)
    for side in (-1, 1):
        pts = np.concatenate([np.stack([edge + 0.01, y], -1), np.stack([edge[::-1] - 0.12, y[::-1]], -1)])
        pts[:, 0] *= side
        p.poly(pts, colour)


def _draw_body(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    skin = ident.skin
    nw = g.neck_w
    st = img.style
    sh = 1.1 if ident.male else 1.0
    ny = NECK_BASE_Y
    shoulders = np.array([
        (-nw * 1.05, ny - 0.06), (-nw - 0.5 * sh, ny + 0.06), (-1.75 * sh, ny + 0.3), (-2.2 * sh, ny + 0.8),
        (-2.4 * sh, 4.0), (2.4 * sh, 4.0), (2.2 * sh, ny + 0.8), (1.75 * sh, ny + 0.3), (nw + 0.5 * sh, ny + 0.06),
        (nw * 1.05, ny - 0.06)])
    neck = np.array([(-nw, g.chin_y - 0.45), (nw, g.chin_y - 0.45), (nw * 1.08, ny + 0.25), (-nw * 1.08, ny + 0.25)])
    tie = img.labels["Wearing_Necktie"]
    p.poly(neck, skin * 0.84)
    p.poly(shoulders, st["jacket"] if tie else st["shirt"])
    necklace = img.labels["Wearing_Necklace"]
    if tie:
        p.poly([(-0.32, ny - 0.02), (0.32, ny - 0.02), (0.0, 2.6)], (245, 245, 245))
        for side in (-1, 1):
            p.poly([(side * nw * 1.02, ny - 0.12), (side * 0.02, ny + 0.1), (side * (nw + 0.12), ny + 0.12)],
                   (235, 235, 235))
        knot = [(-0.09, ny + 0.0), (0.09, ny + 0.0), (0.06, ny + 0.13), (-0.06, ny + 0.13)]
        p.poly(knot, np.asarray(st["tie"]) * 0.85)
        p.poly([(-0.06, ny + 0.13), (0.06, ny + 0.13), (0.14, 2.15), (0.0, 2.35), (-0.14, 2.15)], st["tie"])
        p.line([(-0.04, ny + 0.35), (0.08, ny + 0.47)], 0.04, (250, 250, 250), 120)
        p.line([(-0.08, ny + 0.7), (0.1, ny + 0.84)], 0.04, (250, 250, 250), 120)
    elif not ident.male or necklace:
        depth = 0.38 if not ident.male else 0.3
        scoop = _ellipse_pts(0, ny - 0.04, nw + 0.28, depth, 0, np.pi, 20)[::-1] * [-1, 1]
        chest = np.concatenate([[(-nw - 0.28, ny - 0.04)], scoop, [(nw + 0.28, ny - 0.04)]])
        p.poly(chest, skin * 0.9)
    else:
        p.line(_ellipse_pts(0, ny - 0.02, nw * 1.08, 0.12, 0, np.pi, 14), 0.06, np.asarray(st["shirt"]) * 0.7)
        if st["collar"]:
            for side in (-1, 1):
                p.poly([(side * nw * 1.05, ny - 0.1), (side * 0.05, ny + 0.12), (side * (nw + 0.2), ny + 0.1)],
                       np.asarray(st["shirt"]) * 0.8)
    if necklace:
        kind, colour = st["necklace"]
        arc = _ellipse_pts(0, ny - 0.06, nw + 0.1, 0.24, 0.25, np.pi - 0.25, 11)
        if kind == "beads":
            for x, y in arc:
                p.ellipse(x, y, 0.055, 0.055, np.asarray(colour) * 0.45, n=10)
                p.ellipse(x, y, 0.04, 0.04, colour, n=10)
        else:
            p.line(arc, 0.06, np.asarray(colour) * 0.45)
            p.line(arc, 0.035, colour)
            p.ellipse(0, ny + 0.2, 0.08, 0.09, np.asarray(colour) * 0.45, n=14)
            p.ellipse(0, ny + 0.2, 0.06, 0.07, colour, n=14)


def _draw_ears(p: Painter, ident: IdentityTraits) -> None:
    for side in (-1, 1):
        cx = side * (ident.width + 0.02)
        p.ellipse(cx, EYE_Y + 0.12, 0.09, 0.2, ident.skin * 0.92)
        p.line(_ellipse_pts(cx, EYE_Y + 0.1, 0.05, 0.13, -np.pi / 2 if side > 0 else np.pi / 2,
                            np.pi / 2 if side > 0 else 1.5 * np.pi, 10), 0.02, ident.skin * 0.7)


def _draw_eyes(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    makeup = img.labels["Heavy_Makeup"]
    for eye in g.eyes:
        cx, ew, eh, lids, side = eye["cx"], eye["ew"], eye["eh"], eye["lids"], eye["side"]
        u = np.linspace(-1, 1, 21)
        x = cx + ew * u
        up, lo = lids(u)
        if ident.traits["Bags_Under_Eyes"]:
            env = np.clip(1 - (u * 0.95) ** 2, 0, 1)
            bag_top = np.stack([x * 0.98 + cx * 0.02, lo + 0.015], -1)
            bag_bot = np.stack([x, lo + 0.02 + 0.075 * env], -1)
            p.poly(np.concatenate([bag_top, bag_bot[::-1]]), (80, 50, 70), 90)
            p.line(bag_bot[3:-3], 0.025, ident.skin * 0.55, 170)
        if makeup:
            shadow_top = np.stack([x * 1.05 - cx * 0.05, up - 0.06 - 0.05 * np.clip(1 - u ** 2, 0, 1)], -1)
            p.poly(np.concatenate([np.stack([x, up], -1), shadow_top[::-1]]), img.style["eyeshadow"], 190)
        p.poly(np.concatenate([np.stack([x, up], -1), np.stack([x[::-1], lo[::-1]], -1)]), SCLERA_RGB)
        iris_r = 0.058
        cy = EYE_Y - eh * 0.05
        for r, colour in ((iris_r, ident.iris), (iris_r * 0.5, (12, 10, 10))):
            circ = _ellipse_pts(cx, cy, r, r, n=20)
            top, bot = lids((circ[:, 0] - cx) / ew)
            circ[:, 1] = np.clip(circ[:, 1], top, bot)
            p.poly(circ, colour)
        p.ellipse(cx + 0.018, cy - 0.02, 0.012, 0.012, (255, 255, 255), 200, n=8)
        lid_w = 0.05 if makeup else 0.028
        p.line(np.stack([x, up], -1), lid_w, (25, 18, 18), 230)
        if makeup:
            outer = 1 if side > 0 else 0
            corner = np.array([x[-1 if outer else 0], up[-1 if outer else 0]])
            p.line([corner, corner + (side * 0.07, -0.045)], 0.04, (20, 15, 15))
        p.line(np.stack([x[2:-2], lo[2:-2]], -1), 0.015, ident.skin * 0.6, 140)
        if not ident.young:
            ox = cx + side * (ew + 0.03)
            for dy in (-0.04, 0.0, 0.045):
                p.line([(ox, EYE_Y + dy * 0.5), (ox + side * 0.08, EYE_Y + dy * 1.6)], 0.03, ident.skin * 0.55,
                       int(170 * ident.wrinkles))


def _brow_colour(ident: IdentityTraits, img: ImageTraits) -> np.ndarray:
    c = ident.hair_rgb * (0.55 if ident.hair_colour in ("blond", "gray") else 0.8)
    if img.labels["Heavy_Makeup"]:
        c = c * 0.75
    return c


def _draw_brows(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    colour = _brow_colour(ident, img)
    for centre, thick in g.brows:
        top = centre - np.stack([np.zeros_like(thick), thick / 2], -1)
        bot = centre + np.stack([np.zeros_like(thick), thick / 2], -1)
        p.poly(np.concatenate([top, bot[::-1]]), colour)


def _draw_nose(p: Painter, ident: IdentityTraits, g: FaceGeometry) -> None:
    skin = ident.skin
    nw, tip, nb = ident.nose_width, g.nose_tip, g.nose_base
    body = np.array([(-0.05, EYE_Y + 0.04), (0.05, EYE_Y + 0.04), (nw * 0.85, nb - 0.05), (nw, nb),
                     (-nw, nb), (-nw * 0.85, nb - 0.05)])
    p.poly(body, skin * 0.78, 140)
    p.line([(0.06, EYE_Y + 0.05), (nw * 0.75, nb - 0.06)], 0.04, skin * 0.55, 150)
    highlight = np.minimum(skin * 1.2 + 25, 255)
    if ident.traits["Pointy_Nose"]:
        contour = np.array([(-nw, nb - 0.05), (-nw * 0.4, nb - 0.01), (0.0, nb + 0.1), (nw * 0.4, nb - 0.01),
                            (nw, nb - 0.05)])
        p.poly([(-0.05, tip - 0.14), (0.05, tip - 0.14), (0.0, nb + 0.07)], highlight, 200)
    else:
        contour = _ellipse_pts(0, nb - 0.05, nw, 0.07, 0, np.pi, 13)
        p.ellipse(0, tip - 0.01, nw * 0.55, 0.06, highlight, 170)
    p.line(contour, 0.04, skin * 0.45, 220)
    for side in (-1, 1):
        p.ellipse(side * nw * 0.5, nb, 0.045 * nw / 0.12, 0.025, (40, 20, 20), 230, n=12)


def _draw_mouth(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    m = g.mouth
    natural = ident.skin * NATURAL_LIP_TINT + np.array([30, 0, 0])
    lip = np.asarray(img.style["lipstick"], float) if img.labels["Wearing_Lipstick"] else natural
    if img.gap > 0:
        p.poly(np.concatenate([m["upper_inner"], m["lower_inner"][::-1]]), MOUTH_RGB)
        if img.labels["Smiling"] or img.gap > 0.08:
            u = np.linspace(-1, 1, m["upper_inner"].shape[0])
            depth = min(img.gap * 0.55, 0.05) * np.clip(1 - u ** 2, 0, 1) ** 0.5
            teeth_bot = m["upper_inner"] + np.stack([np.zeros_like(depth), depth], -1)
            p.poly(np.concatenate([m["upper_inner"], teeth_bot[::-1]]), TEETH_RGB)
    p.poly(np.concatenate([m["upper_outer"], m["upper_inner"][::-1]]), lip * 0.9)
    p.poly(np.concatenate([m["lower_outer"], m["lower_inner"][::-1]]), lip)
    p.line(m["upper_inner"], 0.02, lip * 0.45, 200)
    if img.labels["Smiling"]:
        for side in (-1, 1):
            corner = m["upper_outer"][-1 if side > 0 else 0]
            dimple = corner + np.array([[side * 0.01, 0.01], [side * 0.05, -0.02], [side * 0.06, -0.07]])
            p.line(dimple, 0.04, ident.skin * 0.45, 220)


def _beard_region(g: FaceGeometry, ident: IdentityTraits, upper_lip: bool) -> np.ndarray:
    """Lower-face region for stubble and full beards."""
    fw = ident.width
    jaw = g.jaw(np.linspace(0.12 * np.pi, 0.88 * np.pi, 24))
    jaw[:, 1] += 0.02
    side_y = g.nose_tip + 0.04
    mw = g.mouth["upper_outer"][-1, 0]
    if upper_lip:
        top = [(-fw * 0.7, side_y), (-mw * 1.15, g.nose_base + 0.05), (0, g.nose_base + 0.05),
               (mw * 1.15, g.nose_base + 0.05), (fw * 0.7, side_y)]
    else:
        low = g.mouth["lower_outer"][12, 1] + 0.02
        top = [(-fw * 0.72, side_y), (-mw * 1.2, g.mouth_y), (-mw * 0.7, low), (0, low + 0.01), (mw * 0.7, low),
               (mw * 1.2, g.mouth_y), (fw * 0.72, side_y)]
    return np.concatenate([jaw, np.array(top)[::-1]])


def _luminance(rgb: np.ndarray) -> float:
    return float(np.asarray(rgb, float) @ LUMA)


def _facial_hair_colour(ident: IdentityTraits) -> np.ndarray:
    """Beard colour: the hair colour, darkened until it contrasts with the skin."""
    colour = ident.hair_rgb * (1.0 if ident.hair_colour == "gray" else FACIAL_HAIR_DARKEN)
    skin_l, hair_l = _luminance(ident.skin), _luminance(colour)
    if abs(skin_l - hair_l) < MIN_FACIAL_HAIR_CONTRAST:
        colour = colour * max(0.15, (skin_l - MIN_FACIAL_HAIR_CONTRAST) / max(hair_l, 1.0))
    return colour


def _draw_facial_hair(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry, stage: str) -> None:
    """stage 'under' (before the mouth: stubble, beard, goatee) or 'over' (after it: moustache)."""
    colour = _facial_hair_colour(ident)
    m = g.mouth
    mw = m["upper_outer"][-1, 0]
    if stage == "under":
        if img.stubble:
            region = _beard_region(g, ident, upper_lip=True)
            p.poly(region, ident.skin * STUBBLE_DARKEN, STUBBLE_ALPHA)
            rng = np.random.default_rng(ident.hair_seed + 1)
            lo, hi = region.min(0), region.max(0)
            dots = rng.uniform(lo, hi, (160, 2))
            xy = np.asarray(p._xy(dots)).reshape(-1, 2)
            p.draw.point([tuple(q) for q in xy], fill=_rgba((25, 20, 20), 120))
        if img.beard == "full_beard":
            p.poly(_beard_region(g, ident, upper_lip=False), colour)
        if img.beard in ("goatee", "goatee_mustache"):
            low = m["lower_outer"][12, 1] + 0.015
            chin = g.jaw(np.linspace(np.pi / 2 - 0.42, np.pi / 2 + 0.42, 11))
            chin[:, 1] += 0.03
            top = np.array([(-mw * 0.6, low + 0.02), (0, low), (mw * 0.6, low + 0.02)])
            p.poly(np.concatenate([chin, top]), colour)
            if img.beard == "goatee_mustache":
                for side in (-1, 1):
                    corner = m["upper_outer"][-1 if side > 0 else 0]
                    p.line([corner + (side * 0.03, -0.02), (side * mw * 0.62, low + 0.06)], 0.06, colour)
    else:
        if img.beard in ("mustache", "goatee_mustache"):
            upper = m["upper_outer"]
            top_y = g.nose_base + 0.04
            lower = upper.copy()
            lower[:, 1] += 0.015
            lower[:, 0] *= 1.08
            ends = [(mw * 1.12, upper[-1, 1] + 0.05), (-mw * 1.12, upper[0, 1] + 0.05)]
            pts = np.concatenate([[(-mw * 1.0, top_y + 0.03), (0, top_y), (mw * 1.0, top_y + 0.03)], [ends[0]],
                                  lower[::-1], [ends[1]]])
            p.poly(pts, colour)


def _draw_cheeks_and_age(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    skin = ident.skin
    es, fw = ident.eye_spacing, ident.width
    if img.labels["High_Cheekbones"]:
        for side in (-1, 1):
            p.ellipse(side * (es + 0.06), EYE_Y + 0.24, 0.17, 0.07, np.minimum(skin * 1.2 + 30, 255), 120)
            mouth_x = g.mouth["upper_outer"][-1, 0]
            p.line([(side * (fw * 0.92), EYE_Y + 0.3), (side * (mouth_x + 0.12), g.nose_base + 0.05)],
                   0.07, skin * 0.6, 90)
    if img.labels["Rosy_Cheeks"]:
        for side in (-1, 1):
            p.ellipse(side * (es + 0.03), g.nose_tip - 0.02, 0.17, 0.12, ROSY_RGB, ROSY_ALPHA)
    if ident.traits["Chubby"]:
        for side in (-1, 1):
            p.ellipse(side * (fw * 0.62), g.nose_base + 0.05, 0.2, 0.15, np.minimum(skin * 1.08 + 8, 255), 90)
    if not ident.young:
        a = int(WRINKLE_ALPHA * ident.wrinkles)
        brow_top = min(float(b[0][:, 1].min()) for b in g.brows)
        for k in range(3):
            y = brow_top - 0.1 - 0.08 * k
            xs = np.linspace(-fw * 0.45, fw * 0.45, 9)
            p.line(np.stack([xs, y + 0.02 * (xs / fw) ** 2 * 4], -1), WRINKLE_WIDTH, skin * 0.5, a)
        mw = g.mouth["upper_outer"][-1, 0]
        for side in (-1, 1):
            pts = np.array([(side * (ident.nose_width + 0.05), g.nose_base - 0.04),
                            (side * (mw + 0.08), g.mouth_y - 0.02), (side * (mw + 0.07), g.mouth_y + 0.1)])
            p.line(pts, WRINKLE_WIDTH, skin * 0.45, a)
            jowl = [(side * (mw + 0.02), g.mouth_y + 0.08), (side * (mw + 0.04), g.mouth_y + 0.2)]
            p.line(jowl, WRINKLE_WIDTH, skin * 0.5, a)


def _draw_double_chin(p: Painter, ident: IdentityTraits, g: FaceGeometry) -> None:
    if not ident.traits["Double_Chin"]:
        return
    w = ident.width * 0.68
    p.ellipse(0, g.chin_y + 0.07, w, 0.2, ident.skin * 0.98)
    p.line(_ellipse_pts(0, g.chin_y + 0.07, w, 0.2, 0.2, np.pi - 0.2, 14), 0.06, ident.skin * 0.45, 230)


def _draw_hat(p: Painter, ident: IdentityTraits, img: ImageTraits) -> None:
    kind, colour = img.style["hat"]
    colour = np.asarray(colour, float)
    r = ident.width * 0.97 + ident.hair_volume + 0.05
    band = HAIRLINE_Y + 0.12
    if kind == "beanie":
        dome = _ellipse_pts(0, band - 0.05, r, 0.75, np.pi, 2 * np.pi, 30)
        p.poly(np.concatenate([dome, [(r, band + 0.02), (-r, band + 0.02)]]), colour)
        p.poly([(-r, band - 0.12), (r, band - 0.12), (r, band + 0.04), (-r, band + 0.04)], colour * 0.75)
        for k in range(-3, 4):
            p.line([(k * r / 4, band - 0.12), (k * r / 4, band + 0.03)], 0.025, colour * 0.55, 200)
    elif kind == "fedora":
        p.ellipse(0, band - 0.02, r + 0.38, 0.11, colour * 0.8)
        crown = np.array([(-r * 0.85, band - 0.05), (-r * 0.75, band - 0.68), (0.0, band - 0.6),
                          (r * 0.75, band - 0.68), (r * 0.85, band - 0.05)])
        p.poly(crown, colour)
        p.poly([(-r * 0.84, band - 0.2), (r * 0.84, band - 0.2), (r * 0.85, band - 0.08), (-r * 0.85, band - 0.08)],
               (30, 25, 25))
    else:  # cap with a visor
        dome = _ellipse_pts(0, band, r, 0.68, np.pi, 2 * np.pi, 30)
        p.poly(np.concatenate([dome, [(r, band + 0.03), (-r, band + 0.03)]]), colour)
        p.poly([(-r * 0.8, band), (r * 0.8, band), (r * 0.6, band + 0.17), (-r * 0.6, band + 0.17)], colour * 0.65)
        p.ellipse(0, band - 0.66, 0.06, 0.04, colour * 0.6, n=10)


def _draw_glasses(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    kind, colour, sun = img.style["glasses"]
    hw = ident.eye_width + 0.07
    hh = 0.12 if kind != "wide" else 0.1
    power = {"rect": 5.0, "round": 2.0, "wide": 4.0}[kind]
    a = np.linspace(0, 2 * np.pi, 33)
    for eye in g.eyes:
        cx, side = eye["cx"], eye["side"]
        c, s = np.cos(a), np.sin(a)
        frame = np.stack([cx + hw * np.sign(c) * np.abs(c) ** (2 / power),
                          EYE_Y + 0.01 + hh * np.sign(s) * np.abs(s) ** (2 / power)], -1)
        p.poly(frame, (15, 15, 25) if sun else (200, 225, 245), 225 if sun else 45)
        p.line(frame, GLASSES_FRAME, colour)
        outer = (cx + side * hw, EYE_Y - 0.03)
        p.line([outer, (side * (ident.width + 0.02), EYE_Y - 0.02)], 0.04, colour)
    inner = g.eyes[1]["cx"] - hw
    p.line(_ellipse_pts(0, EYE_Y - 0.01, inner, 0.04, np.pi, 2 * np.pi, 9), 0.035, colour)


def _draw_earrings(p: Painter, ident: IdentityTraits, img: ImageTraits) -> None:
    kind, colour = img.style["earring"]
    colour = np.asarray(colour, float)
    outline = colour * 0.45
    for side in (-1, 1):
        x, y = side * (ident.width + 0.03), EYE_Y + 0.3
        if kind == "stud":
            p.ellipse(x, y, 0.085, 0.085, outline, n=14)
            p.ellipse(x, y, 0.065, 0.065, colour, n=14)
        elif kind == "hoop":
            p.ring(x, y + 0.12, 0.12, 0.085, outline)
            p.ring(x, y + 0.12, 0.12, 0.05, colour)
        else:
            p.line([(x, y), (x, y + 0.13)], 0.04, outline)
            p.ellipse(x, y + 0.19, 0.085, 0.1, outline, n=14)
            p.ellipse(x, y + 0.19, 0.065, 0.08, colour, n=14)


def draw_person(p: Painter, ident: IdentityTraits, img: ImageTraits, g: FaceGeometry) -> None:
    """Draw head, hair, shoulders and accessories back to front."""
    phase = float(np.random.default_rng(ident.hair_seed).uniform(0, 2 * np.pi))
    if ident.traits["Long_Hair"] and not ident.traits["Bald"]:
        _draw_long_hair_back(p, ident, phase)
    _draw_body(p, ident, img, g)
    _draw_ears(p, ident)
    _draw_double_chin(p, ident, g)
    p.poly(g.outline, ident.skin)
    _draw_cheeks_and_age(p, ident, img, g)
    _draw_facial_hair(p, ident, img, g, "under")
    _draw_nose(p, ident, g)
    _draw_mouth(p, ident, img, g)
    _draw_facial_hair(p, ident, img, g, "over")
    _draw_eyes(p, ident, img, g)
    _draw_brows(p, ident, img, g)
    _draw_hair_front(p, ident, img, g)
    if img.labels["Wearing_Hat"]:
        _draw_hat(p, ident, img)
    if img.labels["Eyeglasses"]:
        _draw_glasses(p, ident, img, g)
    if img.labels["Wearing_Earrings"]:
        _draw_earrings(p, ident, img)
