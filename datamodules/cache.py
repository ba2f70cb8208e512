"""Stage 1 of the image pipeline (decode + deterministic pre-resize) and its on-disk cache.

Every image goes through two stages, with or without the cache:

1. **Stored geometry** (:func:`prescale`, deterministic, no randomness): decode, convert to the
   network's channels, keep the region the network can see and shrink it with ``cv2.INTER_AREA`` so
   that its shorter side (or, when a crop box frames the face, the crop box's side) becomes
   ``(resize_to or image_size) * oversample`` pixels (never enlarged). :func:`plan_row` describes the
   result per image as ``[x0, y0, x1, y1, w, h]``: the source region ``[x0, x1) x [y0, y1)`` stored
   as ``w x h`` pixels; :func:`to_stored` maps source coordinates (landmarks, boxes, crop boxes)
   into stored ones exactly as the resize maps pixels (pixel-index convention, cell centres).
   Without a crop box the region is the whole image; with one (``crop: box``, detected / aligned
   faces) it is the square of ``context`` times the box side around the box centre, clipped to the
   image, so that a small face in a large in-the-wild photo is stored at the resolution it is used at.
2. **Per-sample warp** (:mod:`facebench.datamodules.transforms`): the one affine warp per image with its
   random crop / flip / rotation / jitter, applied to the stage-1 image (in the DataLoader workers,
   or batched on the accelerator by :mod:`facebench.datamodules.batch_augment`).

Because the uncached path runs the same :func:`prescale` per item that the cache builder runs once,
"the cache gives the same tensors as the uncached path" holds bitwise.

The cache (:class:`ImageCache`) stores the stage-1 images of one split as a single ``uint8
[N, H, W, C]`` ``.npy`` file, memory-mapped (``np.lib.format.open_memmap``), plus the per-image
plan (``.plan.npy``); images smaller than the ``H x W`` canvas (datasets of varied sizes) sit in
its top-left corner, zero-padded, their size recorded in the plan. Why this format rather than
LitData's optimised chunks or WebDataset tar shards: both are made for streaming from object
storage in sequential shards, and both store *encoded* samples (JPEG bytes) that every epoch
decodes again, which is the very cost the cache removes; both add a dependency. A memory-mapped
array needs nothing beyond numpy, gives O(1) random access (exact per-index augmentation seeds,
``EpochShardSampler``'s shuffles), is served from the OS page cache shared read-only by every
DataLoader worker, DDP rank and run of a suite on the machine, and costs one slice copy per sample.
The price is size: decoded pixels are ~10x larger than CelebA's JPEGs (64 px input: 80x98x3 =
24 KB per image, 4.8 GB for the 202,599 images; 227 px input: the full 178x218 decodes, 23 GB);
``image_cache: auto`` therefore checks the disk space first.

Key, sharing and invalidation: a cache file is named by the dataset, split, stored geometry and
a SHA-1 over (relative path, size, mtime_ns) of every source file plus the geometry parameters
and crop boxes; any change of a source file gives a new key (the stale file of the same sample
set is deleted once the new one is complete). It lives under ``<cache_dir>/image_cache``
(``$FACEBENCH_CACHE`` or ``~/.cache/facebench``, like :class:`~facebench.datamodules.preprocess.FileCache`),
so every run of a suite, and every suite, shares it. It is built once, under an exclusive
``fcntl`` lock (concurrent runs and DDP ranks wait for the first builder, then open its file), in
parallel over chunks of images (a process pool whose workers write disjoint slices of the memmap)
with a progress bar, into a temporary file renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from facebench.core.config import config_from_value

#: Bump when the stored pixels of a given plan change (new resize, new channel conversion...).
CACHE_VERSION = 1
#: Columns of a plan row.
PLAN_COLUMNS = ("x0", "y0", "x1", "y1", "width", "height")
#: Images per task of the parallel build.
BUILD_CHUNK = 256


# ------------------------------------------------------------------------------------------------
# stage 1: stored geometry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredGeometry:
    """What stage 1 keeps of every image.

    ``side``: pixels of the stored shorter side (or crop-box side); ``channels``: the network's;
    ``context``: stored region side / crop-box side when a crop box frames the face.
    """

    side: int
    channels: int
    context: float = 2.0

    @classmethod
    def for_input(cls, image_size: int, resize_to: int | None, channels: int, oversample: float = 1.25,
                  context: float = 2.0) -> "StoredGeometry":
        """Geometry for a network input: ``(resize_to or image_size) * oversample`` pixels."""
        if oversample < 1.0:
            raise ValueError(f"oversample must be >= 1 (stage 1 never stores less than the network sees), got {oversample}")
        if context < 1.0:
            raise ValueError(f"crop_context must be >= 1 (the stored region holds the crop box), got {context}")
        return cls(side=int(math.ceil((resize_to or image_size) * oversample)), channels=int(channels),
                   context=float(context))

    def describe(self) -> str:
        return f"side{self.side}-c{self.channels}-ctx{self.context:g}"


def plan_row(width: int, height: int, crop_box: Sequence[float] | None, geometry: StoredGeometry) -> np.ndarray:
    """``[x0, y0, x1, y1, w, h]`` (int32): the source region stage 1 keeps and its stored size."""
    x0, y0, x1, y1 = 0, 0, int(width), int(height)
    side = float(min(width, height))
    if crop_box is not None and np.all(np.isfinite(crop_box)):
        bx, by, bw, bh = (float(v) for v in crop_box)
        box_side = max(bw, bh)
        if box_side > 0:
            half = geometry.context * box_side / 2.0
            cx, cy = bx + bw / 2.0, by + bh / 2.0
            rx0, ry0 = max(0, math.floor(cx - half)), max(0, math.floor(cy - half))
            rx1, ry1 = min(int(width), math.ceil(cx + half)), min(int(height), math.ceil(cy + half))
            if rx1 > rx0 and ry1 > ry0:   # a box outside the image keeps the whole image
                x0, y0, x1, y1, side = rx0, ry0, rx1, ry1, box_side
    scale = min(1.0, geometry.side / max(side, 1e-6))
    w, h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    return np.array([x0, y0, x1, y1, w, h], dtype=np.int32)


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 (RGB) or HxWx1 (grayscale) with PIL; PIL's errors pass
    through (:func:`facebench.datamodules.base.load_image` turns them into clear dataset errors)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "I;16", "I"):
            return np.asarray(im.convert("L"))[:, :, None]
        return np.asarray(im.convert("RGB"))


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """``HxWxC`` uint8 with ``channels`` channels (RGB -> gray with OpenCV's weights, gray -> RGB by copy)."""
    if image.ndim == 2:
        image = image[:, :, None]
    c = image.shape[2]
    if c == channels:
        return image
    if channels == 1 and c == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, None]
    if channels == 3 and c == 1:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f"cannot convert a {c}-channel image to {channels} channels")


