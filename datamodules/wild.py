"""The ``wild`` datamodule option: every aligned face image composited onto a cluttered canvas at a
random scale and position, with its face box in canvas pixels, so that face-localising methods
(LNets+ANet, Liu et al. ICCV 2015, sec. 3.1) can run on any aligned dataset as on SynthFaces'
own wild canvases.

Datamodule argument (any :class:`~facebench.datamodules.base.FaceDataModule`; ``true`` or ``{}`` for the
defaults, ``null`` / ``false`` for off)::

    wild: {canvas: 160, face_fraction: [0.15, 0.6], context: [0.5, 1.0], face_box: auto, seed: 0}

* ``canvas``: side of the square canvas (pixels);
* ``face_fraction``: the face box's longer side over the canvas side, drawn uniformly per image;
* ``context``: the pasted photo is the source image cut to the face box widened on each side by
  its own random margin in this range (a fraction of the box side, clipped to the image), so that
  the face does not sit at one fixed place inside the pasted rectangle (whose edge is visible on
  the clutter); ``null`` pastes the whole image. Parts of the photo outside the canvas are cut off;
  the face box always lies inside it;
* ``face_box``: the ground-truth face box of an aligned image. ``landmarks``: the tight box of the
  table's 68 landmarks (``landmark_provider: dlib68``; the 300-W convention: the face box is the
  box of the 68 points, jaw to brows); ``celeba``: the canonical box of CelebA's alignment,
  :data:`CELEBA_FACE_BOX` scaled to the image size; ``[x, y, w, h]``: fractions of the image size;
  ``auto`` (default): ``landmarks`` when the table has 68 landmarks, else ``celeba``. The mode used
  is recorded in ``report["wild"]``;
* ``seed``: with each image's path (relative to the dataset root), the only source of randomness,
  so an image gets the same canvas in every split, subset and machine.

The background is the SynthFaces clutter canvas that LNets' clutter negatives use too
(:func:`facebench.datamodules.synthfaces.clutter_canvas`: a flat colour,
as many shapes per area as SynthFaces' canvases, 2x supersampled, Gaussian blur, sensor noise);
the photo is pasted over it unchanged apart from the resize (``cv2.INTER_AREA`` shrinking,
``INTER_LINEAR`` enlarging), so the face region of a canvas is exactly the resized source.

With ``wild``, a dataset that has an ``in_the_wild`` flag (CelebA) reads its aligned images and
``in_the_wild: true`` selects the composited canvases, ``false`` the aligned images (as the
``synthfaces`` datamodule's flag does; LNets+ANet's ``lnet_plus`` stage trains on the aligned
ones). Datasets without the flag always get the canvases (the ``synthfaces`` datamodule has its
own boolean ``wild``, which renders its native canvases instead). The canvases replace the table's
``paths`` (absolute paths into the cache), ``boxes`` (face box ``x, y, w, h`` in canvas pixels,
pixel-index convention as everywhere in the tables) and ``landmarks`` (mapped into the canvas);
in-memory datasets (``arrays``) get canvas arrays instead of files. Compositing runs at setup,
after ``max_samples`` and the landmark provider, before ``preprocess`` alignment.

Cache: ``<cache_dir>/wild/<dataset>-<hash of the settings>/<stem>-<hash>.png`` (PNG, lossless),
the file hash over (version, relative path, file size, mtime, face box); each file is written
atomically, so concurrent runs can build the same folder; the placement of the face is recomputed
from the seed (cheap), only the pixels are cached. Because the image cache
(:mod:`facebench.datamodules.cache`) keys on the paths and file stamps, any change of the settings or of a
source file gives it a new key too. Stale canvases are never deleted (remove the folder).

Limitation: the pasted photo is a rectangle with a visible edge on the clutter, a cue real
in-the-wild photos do not give; ``context`` keeps it from fixing the face position, not from
telling where the photo is.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from facebench.core.config import config_from_value
from facebench.core.io import atomic_write
from facebench.datamodules.table import SOURCE_PATH, DatasetFiles, SampleTable

#: Bump when the pixels or the placement of a canvas change for the same settings.
WILD_VERSION = 1
#: Size (width, height) of CelebA's aligned crops (``img_align_celeba``).
CELEBA_ALIGNED_SIZE: tuple[int, int] = (178, 218)
#: Canonical face box ``(x, y, w, h)`` of CelebA's aligned crops, in their 178 x 218 pixels: the
#: median over the real subset's 4,560 training images (``/work/shared/data/celeba_subset``) of the
#: left, top, right and bottom of the tight box of dlib's 68 landmarks (``landmark_provider:
#: {name: dlib68, detector: hog}``; the 4,458 images where HOG found the face): x0 = 46, y0 = 98
#: (top of the brows), x1 = 132, y1 = 184 (chin). From the 5th to the 95th percentile the sides
#: range over x0 28-58, y0 93-102, x1 119-149, y1 176-192 px: the alignment fixes the eyes, while
#: face width, yaw and the chin move the rest. Computed once with the datamodule's own provider
#: (``CelebADataModule(root, landmark_provider=...)``, then ``np.median`` of the per-image sides).
CELEBA_FACE_BOX: tuple[float, float, float, float] = (46.0, 98.0, 86.0, 86.0)
FACE_BOX_MODES = ("auto", "landmarks", "celeba")
_STREAM_PLACE, _STREAM_CLUTTER = 0x57A1, 0xC1A7


@dataclass
class WildConfig:
    """YAML ``wild:`` of a datamodule (see the module docstring)."""

    canvas: int = 160
    face_fraction: Sequence[float] = (0.15, 0.6)
    context: Sequence[float] | None = (0.5, 1.0)
    face_box: str | Sequence[float] = "auto"
    seed: int = 0

    @classmethod
    def from_value(cls, value: "WildConfig | bool | dict[str, Any] | None") -> "WildConfig | None":
        """``None`` / ``false``: off; ``true``: the defaults; a mapping: these fields."""
        if value is None or value is False:
            return None
        return config_from_value(cls, {} if value is True else value, "wild")

    def validate(self) -> None:
        lo, hi = (float(v) for v in self.face_fraction)
        if not 0 < lo <= hi <= 0.95:
            raise ValueError(f"wild.face_fraction must be two numbers 0 < low <= high <= 0.95, got {list(self.face_fraction)}")
        if int(self.canvas) < 16:
            raise ValueError(f"wild.canvas must be at least 16 pixels, got {self.canvas}")
        if self.context is not None:
            clo, chi = (float(v) for v in self.context)
            if not 0 <= clo <= chi:
                raise ValueError(f"wild.context must be two numbers 0 <= low <= high (or null), got {list(self.context)}")
        if isinstance(self.face_box, str):
            if self.face_box not in FACE_BOX_MODES:
                raise ValueError(f"wild.face_box must be one of {', '.join(FACE_BOX_MODES)} or [x, y, w, h] fractions, "
                                 f"got {self.face_box!r}")
        elif len(self.face_box) != 4 or min(float(v) for v in self.face_box[2:]) <= 0:
            raise ValueError(f"wild.face_box fractions must be [x, y, w, h] with w, h > 0, got {list(self.face_box)}")

    def key(self) -> str:
        """Hash of the settings that determine the canvases (the cache folder's name)."""
        plain = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in asdict(self).items()}
        return hashlib.sha1(f"v{WILD_VERSION}|{sorted(plain.items())}".encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------
# one canvas
# ------------------------------------------------------------------------------------------------
@dataclass
class Placement:
    """Where a source image lands on its canvas.

    ``source``: the pasted source region ``[x0, x1) x [y0, y1)`` (integer pixels); ``patch``: its
    resized size ``(width, height)`` and top-left corner ``(px, py)`` on the canvas (may be
    negative: the photo is cut at the canvas edge); ``box``: the face box on the canvas."""

    source: tuple[int, int, int, int]
    patch_size: tuple[int, int]
    patch_origin: tuple[int, int]
    box: np.ndarray

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Source points ``[..., 2]`` (pixel-index convention) in canvas coordinates (the exact map of the resize)."""
        x0, y0, x1, y1 = self.source
        scale = np.array([self.patch_size[0] / (x1 - x0), self.patch_size[1] / (y1 - y0)])
        return (np.asarray(points, dtype=np.float64) - (x0, y0) + 0.5) * scale - 0.5 + self.patch_origin


def sample_key(name: str) -> int:
    """A 63-bit integer from an image's name (its path relative to the dataset root): the per-image
    part of the random seed (SHA-1, the same on every machine, unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:8], "little") >> 1


