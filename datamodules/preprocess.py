"""The preprocessing the papers use, as configuration, plus the on-disk per-image cache.

Datamodule argument (YAML)::

    preprocess: {face_detector: haar, align: haar_eyes, eye_distance: 0.36, global_contrast: true,
                 standardize_pixels: true}

* ``face_detector: haar``: Viola-Jones face detection (OpenCV's ``haarcascade_frontalface_default``
  from ``cv2.data.haarcascades``); the network sees the largest detected face scaled by
  ``face_margin`` (the whole image when no face is found, counted in the datamodule's ``report``). Semantic-features
  paper sec. 3.3, "Face Location Normalization", first bullet.
* ``align: haar_eyes | landmarks``: in-plane rotation that makes the line between the eye centres
  horizontal (eyes from OpenCV's ``haarcascade_eye`` inside the upper half of the face, or from the
  sample's landmarks: 68-point eye contours or CelebA's 5 points). Sec. 3.3, second bullet.
* ``eye_distance``: scale normalisation, the inter-ocular distance becomes this fraction of the
  output width; the eye midpoint sits at ``eye_height`` of the output height. Sec. 3.3, third bullet.
* ``global_contrast``: per image, subtract the mean of all pixel values and set the image norm to
  ``gcn_scale`` (100); ``standardize_pixels``: then subtract the per-location mean of the training
  split and divide by its standard deviation (sec. 3.3, "Global Contrast Normalization").
* ``subtract_mean: channel | image``: subtract the training split's mean (per channel, or the mean
  image) as MCNN does before its random 227x227 crops (MCNN sec. "Implementation Details"; the crop
  itself is ``transforms: {resize_to: 256, image_size: 227}`` + ``train_transforms: {random_crop: true}``).

The other preprocessing of the papers is already :class:`~facebench.datamodules.transforms.TransformConfig`:
48x48 grayscale (``image_size: 48, channels: 1``), LACNN's rotations by {-40,-20,20,40} degrees
(``rotation_choices``), MCNN's 10-pixel jitter on LFWA (``jitter: 10``).

Face and eye detection run once per image and are cached on disk (:class:`FileCache`, keyed by
file path and content: a file whose size or modification time changed is re-hashed and recomputed
when its bytes changed).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import cv2
import numpy as np
import torch

from facebench.core.config import config_from_value
from facebench.datamodules.table import DatasetFiles, SampleTable

#: Eye-contour indices of the iBUG 68-point scheme (image-left eye first when the face is upright).
EYE_68 = (tuple(range(36, 42)), tuple(range(42, 48)))


def default_cache_dir() -> Path:
    """``$FACEBENCH_CACHE`` or ``~/.cache/facebench``."""
    return Path(os.environ.get("FACEBENCH_CACHE") or Path.home() / ".cache" / "facebench").expanduser()


def sha1_file(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha1_array(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest()


class FileCache:
    """A per-image value cache in one SQLite file (safe for concurrent DDP ranks).

    Entries are keyed by ``(namespace, absolute path)`` and store the file's size, modification
    time and SHA-1. A lookup whose size and mtime match is a hit without reading the file; otherwise
    the file is hashed and the entry is a hit only when the bytes are unchanged ("keyed by file and
    content"). In-memory images (FER2013's CSV) use :meth:`array_key` (content only).
    """

    def __init__(self, directory: str | os.PathLike | None, namespace: str):
        self.dir = Path(directory).expanduser() if directory else default_cache_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self.path = self.dir / "per_image_cache.sqlite"
        self._db = sqlite3.connect(self.path, timeout=120)
        self._db.execute("CREATE TABLE IF NOT EXISTS entries (ns TEXT, key TEXT, size INTEGER, mtime INTEGER, "
                         "sha1 TEXT, value BLOB, PRIMARY KEY (ns, key))")
        self._pending: list[tuple] = []

    @staticmethod
    def array_key(a: np.ndarray) -> str:
        return "array:" + sha1_array(a)

    def get_many(self, keys: Iterable[str], check_content: bool = True) -> dict[str, Any]:
        """Valid cached values for ``keys`` (file paths or :meth:`array_key` strings)."""
        keys = list(keys)
        rows: dict[str, tuple] = {}
        for s in range(0, len(keys), 900):
            chunk = keys[s:s + 900]
            q = f"SELECT key, size, mtime, sha1, value FROM entries WHERE ns=? AND key IN ({','.join('?' * len(chunk))})"
            for key, size, mtime, sha, value in self._db.execute(q, [self.namespace, *chunk]):
                rows[key] = (size, mtime, sha, value)
        out: dict[str, Any] = {}
        for key, (size, mtime, sha, value) in rows.items():
            if key.startswith("array:"):
                out[key] = pickle.loads(value)
                continue
            try:
                st = os.stat(key)
            except OSError:
                continue
            if st.st_size == size and st.st_mtime_ns == mtime:
                out[key] = pickle.loads(value)
            elif check_content and sha and st.st_size == size and sha1_file(key) == sha:
                out[key] = pickle.loads(value)
                self._pending.append((self.namespace, key, st.st_size, st.st_mtime_ns, sha, value))
        return out

    def put(self, key: str, value: Any, with_content: bool = True) -> None:
        blob = pickle.dumps(value, protocol=4)
        if key.startswith("array:"):
            self._pending.append((self.namespace, key, -1, -1, key[6:], blob))
        else:
            st = os.stat(key)
            self._pending.append((self.namespace, key, st.st_size, st.st_mtime_ns,
                                  sha1_file(key) if with_content else "", blob))
        if len(self._pending) >= 2000:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)", self._pending)
            self._pending = []

    def close(self) -> None:
        self.flush()
        self._db.close()

    def __enter__(self) -> "FileCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def cached_per_image(cache: FileCache, keys: list[str], compute: Callable[[int], Any]) -> list[Any]:
    """``compute(i)`` for every key missing from ``cache`` (stored), cached values for the rest."""
    hits = cache.get_many(keys)
    out = []
    for i, key in enumerate(keys):
        if key in hits:
            out.append(hits[key])
            continue
        value = compute(i)
        cache.put(key, value)
        out.append(value)
    cache.flush()
    return out


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class PreprocessConfig:
    """YAML ``preprocess:`` of a datamodule (see the module docstring)."""

    face_detector: str | None = None          # None | "haar"
    face_margin: float = 1.0                  # scale of the detected face box
    align: str | None = None                  # None | "haar_eyes" | "landmarks"
    eye_distance: float | None = None         # inter-ocular distance / output width
    eye_height: float = 0.4                   # eye midpoint height / output height (with eye_distance)
    min_face_fraction: float = 0.2            # smallest face (fraction of the shorter image side) searched
    global_contrast: bool = False
    gcn_scale: float = 100.0
    standardize_pixels: bool = False
    subtract_mean: str | None = None          # None | "channel" | "image"
    stats_samples: int = 10000                # training images used for the statistics (seeded subset)

    @classmethod
    def from_value(cls, value: "PreprocessConfig | dict[str, Any] | None") -> "PreprocessConfig":

        return config_from_value(cls, value, "preprocess")

    def validate(self) -> None:
        if self.face_detector not in (None, "haar"):
            raise ValueError(f"preprocess.face_detector must be null or 'haar', got {self.face_detector!r}")
        if self.align not in (None, "haar_eyes", "landmarks"):
            raise ValueError(f"preprocess.align must be null, 'haar_eyes' or 'landmarks', got {self.align!r}")
        if self.subtract_mean not in (None, "channel", "image"):
            raise ValueError(f"preprocess.subtract_mean must be null, 'channel' or 'image', got {self.subtract_mean!r}")
        if self.eye_distance is not None and not 0 < self.eye_distance < 1:
            raise ValueError(f"preprocess.eye_distance must be in (0, 1), got {self.eye_distance}")
        if self.standardize_pixels and self.subtract_mean:
            raise ValueError("preprocess: standardize_pixels already subtracts the training mean; drop subtract_mean")

    @property
    def geometric(self) -> bool:
        return bool(self.face_detector or self.align or self.eye_distance)

    @property
    def photometric(self) -> bool:
        return bool(self.global_contrast or self.standardize_pixels or self.subtract_mean)

    def detection_key(self) -> str:
        return f"haar-v1-{self.min_face_fraction:g}-{self.align == 'haar_eyes'}"


# ------------------------------------------------------------------------------------------------
# Viola-Jones face and eye detection
# ------------------------------------------------------------------------------------------------
_CASCADES: dict[str, Any] = {}


def haar_cascade(name: str) -> Any:
    """An OpenCV Haar cascade from ``cv2.data.haarcascades`` (loaded once per process)."""
    if name not in _CASCADES:
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError("this OpenCV build has no CascadeClassifier (OpenCV 5 removed the Haar cascades); "
                               "install opencv-python-headless<5 as pyproject.toml requires")
        path = os.path.join(cv2.data.haarcascades, name)
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise FileNotFoundError(f"{path}: OpenCV Haar cascade missing or unreadable")
        _CASCADES[name] = clf
    return _CASCADES[name]


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image.reshape(image.shape[0], image.shape[1]))


def detect_face_and_eyes(image: np.ndarray, min_face_fraction: float = 0.2, eyes: bool = True
                         ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Largest Viola-Jones face ``(x, y, w, h)`` and, inside its upper half, the two eye centres
    ``[[x, y] image-left, [x, y] image-right]`` (``None`` when not found)."""
    gray = cv2.equalizeHist(to_gray_u8(image))
    h, w = gray.shape
    side = max(int(min(h, w) * min_face_fraction), 20)
    faces = haar_cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=4, minSize=(side, side))
    if len(faces) == 0:
        return None, None
    x, y, fw, fh = max((tuple(int(v) for v in f) for f in faces), key=lambda f: f[2] * f[3])
    box = np.array([x, y, fw, fh], dtype=np.float32)
    if not eyes:
        return box, None
    top = gray[y:y + fh // 2 + fh // 10, x:x + fw]
    found = haar_cascade("haarcascade_eye.xml").detectMultiScale(top, scaleFactor=1.1, minNeighbors=3,
                                                                  minSize=(max(fw // 10, 5), max(fw // 10, 5)))
    centres = [(x + ex + ew / 2.0, y + ey + eh / 2.0, ew * eh) for ex, ey, ew, eh in found]
    left = [c for c in centres if c[0] < x + fw / 2.0]
    right = [c for c in centres if c[0] >= x + fw / 2.0]
    if not left or not right:
        return box, None
    l, r = max(left, key=lambda c: c[2]), max(right, key=lambda c: c[2])
    return box, np.array([[l[0], l[1]], [r[0], r[1]]], dtype=np.float32)


def eyes_from_landmarks(landmarks: np.ndarray) -> np.ndarray | None:
    """Eye centres (image-left first) from 68-point or CelebA 5-point landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if not np.isfinite(lm).all():
        return None
    if len(lm) == 68:
        eyes = np.stack([lm[list(EYE_68[0])].mean(0), lm[list(EYE_68[1])].mean(0)])
    elif len(lm) == 5:
        eyes = lm[:2]
    else:
        return None
    return eyes[np.argsort(eyes[:, 0])].astype(np.float32)


def alignment(image_shape: tuple[int, int], face: np.ndarray | None, eyes: np.ndarray | None,
              cfg: PreprocessConfig) -> tuple[np.ndarray, float]:
    """Crop box ``(x, y, w, h)`` and in-plane rotation (degrees) for one image.

    Rotation: the eye line becomes horizontal. Scale: with ``eye_distance`` the square crop's side is
    ``inter-ocular distance / eye_distance`` and the eye midpoint lands at ``eye_height`` of it;
    otherwise the face box (times ``face_margin``) or the whole image is the crop."""
    h, w = image_shape
    angle = 0.0
    if face is not None:
        cx, cy = face[0] + face[2] / 2.0, face[1] + face[3] / 2.0
        side = max(face[2], face[3]) * cfg.face_margin
    else:
        cx, cy, side = w / 2.0, h / 2.0, float(min(w, h))
    if eyes is not None and cfg.align:
        d = eyes[1] - eyes[0]
        angle = math.degrees(math.atan2(float(d[1]), float(d[0])))
        if cfg.eye_distance:
            side = float(np.hypot(*d)) / cfg.eye_distance
            mid = eyes.mean(0)
            a = math.radians(angle)
            down = np.array([-math.sin(a), math.cos(a)])   # the face's "down" direction in the image
            cx, cy = mid + down * (0.5 - cfg.eye_height) * side
    return np.array([cx - side / 2.0, cy - side / 2.0, side, side], dtype=np.float32), float(angle)


# ------------------------------------------------------------------------------------------------
# photometric normalisation
# ------------------------------------------------------------------------------------------------
def global_contrast_normalize(x: torch.Tensor, scale: float = 100.0, eps: float = 1e-8) -> torch.Tensor:
    """Subtract the image's mean over all pixels and set its L2 norm to ``scale`` (sec. 3.3)."""
    x = x - x.mean()
    return x * (scale / x.norm().clamp(min=eps))


@dataclass
class PixelStatistics:
    """Training-split statistics at the network input: ``mean`` / ``std`` ``[C, H, W]``."""

    mean: torch.Tensor
    std: torch.Tensor


class Normalizer:
    """The photometric part of :class:`PreprocessConfig`, applied to an image tensor in [0, 1]."""

    def __init__(self, cfg: PreprocessConfig, stats: PixelStatistics | None):
        self.cfg, self.stats = cfg, stats

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.global_contrast:
            x = global_contrast_normalize(x, self.cfg.gcn_scale)
        if self.stats is not None:
            if self.cfg.standardize_pixels:
                x = (x - self.stats.mean) / self.stats.std.clamp(min=1e-6)
            elif self.cfg.subtract_mean == "image":
                x = x - self.stats.mean
            elif self.cfg.subtract_mean == "channel":
                x = x - self.stats.mean.mean(dim=(1, 2), keepdim=True)
        return x


def pixel_statistics(images: Iterable[torch.Tensor]) -> PixelStatistics:
    """Per-location mean and standard deviation of a stream of ``[C, H, W]`` tensors (float64 sums)."""
    total = sq = None
    n = 0
    for x in images:
        x = x.double()
        total = x.clone() if total is None else total + x
        sq = x * x if sq is None else sq + x * x
        n += 1
    if n == 0 or total is None or sq is None:
        raise ValueError("pixel statistics need at least one training image")
    mean = total / n
    var = (sq / n - mean * mean).clamp(min=0)
    return PixelStatistics(mean=mean.float(), std=var.sqrt().float())


# ------------------------------------------------------------------------------------------------
# per-dataset passes (called from FaceDataModule.setup)
# ------------------------------------------------------------------------------------------------
def table_keys(table: Any, root: Path) -> list[str]:
    """Cache keys of a table's images: absolute paths, or content keys of in-memory arrays."""
    if table.arrays is not None:
        return [FileCache.array_key(a) for a in table.arrays]
    return [str(root / p) for p in table.paths]


def table_image(table: Any, keys: list[str], i: int) -> np.ndarray:
    from facebench.datamodules.image_files import load_image

    return table.arrays[i] if table.arrays is not None else load_image(keys[i])


def compute_alignment(tables: dict[str, SampleTable], files: DatasetFiles, cfg: PreprocessConfig) -> dict[str, int]:
    """Fill ``extra["align_box"]`` / ``extra["align_angle"]`` of every table from ``cfg`` (face
    detection and eye positions are cached per image); returns the counts of images, faces and
    eyes not found (the datamodule's ``report["preprocess"]``)."""
    from PIL import Image

    from facebench.datamodules.formats import DatasetFormatError

    root = files.root
    detect = cfg.face_detector == "haar" or cfg.align == "haar_eyes"
    counts = {"images": 0, "faces_not_found": 0, "eyes_not_found": 0}

    with FileCache(files.cache_dir, "detect-" + cfg.detection_key()) as cache:
        for tab in tables.values():
            keys = table_keys(tab, root)

            def run(i: int, tab: Any = tab, keys: list[str] = keys) -> dict[str, Any]:
                try:
                    img = table_image(tab, keys, i)
                except (DatasetFormatError, FileNotFoundError):
                    return {"shape": None, "face": None, "eyes": None}
                face, eyes = detect_face_and_eyes(img, cfg.min_face_fraction, eyes=cfg.align == "haar_eyes")
                return {"shape": img.shape[:2], "face": face, "eyes": eyes}

            if detect:
                found = cached_per_image(cache, keys, run)
            elif tab.arrays is not None:
                found = [{"shape": a.shape[:2], "face": None, "eyes": None} for a in tab.arrays]
            else:
                found = []
                for k in keys:
                    with Image.open(k) as im:
                        found.append({"shape": im.size[::-1], "face": None, "eyes": None})
            if cfg.align == "landmarks":
                if tab.landmarks is None:
                    raise ValueError(f"{files.name}: preprocess.align 'landmarks' needs landmarks; this dataset has "
                                     f"no landmark files: set landmark_provider: dlib68")
                for f, lm in zip(found, tab.landmarks):
                    f["eyes"] = eyes_from_landmarks(lm)
            boxes = np.zeros((len(tab), 4), dtype=np.float32)
            angles = np.zeros(len(tab), dtype=np.float32)
            for i, f in enumerate(found):
                if f["shape"] is None:
                    boxes[i] = (0, 0, 1, 1)
                    continue
                counts["images"] += 1
                counts["faces_not_found"] += int(cfg.face_detector is not None and f["face"] is None)
                counts["eyes_not_found"] += int(cfg.align is not None and f["eyes"] is None)
                boxes[i], angles[i] = alignment(tuple(f["shape"]), f["face"] if cfg.face_detector else None, f["eyes"], cfg)
            tab.extra["align_box"], tab.extra["align_angle"] = boxes, angles
    return counts