def prescale(image: np.ndarray, row: np.ndarray, channels: int) -> np.ndarray:
    """Stage 1 of one decoded image (``HxWxC`` uint8) per its :func:`plan_row`."""
    x0, y0, x1, y1, w, h = (int(v) for v in row)
    region = to_channels(image[y0:y1, x0:x1], channels)
    if (w, h) != (x1 - x0, y1 - y0):
        region = cv2.resize(np.ascontiguousarray(region), (w, h), interpolation=cv2.INTER_AREA)
        if region.ndim == 2:
            region = region[:, :, None]
    return np.ascontiguousarray(region)


def stored_affine(row: np.ndarray) -> np.ndarray:
    """2x3 matrix mapping source pixel coordinates to stored ones (what ``cv2.resize`` does to
    pixel centres: ``x' = (x - x0 + 0.5) * w / (x1 - x0) - 0.5``)."""
    x0, y0, x1, y1, w, h = (float(v) for v in row)
    sx, sy = w / max(x1 - x0, 1.0), h / max(y1 - y0, 1.0)
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]], dtype=np.float64)


def to_stored(row: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Source ``[..., 2]`` points in stored coordinates."""
    m = stored_affine(row)
    return np.asarray(points, dtype=np.float64) @ m[:, :2].T + m[:, 2]


def box_to_stored(row: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """A source ``(x, y, w, h)`` box in stored coordinates (the map is an axis-aligned scaling)."""
    x, y, bw, bh = (float(v) for v in box)
    (ax, ay), (bx, by) = to_stored(row, np.array([[x, y], [x + bw, y + bh]]))
    return np.array([ax, ay, bx - ax, by - ay], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class ImageCacheConfig:
    """YAML ``image_cache:`` of a datamodule: ``true``, ``false``, ``auto`` or a mapping of these fields.

    ``auto`` caches a split when it reads image files (not in-memory pixels), has at least
    ``min_images`` images and the estimated file fits in ``max_gb`` and in 80 % of the free disk
    space of the cache folder. ``workers``: build processes (default: all cores).
    """

    enabled: bool | str = False
    min_images: int = 1000
    max_gb: float = 200.0
    workers: int | None = None

    @classmethod
    def from_value(cls, value: "ImageCacheConfig | bool | str | dict[str, Any] | None") -> "ImageCacheConfig":

        if isinstance(value, (bool, str)):
            value = {"enabled": value}
        return config_from_value(cls, value, "image_cache")

    def validate(self) -> None:
        if self.enabled not in (True, False, "auto"):
            raise ValueError(f"image_cache must be true, false or 'auto', got {self.enabled!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"image_cache.workers must be >= 1, got {self.workers}")

    def wanted(self, n_images: int, file_backed: bool, estimated_bytes: int, directory: Path) -> tuple[bool, str]:
        """Whether to cache a split, and why (recorded in the datamodule's report)."""
        if not file_backed:
            return False, "images are held in memory"
        if self.enabled is False:
            return False, "image_cache is off"
        if self.enabled is True:
            return True, "image_cache is on"
        if n_images < self.min_images:
            return False, f"{n_images} images < image_cache.min_images {self.min_images}"
        gb = estimated_bytes / 1e9
        if gb > self.max_gb:
            return False, f"estimated {gb:.1f} GB > image_cache.max_gb {self.max_gb:g}"
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
        if estimated_bytes > 0.8 * free:
            return False, f"estimated {gb:.1f} GB > 80% of the {free / 1e9:.1f} GB free in {directory}"
        return True, f"auto: {n_images} images, about {gb:.2f} GB"


# ------------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------------
class StoredImages:
    """Read access to a built cache: ``image(i)`` is stage 1 of sample ``i``.

    The memmap is opened lazily in each process (DataLoader workers get the path, not the pixels)."""

    def __init__(self, pixels_path: Path, plan: np.ndarray):
        self.pixels_path, self.plan = Path(pixels_path), plan
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.plan)

    @property
    def pixels(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.load(self.pixels_path, mmap_mode="r")
        return self._pixels

    def usable(self, i: int) -> bool:
        return bool(self.plan[i, 4] > 0)

    def image(self, i: int) -> np.ndarray:
        """Stage-1 pixels of sample ``i`` (a copy, ``h x w x C``), without the canvas padding."""
        w, h = int(self.plan[i, 4]), int(self.plan[i, 5])
        return np.array(self.pixels[i, :h, :w])

    def canvas(self, i: int) -> np.ndarray:
        """Sample ``i`` on the whole zero-padded canvas (a copy, ``H x W x C``)."""
        return np.array(self.pixels[i])

    def __getstate__(self) -> dict[str, Any]:
        return {"pixels_path": self.pixels_path, "plan": self.plan, "_pixels": None}


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (blocks until the holder releases it)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class ImageCache:
    """The stage-1 cache of one split at one stored geometry (see the module docstring).

    Args:
        directory: the facebench cache folder (``cache_dir`` of the datamodule).
        dataset: the datamodule's registered name; ``split``: the split name.
        root: the dataset folder; ``paths``: the split's image paths relative to it.
        geometry: what stage 1 stores; ``crop_boxes``: ``[N, 4]`` per-image crop boxes (NaN rows
            for none) or ``None``.
    """

    def __init__(self, directory: str | os.PathLike | None, dataset: str, split: str, root: Path,
                 paths: Sequence[str], geometry: StoredGeometry, crop_boxes: np.ndarray | None = None):
        from facebench.datamodules.preprocess import default_cache_dir

        self.dir = (Path(directory).expanduser() if directory else default_cache_dir()) / "image_cache"
        self.dataset, self.split, self.root, self.paths = dataset or "dataset", split, Path(root), list(paths)
        self.geometry, self.crop_boxes = geometry, crop_boxes
        set_id, key = self._keys()
        self.prefix = f"{self.dataset}-{split}-{geometry.describe()}-{set_id[:10]}"
        self.pixels_path = self.dir / f"{self.prefix}-{key[:16]}.npy"
        self.plan_path = self.dir / f"{self.prefix}-{key[:16]}.plan.npy"

    def _keys(self) -> tuple[str, str]:
        """(id of the sample set and geometry, id of that plus every file's size and mtime)."""
        head = f"v{CACHE_VERSION}|{self.dataset}|{self.split}|{self.geometry}|"
        set_hash, key_hash = hashlib.sha1(head.encode()), hashlib.sha1(head.encode())
        if self.crop_boxes is not None:
            boxes = np.ascontiguousarray(self.crop_boxes, dtype=np.float32).tobytes()
            set_hash.update(boxes)
            key_hash.update(boxes)
        for rel in self.paths:
            try:
                st = os.stat(self.root / rel)
                stamp = f"{st.st_size}|{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            set_hash.update(f"{rel}\n".encode())
            key_hash.update(f"{rel}|{stamp}\n".encode())
        return set_hash.hexdigest(), key_hash.hexdigest()

    def estimated_bytes(self, first_image_shape: tuple[int, int] | None = None) -> int:
        """Size of the cache file, estimated from the geometry (and one image's shape when known)."""
        side = self.geometry.side
        if first_image_shape is not None and self.crop_boxes is None:
            h, w = first_image_shape
            scale = min(1.0, side / max(min(h, w), 1))
            hw = max(1, round(h * scale)) * max(1, round(w * scale))
        else:
            hw = int(math.ceil(side * (self.geometry.context if self.crop_boxes is not None else 1.25))) ** 2
        return len(self.paths) * hw * self.geometry.channels

    def exists(self) -> bool:
        return self.pixels_path.is_file() and self.plan_path.is_file()

    def open(self) -> StoredImages:
        plan = np.load(self.plan_path)
        if len(plan) != len(self.paths):
            raise ValueError(f"{self.plan_path}: {len(plan)} plan rows for {len(self.paths)} images; delete the file")
        return StoredImages(self.pixels_path, plan)

    def build(self, workers: int | None = None, progress: bool | None = None) -> StoredImages:
        """Build the cache unless another process did (waits on the lock), then open it."""
        with exclusive_lock(self.dir / f"{self.prefix}.lock"):
            if self.exists():
                return self.open()
            t0 = time.perf_counter()
            n = len(self.paths)
            files = [str(self.root / p) for p in self.paths]
            boxes = self.crop_boxes
            workers = max(1, min(workers or os.cpu_count() or 1, math.ceil(n / BUILD_CHUNK)))
            chunks = [(s, min(s + BUILD_CHUNK, n)) for s in range(0, n, BUILD_CHUNK)]
            show = sys.stderr.isatty() if progress is None else progress
            with _pool(workers) as pool:
                sizes = np.concatenate(_run(pool, _read_sizes, [(files[a:b],) for a, b in chunks],
                                            f"{self.dataset}/{self.split}: sizes", n, chunks, show)) if n else \
                    np.zeros((0, 2), np.int32)
                plan = np.zeros((n, 6), dtype=np.int32)
                for i, (w, h) in enumerate(sizes):
                    if w > 0:
                        plan[i] = plan_row(int(w), int(h), None if boxes is None else boxes[i], self.geometry)
                canvas = (max(int(plan[:, 5].max(initial=1)), 1), max(int(plan[:, 4].max(initial=1)), 1))
                tmp = self.pixels_path.with_name(f".{self.pixels_path.name}.tmp-{os.getpid()}")
                tmp_plan = self.plan_path.with_name(f".{self.plan_path.name}.tmp-{os.getpid()}")
                try:
                    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                   shape=(n, *canvas, self.geometry.channels))
                    del mm
                    failed = _run(pool, _fill_chunk, [(str(tmp), a, files[a:b], plan[a:b], self.geometry.channels)
                                                      for a, b in chunks],
                                  f"{self.dataset}/{self.split}: images", n, chunks, show)
                    for idx in (i for part in failed for i in part):
                        plan[idx, 4:] = 0   # decoding failed: read() raises, the dataset substitutes a blank
                    with open(tmp_plan, "wb") as fh:
                        np.save(fh, plan)
                    os.replace(tmp_plan, self.plan_path)
                    os.replace(tmp, self.pixels_path)
                finally:
                    tmp.unlink(missing_ok=True)
                    tmp_plan.unlink(missing_ok=True)
            self._remove_stale()
            if not show:
                print(f"[facebench] image cache: {n} {self.dataset}/{self.split} images at {canvas[1]}x{canvas[0]} "
                      f"in {time.perf_counter() - t0:.1f}s -> {self.pixels_path}", file=sys.stderr, flush=True)
            return self.open()

    def _remove_stale(self) -> None:
        """Delete caches of the same sample set and geometry built from older versions of the files."""
        for p in self.dir.glob(f"{self.prefix}-*.npy"):
            if p not in (self.pixels_path, self.plan_path):
                p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------
# build workers (module level: picklable for the process pool)
# ------------------------------------------------------------------------------------------------
def _pool(workers: int) -> Any:
    """A process pool safe to start from threaded / CUDA processes (``forkserver``, else ``spawn``);
    its processes import only this light module (numpy, OpenCV, PIL), not torch."""
    if workers <= 1:
        return contextlib.nullcontext(None)
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
    else:
        ctx = mp.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=cv2.setNumThreads, initargs=(1,))