def place(image_size: tuple[int, int], face_box: Sequence[float], cfg: WildConfig, key: int) -> Placement:
    """The placement of an image of ``image_size`` (width, height) whose face box is ``face_box``
    (x, y, w, h): random face size, context margins and position from (``cfg.seed``, ``key``)."""
    rng = np.random.default_rng([int(cfg.seed), _STREAM_PLACE, int(key)])
    w_img, h_img = image_size
    bx, by, bw, bh = (float(v) for v in face_box)
    side = cfg.canvas
    scale = rng.uniform(*cfg.face_fraction) * side / max(bw, bh)
    if cfg.context is None:
        x0, y0, x1, y1 = 0, 0, w_img, h_img
    else:
        ml, mr, mt, mb = rng.uniform(*cfg.context, 4)
        x0 = int(np.clip(math.floor(bx - ml * bw), 0, w_img - 1))
        y0 = int(np.clip(math.floor(by - mt * bh), 0, h_img - 1))
        x1 = int(np.clip(math.ceil(bx + bw + mr * bw + 1), x0 + 1, w_img))
        y1 = int(np.clip(math.ceil(by + bh + mb * bh + 1), y0 + 1, h_img))
    pw, ph = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    sx, sy = pw / (x1 - x0), ph / (y1 - y0)
    fx, fy = (bx - x0 + 0.5) * sx - 0.5, (by - y0 + 0.5) * sy - 0.5      # face box corner in the patch
    fw, fh = bw * sx, bh * sy
    # integer patch origins that keep the face box inside [0, side - 1]
    lo_x, hi_x = math.ceil(-fx), math.floor(side - 1 - fw - fx)
    lo_y, hi_y = math.ceil(-fy), math.floor(side - 1 - fh - fy)
    px = int(rng.integers(lo_x, hi_x + 1)) if hi_x >= lo_x else round((side - 1 - fw) / 2 - fx)
    py = int(rng.integers(lo_y, hi_y + 1)) if hi_y >= lo_y else round((side - 1 - fh) / 2 - fy)
    return Placement((x0, y0, x1, y1), (pw, ph), (px, py), np.array([px + fx, py + fy, fw, fh], dtype=np.float64))


def clutter_background(side: int, channels: int, seed: int, key: int) -> np.ndarray:
    """``uint8 [side, side, channels]`` SynthFaces clutter (see the module docstring), from (seed, key)."""
    from facebench.datamodules.synthfaces import clutter_canvas

    out = clutter_canvas(side, np.random.default_rng([int(seed), _STREAM_CLUTTER, int(key)]))
    return cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[:, :, None] if channels == 1 else out


def resized_patch(image: np.ndarray, placement: Placement) -> np.ndarray:
    """The pasted photo: the source region resized to the patch size."""
    x0, y0, x1, y1 = placement.source
    pw, ph = placement.patch_size
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    interp = cv2.INTER_AREA if pw < x1 - x0 or ph < y1 - y0 else cv2.INTER_LINEAR
    out = cv2.resize(crop, (pw, ph), interpolation=interp)
    return out.reshape(ph, pw, image.shape[2])


def composite(image: np.ndarray, placement: Placement, cfg: WildConfig, key: int) -> np.ndarray:
    """The canvas ``uint8 [canvas, canvas, C]``: clutter with the resized photo pasted at the placement."""
    if image.ndim == 2:
        image = image[:, :, None]
    side = cfg.canvas
    canvas = clutter_background(side, image.shape[2], cfg.seed, key)
    patch = resized_patch(image, placement)
    px, py = placement.patch_origin
    ph, pw = patch.shape[:2]
    cx0, cy0, cx1, cy1 = max(px, 0), max(py, 0), min(px + pw, side), min(py + ph, side)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = patch[cy0 - py:cy1 - py, cx0 - px:cx1 - px]
    return canvas


# ------------------------------------------------------------------------------------------------
# face boxes of the source images
# ------------------------------------------------------------------------------------------------
def face_box_mode(cfg: WildConfig, landmarks: np.ndarray | None) -> str:
    """Which face box definition ``cfg.face_box`` means for a table (``landmarks``, ``celeba`` or ``fractions``)."""
    if not isinstance(cfg.face_box, str):
        return "fractions"
    if cfg.face_box == "auto":
        return "landmarks" if landmarks is not None and landmarks.shape[1] == 68 else "celeba"
    return cfg.face_box