def _run(pool: Any, fn: Any, tasks: list[tuple], desc: str, total: int, chunks: list[tuple[int, int]],
         show: bool) -> list[Any]:
    """``fn(*task)`` for every task (in the pool when there is one), results in task order, with a
    progress bar counting images."""
    from tqdm import tqdm

    results: list[Any] = [None] * len(tasks)
    with tqdm(total=total, desc=desc, unit="img", disable=not show, mininterval=1.0) as bar:
        if pool is None:
            for k, task in enumerate(tasks):
                results[k] = fn(*task)
                bar.update(chunks[k][1] - chunks[k][0])
        else:
            futures = {pool.submit(fn, *task): k for k, task in enumerate(tasks)}
            for fut in as_completed(futures):
                k = futures[fut]
                results[k] = fut.result()
                bar.update(chunks[k][1] - chunks[k][0])
    return results


def _read_sizes(files: list[str]) -> np.ndarray:
    """``[n, 2]`` (width, height) from the image headers; ``(0, 0)`` for unreadable files."""
    from PIL import Image

    out = np.zeros((len(files), 2), dtype=np.int32)
    for k, f in enumerate(files):
        try:
            with Image.open(f) as im:
                out[k] = im.size
        except Exception:  # noqa: BLE001  (recorded as unusable; the dataset substitutes a blank)
            pass
    return out


def _fill_chunk(pixels_path: str, start: int, files: list[str], plan: np.ndarray, channels: int) -> list[int]:
    """Decode, pre-resize and write images ``start..`` into the memmap; indices that failed."""
    mm = np.load(pixels_path, mmap_mode="r+")
    failed = []
    for k, (f, row) in enumerate(zip(files, plan)):
        if row[4] <= 0:
            failed.append(start + k)
            continue
        try:
            image = decode_image(f)
        except Exception:  # noqa: BLE001  (any decoding error: the sample is marked unusable)
            failed.append(start + k)
            continue
        if image.shape[1] < row[2] or image.shape[0] < row[3]:
            failed.append(start + k)   # the pixels are smaller than the header said
            continue
        out = prescale(image, row, channels)
        mm[start + k, :out.shape[0], :out.shape[1]] = out
    mm.flush()
    del mm
    return failed