def source_face_boxes(sizes: np.ndarray, landmarks: np.ndarray | None, cfg: WildConfig) -> tuple[np.ndarray, str]:
    """Face boxes ``[N, 4]`` (x, y, w, h) of aligned images of ``sizes`` ``[N, 2]`` (width, height),
    and the mode used (see the module docstring; a row without finite landmarks gets the canonical box)."""
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    mode = face_box_mode(cfg, landmarks)
    if mode == "fractions":
        return np.asarray(cfg.face_box, dtype=np.float64)[None, :] * np.tile(sizes, 2), mode
    canonical = np.asarray(CELEBA_FACE_BOX, dtype=np.float64)[None, :] * np.tile(sizes / CELEBA_ALIGNED_SIZE, 2)
    if mode == "celeba":
        return canonical, mode
    if landmarks is None or landmarks.shape[1] != 68:
        raise ValueError("wild.face_box: landmarks needs 68 landmarks in the table (landmark_provider: dlib68)")
    lm = np.asarray(landmarks, dtype=np.float64)
    lo, hi = lm.min(1), lm.max(1)
    boxes = np.concatenate([lo, hi - lo], 1)
    bad = ~np.isfinite(boxes).all(1) | (boxes[:, 2:] <= 0).any(1)
    boxes[bad] = canonical[bad]
    return boxes, mode


# ------------------------------------------------------------------------------------------------
# the tables' side (the datamodule decides when: FaceDataModule.setup)
# ------------------------------------------------------------------------------------------------
def wild_folder(cache_dir: str | os.PathLike | None, dataset: str, cfg: WildConfig) -> Path:
    from facebench.datamodules.preprocess import default_cache_dir

    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / "wild" / f"{dataset or 'dataset'}-{cfg.key()}"


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def _write_png(path: Path, canvas: np.ndarray) -> None:
    im = Image.fromarray(canvas[:, :, 0] if canvas.shape[2] == 1 else canvas)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def apply_wild(tables: dict[str, SampleTable], files: DatasetFiles, cfg: WildConfig) -> dict[str, Any]:
    """Replace every table's images by their composited canvases (in place); returns the cache
    folder, the canvases written / reused and the face-box mode per split (``report["wild"]``)."""
    from facebench.datamodules.image_files import load_image

    root = files.root
    folder = wild_folder(files.cache_dir, files.name, cfg)
    stats = {"folder": str(folder), "written": 0, "reused": 0, "face_box": {}}
    for split, tab in tables.items():
        if not len(tab):
            continue
        in_memory = tab.arrays is not None
        sizes = (np.array([[a.shape[1], a.shape[0]] for a in tab.arrays]) if in_memory
                 else np.array([_image_size(root / p) for p in tab.paths]))
        src_boxes, mode = source_face_boxes(sizes, tab.landmarks, cfg)
        stats["face_box"][split] = mode
        keys = [sample_key(p) for p in tab.paths]
        placements = [place(tuple(s), b, cfg, k) for s, b, k in zip(sizes, src_boxes, keys)]
        if in_memory:
            tab.arrays = np.stack([composite(a, pl, cfg, k) for a, pl, k in zip(tab.arrays, placements, keys)])
        else:
            new_paths = []
            for rel, box, pl, k in zip(tab.paths, src_boxes, placements, keys):
                src = root / rel
                st = os.stat(src)
                stamp = f"v{WILD_VERSION}|{rel}|{st.st_size}|{st.st_mtime_ns}|{np.round(box, 4).tolist()}"
                out = folder / f"{Path(rel).stem}-{hashlib.sha1(stamp.encode()).hexdigest()[:12]}.png"
                if out.is_file():
                    stats["reused"] += 1
                else:
                    _write_png(out, composite(load_image(src), pl, cfg, k))
                    stats["written"] += 1
                new_paths.append(str(out))
            tab.extra.setdefault(SOURCE_PATH, np.asarray(tab.paths, dtype=object))   # the ids of the predictions
            tab.paths = new_paths
        tab.boxes = np.stack([pl.box for pl in placements]).astype(np.float32)
        if tab.landmarks is not None:
            tab.landmarks = np.stack([pl.map_points(lm) for lm, pl in zip(tab.landmarks, placements)]).astype(np.float32)
    return stats
