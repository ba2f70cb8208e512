"""Shared machinery of every facebench datamodule: the registry, the base ``Dataset`` returning
sample dicts and the base ``LightningDataModule`` with its loaders.

A concrete dataset file (``celeba.py``, ``lfwa.py``, ...) parses its files into a
:class:`SampleTable` per split and declares its :class:`~datamodules.core.tasks.TaskSpec`; everything
else (image loading, transforms, landmarks, loaders, inspection) lives here.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from datamodules.core.config import check_options, constructor_options
from datamodules.core.registry import Registry
from datamodules.cache import StoredGeometry, StoredImages, box_to_stored, decode_image, plan_row, prescale, to_stored
from datamodules.sampling import EpochShardSampler
from datamodules.splits import SplitConfig, assign_splits, split_indices, strata_of
from datamodules.core.tasks import MISSING, TaskSpec
from datamodules.transforms import FaceTransform, TransformConfig

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: TransformConfig fields of a method's defaults that frame or normalise the image rather than augment it:
#: :meth:`FaceDataModule.configure_input` applies them to evaluation too, so every split sees the same framing.
FRAMING_KEYS: frozenset[str] = frozenset({"resize_to", "mean", "std", "per_image_standardize", "border"})
#: Key of the single table a dataset without an official split returns from ``load_tables``.
UNSPLIT = "all"

# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def _load_all() -> None:
    import datamodules.all  # noqa: F401  (registers every datamodule)


DATAMODULES: Registry[type["FaceDataModule"]] = Registry("dataset", loader=_load_all, name_attribute="registered_name")
#: Class decorator: make a datamodule creatable by name from a suite config.
register_datamodule = DATAMODULES.register
datamodule_names = DATAMODULES.names
get_datamodule_class = DATAMODULES.get


def create_datamodule(name: str, **kwargs: Any) -> "FaceDataModule":
    return get_datamodule_class(name)(**kwargs)


class DatasetFormatError(ValueError):
    """A data file does not have the expected format: names the file, the line and the expectation."""

    def __init__(self, path: os.PathLike | str, line: int | None, message: str):
        self.path, self.line = Path(path), line
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


# ------------------------------------------------------------------------------------------------
# sample tables and datasets
# ------------------------------------------------------------------------------------------------
@dataclass
class SampleTable:
    """Everything known about the samples of one split, as aligned arrays.

    ``labels`` follows the task's label layout (``-1`` = missing). ``votes`` maps a target name to a
    ``[N, n_classes]`` rater-count array. ``boxes`` are (x, y, w, h) face boxes in source pixels.
    ``arrays`` holds in-memory images (``uint8 [N, H, W, C]``) for datasets stored as pixels
    (FER2013's CSV) instead of files.
    """

    paths: list[str]
    labels: np.ndarray
    identities: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    boxes: np.ndarray | None = None
    votes: dict[str, np.ndarray] = field(default_factory=dict)
    soft_labels: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx: Sequence[int] | np.ndarray) -> "SampleTable":
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return SampleTable(
            paths=[self.paths[i] for i in idx], labels=self.labels[idx], identities=pick(self.identities),
            landmarks=pick(self.landmarks), boxes=pick(self.boxes),
            votes={k: v[idx] for k, v in self.votes.items()}, soft_labels={k: v[idx] for k, v in self.soft_labels.items()},
            arrays=pick(self.arrays), extra={k: v[idx] for k, v in self.extra.items()},
        )

    @staticmethod
    def concat(tables: Sequence["SampleTable"]) -> "SampleTable":
        """Rows of several tables (same fields present in each), in order."""
        first = tables[0]

        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(t, name) for t in tables]
            if any(p is None for p in parts):
                if not all(p is None for p in parts):
                    raise ValueError(f"cannot concatenate tables: {name} is missing in some of them")
                return None
            return np.concatenate(parts)

        return SampleTable(
            paths=[p for t in tables for p in t.paths], labels=np.concatenate([t.labels for t in tables]),
            identities=cat("identities"), landmarks=cat("landmarks"), boxes=cat("boxes"),
            votes={k: np.concatenate([t.votes[k] for t in tables]) for k in first.votes},
            soft_labels={k: np.concatenate([t.soft_labels[k] for t in tables]) for k in first.soft_labels},
            arrays=cat("arrays"), extra={k: np.concatenate([t.extra[k] for t in tables]) for k in first.extra},
        )


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 (RGB) or HxWx1 (grayscale), with a clear error."""
    try:
        return decode_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(path, None, f"cannot decode image ({exc.__class__.__name__}: {exc})") from None


_JPEG_SOI, _PNG_SIGNATURE = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


def check_image_file(path: str | os.PathLike, full: bool = False) -> str | None:
    """Why an image file is unusable (``None`` when it is fine).

    The fast check (``full=False``, a few hundred bytes per file) parses the header with PIL and
    looks for the end marker of JPEG (``FFD9``) and PNG (``IEND``) files, which a truncated download
    lacks; a JPEG whose end marker is not near the end (trailing bytes after the image) is then
    decoded to be sure. ``full=True`` decodes every image."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return "file is missing"
    if size == 0:
        return "empty file"
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(size - 64, 0))
        tail = f.read(64)
    decode = full
    if head.startswith(_JPEG_SOI) and b"\xff\xd9" not in tail:
        decode = True
    if head.startswith(_PNG_SIGNATURE) and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk at the end)"
    try:
        with Image.open(path) as im:
            if im.size[0] < 1 or im.size[1] < 1:
                return f"image has size {im.size}"
            if decode:
                im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode image ({exc.__class__.__name__}: {exc})"
    return None


def crop_boxes(table: SampleTable, crop: str, box_margin: float) -> np.ndarray | None:
    """``[N, 4]`` (x, y, w, h) source region each sample's network input frames, or ``None`` (whole
    images): the per-image alignment (``extra["align_box"]``) when there is one, else with
    ``crop="box"`` the face box scaled by ``box_margin`` about its centre."""
    if "align_box" in table.extra:
        return np.asarray(table.extra["align_box"], dtype=np.float64)
    if crop == "box" and table.boxes is not None:
        b = np.asarray(table.boxes, dtype=np.float64)
        x, y, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        m = box_margin
        return np.stack([x + w / 2 - w * m / 2, y + h / 2 - h * m / 2, w * m, h * m], axis=1)
    return None


class FaceDataset(Dataset):
    """A split of a face dataset: returns ``{"image", "label", "identity", "index", ...}`` dicts.

    ``crop`` chooses what the network sees: ``"image"`` the whole (aligned) image, ``"box"`` the
    face box of each sample scaled by ``box_margin`` (in-the-wild images). A per-image alignment
    (``table.extra["align_box"]`` / ``["align_angle"]``, see :mod:`datamodules.preprocess`) takes
    precedence. ``normalizer`` maps the image tensor after the transform (global contrast
    normalisation, training-mean subtraction). An image that fails to decode raises in ``strict``
    mode; otherwise it is replaced by a blank image whose labels are all missing (``-1``, ignored by
    losses and metrics) and a warning names the file.

    Images go through two stages (:mod:`datamodules.cache`): stage 1 (:meth:`stage1`: decode and
    pre-resize to the stored ``geometry``, or read it from the image cache ``stored``), then the
    per-sample warp of ``transform``. ``output="stored"`` returns stage 1 only (``uint8`` image,
    coordinates in stored pixels, ``stored_size``, ``crop_box``, ``angle``, ``epoch``) for
    :class:`~datamodules.batch_augment.BatchAugment` to warp on the batch.
    """

    def __init__(self, table: SampleTable, root: Path, transform: FaceTransform, *, crop: str = "image",
                 box_margin: float = 1.0, augment_seed: int = 0, landmarks: bool = True, strict: bool = False,
                 normalizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 geometry: StoredGeometry | None = None, stored: StoredImages | None = None, output: str = "tensor"):
        self.table, self.root, self.transform, self.landmarks = table, Path(root), transform, landmarks
        self.crop, self.box_margin, self.augment_seed = crop, box_margin, augment_seed
        self.strict, self.normalizer = strict, normalizer
        cfg = transform.cfg
        self.geometry = geometry or StoredGeometry.for_input(cfg.image_size, cfg.resize_to, cfg.channels)
        if stored is not None and len(stored) != len(table):
            raise ValueError(f"image cache {stored.pixels_path} has {len(stored)} images, the split {len(table)}")
        if output not in ("tensor", "stored"):
            raise ValueError(f"output must be 'tensor' or 'stored', got {output!r}")
        self.stored, self.output = stored, output
        self.crop_boxes = crop_boxes(table, crop, box_margin)

    def __len__(self) -> int:
        return len(self.table)

    def read(self, i: int) -> np.ndarray:
        """The decoded source image (``HxWxC`` uint8)."""
        if self.table.arrays is not None:
            return self.table.arrays[i]
        return load_image(self.root / self.table.paths[i])

    def stage1(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 of sample ``i`` (see :mod:`datamodules.cache`): the stored image and its plan row,
        from the image cache when there is one, else decoded and pre-resized now (same pixels)."""
        if self.stored is not None:
            if not self.stored.usable(i):
                raise DatasetFormatError(self.root / self.table.paths[i], None,
                                         "could not be decoded when the image cache was built")
            return self.stored.image(i), self.stored.plan[i]
        image = self.read(i)
        row = plan_row(image.shape[1], image.shape[0], None if self.crop_boxes is None else self.crop_boxes[i],
                       self.geometry)
        return prescale(image, row, self.geometry.channels), row

    def __getitem__(self, key: int) -> dict[str, Any]:
        """``key`` is a sample index, or ``epoch * len(self) + index`` from :class:`EpochShardSampler`:
        training augmentation is drawn from (augment_seed, epoch, index) only."""
        t = self.table
        epoch, i = divmod(int(key), len(t))
        try:
            (image, row), usable = self.stage1(i), True
        except (DatasetFormatError, FileNotFoundError) as exc:
            if self.strict:
                raise
            warnings.warn(f"{exc}; using a blank image with all labels missing instead", stacklevel=2)
            size = self.transform.cfg.image_size
            image, usable = np.zeros((size, size, self.geometry.channels), dtype=np.uint8), False
            row = np.array([0, 0, size, size, size, size])
        box = t.boxes[i] if t.boxes is not None else None
        crop_box = self.crop_boxes[i] if self.crop_boxes is not None and (usable or "align_box" not in t.extra) else None
        angle = float(t.extra["align_angle"][i]) if "align_box" in t.extra and usable else 0.0
        lm = t.landmarks[i] if t.landmarks is not None and self.landmarks else None
        # landmarks and boxes follow the pixels into stage-1 coordinates
        lm = to_stored(row, lm) if lm is not None else None
        box = box_to_stored(row, box) if box is not None else None
        crop_box = box_to_stored(row, crop_box) if crop_box is not None and np.isfinite(crop_box).all() else None
        if self.output == "stored":   # stage 2 runs on the batch (datamodules.batch_augment)
            sample = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                      "stored_size": torch.tensor([image.shape[1], image.shape[0]], dtype=torch.long),
                      "crop_box": torch.tensor(crop_box if crop_box is not None else [float("nan")] * 4, dtype=torch.float64),
                      "angle": torch.tensor(angle, dtype=torch.float64), "epoch": torch.tensor(epoch, dtype=torch.long)}
            if lm is not None:
                sample["landmarks"] = torch.from_numpy(lm.astype(np.float32))
            if box is not None:
                sample["box"] = torch.from_numpy(box.astype(np.float32))
        else:
            rng = np.random.default_rng([self.augment_seed, epoch, i]) if self.transform.train else None
            sample = self.transform(image, landmarks=lm, box=box, rng=rng, crop_box=crop_box, angle=angle)
            if self.normalizer is not None:
                sample["image"] = self.normalizer(sample["image"])
        labels = np.asarray(t.labels[i], dtype=np.int64)
        sample["label"] = torch.from_numpy(labels if usable else np.full_like(labels, MISSING))
        sample["index"] = torch.tensor(i, dtype=torch.long)
        sample["identity"] = torch.tensor(int(t.identities[i]) if t.identities is not None else -1, dtype=torch.long)
        if t.votes:
            sample["votes"] = {k: torch.from_numpy(np.asarray(v[i], dtype=np.int64) * usable) for k, v in t.votes.items()}
        if t.soft_labels:
            sample["soft_label"] = {k: torch.from_numpy(np.asarray(v[i], dtype=np.float32) * usable)
                                    for k, v in t.soft_labels.items()}
        return sample


# ------------------------------------------------------------------------------------------------
# datamodule
# ------------------------------------------------------------------------------------------------
class FaceDataModule(L.LightningDataModule):
    """Base datamodule. Subclasses implement :meth:`load_tables` and :attr:`task`.

    Arguments shared by all datasets (all settable from a suite YAML):

    * ``root``: dataset folder; ``batch_size``, ``num_workers`` (``None``: ``min(4, cpu count)``);
    * ``image_size``, ``channels``: network input (usually filled in from the method's input spec);
    * ``transforms`` / ``train_transforms``: :class:`TransformConfig` fields for every split / only
      for training (training augmentation is off unless configured);
    * ``attributes``: keep only these targets; ``max_samples``: cap per split (an int, or a dict
      split -> int) taking a seeded random subset, for CPU-sized runs;
    * ``crop``: ``"image"`` or ``"box"`` (crop the face box when the dataset has boxes);
    * ``landmarks``: return landmarks in samples when the dataset has them;
    * ``seed``: for derived splits and subsets (same seed, same split on every machine);
    * ``split``: :class:`~datamodules.splits.SplitConfig` fields, used by datasets without an
      official split (``load_tables`` returns ``{UNSPLIT: table}``), to carve ``val`` out of an
      official train split that has none, or to re-split (``override_official``);
    * ``verify_images``: ``"header"`` (default: a fast header / end-marker check, cached on disk by
      path, size and mtime), ``"full"`` (decode every image) or ``"none"``; unusable images are
      skipped and listed in ``report["skipped"]`` (``strict``: a :class:`DatasetFormatError` naming
      the file);
    * ``landmark_provider``: fill ``SampleTable.landmarks`` (``"dataset"``, ``"dlib68"`` or
      ``{name: dlib68, detector: image}``, see :mod:`datamodules.landmarks`);
    * ``preprocess``: :class:`~datamodules.preprocess.PreprocessConfig` fields (face detection,
      eye alignment, global contrast normalisation, training-mean subtraction);
    * ``cache_dir``: where per-image results are cached (default ``$FACEBENCH_CACHE`` or
      ``~/.cache/facebench``).
    * ``image_cache``: ``true`` / ``false`` (default) / ``auto`` or a mapping of
      :class:`~datamodules.cache.ImageCacheConfig` fields: keep the stage-1 images of each split in
      a memory-mapped array under ``cache_dir`` (built once by the training / evaluation loaders,
      shared by every run); ``oversample``: stage 1 stores ``(resize_to or image_size) *
      oversample`` pixels on the shorter side (or crop-box side), never more than the source;
      ``crop_context``: stored region / crop box side (see :mod:`datamodules.cache`);
    * ``augment_on``: where the training warp and augmentation run: ``"worker"`` (DataLoader
      workers, OpenCV), ``"batch"`` (on the whole batch after it reached the device,
      :mod:`datamodules.batch_augment`) or ``"auto"`` (default: ``batch`` when training on CUDA).
    """

    registered_name: ClassVar[str] = ""
    #: Landmarks available from the files (e.g. CelebA's 5 points) -> number of points, else 0.
    has_identities: ClassVar[bool] = False
    #: ``split`` defaults of datasets without an official split (SplitConfig fields).
    default_split: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: str | os.PathLike | None = None, *, batch_size: int = 64, num_workers: int | None = None,
                 image_size: int = 64, channels: int = 3, transforms: dict | None = None,
                 train_transforms: dict | None = None, attributes: Sequence[str] | None = None,
                 max_samples: int | dict[str, int] | None = None, crop: str = "image", box_margin: float = 1.0,
                 landmarks: bool = True, seed: int = 0, pin_memory: bool | None = None,
                 persistent_workers: bool = True, drop_last: bool = False, strict: bool = False,
                 split: dict[str, Any] | None = None, verify_images: str = "header",
                 landmark_provider: str | dict[str, Any] | None = None, preprocess: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 image_cache: bool | str | dict[str, Any] = False, oversample: float = 1.25, crop_context: float = 2.0,
                 augment_on: str = "auto"):
        super().__init__()
        from datamodules.preprocess import PreprocessConfig

        if verify_images not in ("header", "full", "none"):
            raise ValueError(f"verify_images must be 'header', 'full' or 'none', got {verify_images!r}")
        self.split_cfg = SplitConfig.from_value(split, SplitConfig.from_value(dict(self.default_split)))
        self.verify_images, self.landmark_provider, self.cache_dir = verify_images, landmark_provider, cache_dir
        self.preprocess_cfg = PreprocessConfig.from_value(preprocess)
        self._pixel_stats: dict[tuple, Any] = {}
        self.root = Path(root).expanduser() if root is not None else None
        self.batch_size, self.seed, self.strict = batch_size, seed, strict
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.attributes = list(attributes) if attributes else None
        self.max_samples = max_samples
        self.crop, self.box_margin, self.want_landmarks = crop, box_margin, landmarks
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers, self.drop_last = persistent_workers, drop_last
        valid = {f.name for f in fields(TransformConfig)}
        for key in list(transforms or {}) + list(train_transforms or {}):
            if key not in valid:
                raise ValueError(f"unknown transform option {key!r}; allowed: {', '.join(sorted(valid))}")
        base = {"image_size": image_size, "channels": channels, **(transforms or {})}
        self._explicit_train_keys = set(transforms or {}) | set(train_transforms or {})
        self.eval_cfg = TransformConfig(**base)
        self.train_cfg = TransformConfig(**{**base, **(train_transforms or {})})
        self.augment_seed = seed   # the runner sets the run's seed here (data order, augmentation)
        from datamodules.cache import ImageCacheConfig

        if augment_on not in ("worker", "batch", "auto"):
            raise ValueError(f"augment_on must be 'worker', 'batch' or 'auto', got {augment_on!r}")
        self.image_cache_cfg = ImageCacheConfig.from_value(image_cache)
        self.oversample, self.crop_context, self.augment_on = float(oversample), float(crop_context), augment_on
        StoredGeometry.for_input(image_size, None, channels, self.oversample, self.crop_context)   # validates them
        self._image_caches: dict[tuple[str, StoredGeometry], Any] = {}
        self._stored: dict[tuple[str, StoredGeometry], StoredImages | None] = {}
        self._batch_augment: Any = None
        self.tables: dict[str, SampleTable] = {}
        self._task: TaskSpec | None = None
        self.report: dict[str, Any] = {}

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        check_options(f"dataset {cls.registered_name!r}", cfg, constructor_options(cls, FaceDataModule))

    # -- to implement ------------------------------------------------------------------------------
    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        """Parse the dataset's files: its task and one table per split."""
        raise NotImplementedError

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        self.report.setdefault("skipped", [])
        task, tables = self.load_tables()
        tables = self.apply_split(task, tables)
        if self.attributes:
            keep = self.attributes
            missing = [a for a in keep if a not in task.names]
            if missing:
                raise ValueError(f"{self.registered_name}: unknown attribute(s) {missing}; available: {', '.join(task.names)}")
            cols = [c for n in keep for c in range(task.label_slices[task.names.index(n)].start,
                                                   task.label_slices[task.names.index(n)].stop)]
            for tab in tables.values():
                tab.labels = tab.labels[:, cols]
                tab.votes = {k: v for k, v in tab.votes.items() if k in keep}
                tab.soft_labels = {k: v for k, v in tab.soft_labels.items() if k in keep}
            task = task.subset(keep)
        if self.max_samples:
            for split, tab in list(tables.items()):
                cap = self.max_samples.get(split) if isinstance(self.max_samples, dict) else self.max_samples
                if cap and len(tab) > cap:
                    rng = np.random.default_rng([self.seed, SPLITS.index(split) if split in SPLITS else 9])
                    tables[split] = tab.take(np.sort(rng.choice(len(tab), size=cap, replace=False)))
        self.verify_files(tables)
        self._task, self.tables = task, tables
        if self.landmark_provider:
            from datamodules.landmarks import fill_landmarks

            fill_landmarks(self, self.landmark_provider)
        if self.preprocess_cfg.geometric:
            from datamodules.preprocess import compute_alignment

            compute_alignment(self)

    # -- splits, verification ------------------------------------------------------------------------
    def apply_split(self, task: TaskSpec, tables: dict[str, SampleTable]) -> dict[str, SampleTable]:
        """Official splits as loaded; derived ones per :attr:`split_cfg` (see :mod:`datamodules.splits`)."""
        cfg = self.split_cfg
        if UNSPLIT in tables or cfg.override_official:
            whole = tables[UNSPLIT] if list(tables) == [UNSPLIT] else SampleTable.concat(list(tables.values()))
            codes = self.derive_split(task, whole, cfg.fractions)
            self.report["split"] = {"kind": "derived", **dataclasses.asdict(cfg)}
            return {name: whole.take(idx) for name, idx in split_indices(codes).items()}
        if "val" not in tables and "train" in tables and cfg.val_from_train > 0:
            train = tables["train"]
            codes = self.derive_split(task, train, (1.0 - cfg.val_from_train, cfg.val_from_train, 0.0))
            parts = split_indices(codes)
            out = {"train": train.take(parts.get("train", [])), "val": train.take(parts.get("val", []))}
            out.update({k: v for k, v in tables.items() if k != "train"})
            self.report["split"] = {"kind": "official", "val_from_train": cfg.val_from_train}
            return out
        self.report["split"] = {"kind": "official"}
        return tables

    def derive_split(self, task: TaskSpec, table: SampleTable, fractions: Sequence[float]) -> np.ndarray:
        """Split codes (0 train, 1 val, 2 test): stratified on ``split.stratify``, identity-disjoint
        when ``split.by_identity`` and identities are known."""
        cfg = self.split_cfg
        strata = None
        if cfg.stratify:
            names = list(task.names) if cfg.stratify == "all" else (
                [cfg.stratify] if isinstance(cfg.stratify, str) else list(cfg.stratify))
            cols = []
            for n in names:
                if n not in task.names:
                    raise ValueError(f"{self.registered_name}: split.stratify names {n!r}; targets: {', '.join(task.names)}")
                sl = task.label_slices[task.names.index(n)]
                cols += list(range(sl.start, sl.stop))
            strata = strata_of(table.labels[:, cols])
        groups = None
        if cfg.by_identity and table.identities is not None:
            ids = np.asarray(table.identities, dtype=np.int64)
            groups = np.where(ids >= 0, ids, ids.max(initial=0) + 1 + np.arange(len(ids)))
        seed = self.seed if cfg.seed is None else int(cfg.seed)
        return assign_splits(len(table), fractions, seed, strata=strata, groups=groups)

    def skip(self, item: str, reason: str) -> None:
        """Record a skipped file or row (``strict``: raise instead)."""
        if self.strict:
            raise DatasetFormatError(item, None, reason)
        self.report.setdefault("skipped", []).append(f"{item}: {reason}")

    def verify_files(self, tables: dict[str, SampleTable]) -> None:
        """Drop unusable image files from ``tables`` (see :func:`check_image_file`); results are
        cached by (path, size, mtime) so that a second setup of 200k images only stats them."""
        if self.verify_images == "none":
            return
        from datamodules.preprocess import FileCache

        root = (self.root or Path(".")).absolute()
        full = self.verify_images == "full"
        n_bad = 0
        with FileCache(self.cache_dir, f"verify-{self.verify_images}-v1") as cache:
            for split, tab in list(tables.items()):
                if tab.arrays is not None or not len(tab):
                    continue
                keys = [str(root / p) for p in tab.paths]
                known = cache.get_many(keys, check_content=False)
                bad = []
                for i, key in enumerate(keys):
                    if key in known:
                        reason = known[key]
                    else:
                        reason = check_image_file(key, full=full)
                        if reason != "file is missing":
                            cache.put(key, reason, with_content=False)
                    if reason:
                        self.skip(key, reason)
                        bad.append(i)
                if bad:
                    n_bad += len(bad)
                    tables[split] = tab.take(np.setdiff1d(np.arange(len(tab)), bad))
        if n_bad:
            warnings.warn(f"{self.registered_name}: skipped {n_bad} unusable image file(s); see dm.report['skipped']",
                          stacklevel=2)

    @property
    def task(self) -> TaskSpec:
        if self._task is None:
            self.setup()
        assert self._task is not None
        return self._task

    def dataset(self, split: str, train: bool | None = None, output: str = "tensor") -> FaceDataset:
        self.setup()
        if split not in self.tables:
            raise ValueError(f"{self.registered_name} has no {split!r} split; splits: {', '.join(self.tables)}")
        train = (split == "train") if train is None else train
        cfg, normalizer = self.train_cfg if train else self.eval_cfg, None
        if self.preprocess_cfg.photometric:
            from datamodules.preprocess import Normalizer

            cfg = self._unnormalized(cfg)
            normalizer = Normalizer(self.preprocess_cfg, self.pixel_statistics())
        transform = FaceTransform(cfg, train=train)
        geometry = self.stored_geometry(cfg)
        return FaceDataset(self.tables[split], self.root or Path("."), transform, crop=self.crop,
                           box_margin=self.box_margin, augment_seed=self.augment_seed,
                           landmarks=self.want_landmarks, strict=self.strict, normalizer=normalizer,
                           geometry=geometry, stored=self.stored_images(split, geometry), output=output)

    # -- stage 1 and its cache -------------------------------------------------------------------------
    def stored_geometry(self, cfg: TransformConfig) -> StoredGeometry:
        """What stage 1 keeps of each image for a transform config (see :mod:`datamodules.cache`)."""
        return StoredGeometry.for_input(cfg.image_size, cfg.resize_to, cfg.channels, self.oversample, self.crop_context)

    def stored_images(self, split: str, geometry: StoredGeometry, build: bool = False) -> StoredImages | None:
        """The image cache of ``split`` at ``geometry`` when ``image_cache`` wants one (building it
        when ``build``; the loaders build, other readers use it once it exists), else ``None``.
        Each decision and its reason is recorded in ``report["image_cache"]``."""
        key = (split, geometry)
        if key in self._stored:
            return self._stored[key]
        tab = self.tables[split]
        if self.image_cache_cfg.enabled is False or tab.arrays is not None or not len(tab):
            return None
        from datamodules.cache import ImageCache

        cache = self._image_caches.get(key)
        if cache is None:
            cache = ImageCache(self.cache_dir, self.registered_name, split, (self.root or Path(".")).absolute(), tab.paths,
                               geometry, crop_boxes(tab, self.crop, self.box_margin))
            self._image_caches[key] = cache
        try:
            with Image.open(cache.root / tab.paths[0]) as im:
                first = im.size[::-1]
        except (OSError, UnidentifiedImageError):
            first = None
        wanted, why = self.image_cache_cfg.wanted(len(tab), True, cache.estimated_bytes(first), cache.dir)
        self.report.setdefault("image_cache", {})[f"{split}/{geometry.describe()}"] = why
        if not wanted:
            self._stored[key] = None
            return None
        if not cache.exists() and not build:
            return None
        self._stored[key] = cache.open() if cache.exists() else cache.build(self.image_cache_cfg.workers)
        return self._stored[key]

    def augment_in_batches(self) -> bool:
        """Whether the training warp runs on batches (``augment_on``; ``auto``: when training on CUDA)."""
        if self.augment_on != "auto":
            return self.augment_on == "batch"
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning hook (the batch is on the device): stage 2 of ``augment_on: batch`` batches."""
        from datamodules.batch_augment import is_stored_batch

        if is_stored_batch(batch):
            if self._batch_augment is None:
                raise RuntimeError("a stage-1 batch arrived but no batch augmentation is set up "
                                   "(create it with train_dataloader())")
            return self._batch_augment(batch)
        return batch

    @staticmethod
    def _unnormalized(cfg: TransformConfig) -> TransformConfig:
        """``cfg`` producing images in [0, 1] (the preprocessing normalises them itself)."""
        return dataclasses.replace(cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), per_image_standardize=False)

    def pixel_statistics(self) -> Any:
        """Per-location mean / std of the training split at the current network input (computed
        once per input size, after global contrast normalisation when that is on), or ``None``."""
        pcfg = self.preprocess_cfg
        if not (pcfg.standardize_pixels or pcfg.subtract_mean):
            return None
        cfg = self._unnormalized(self.eval_cfg)
        key = (cfg.image_size, cfg.channels, cfg.resize_to)
        if key not in self._pixel_stats:
            from datamodules.preprocess import Normalizer, PreprocessConfig, pixel_statistics

            gcn_only = Normalizer(PreprocessConfig(global_contrast=pcfg.global_contrast, gcn_scale=pcfg.gcn_scale), None)
            geometry = self.stored_geometry(cfg)
            ds = FaceDataset(self.tables["train"], self.root or Path("."), FaceTransform(cfg, train=False), crop=self.crop,
                             box_margin=self.box_margin, landmarks=False, strict=self.strict, normalizer=gcn_only,
                             geometry=geometry, stored=self.stored_images("train", geometry))
            n = len(ds)
            idx = np.arange(n) if n <= pcfg.stats_samples else np.sort(
                np.random.default_rng([self.seed, 17]).choice(n, size=pcfg.stats_samples, replace=False))
            self._pixel_stats[key] = pixel_statistics(ds[int(i)]["image"] for i in idx)
        return self._pixel_stats[key]

    def _loader(self, split: str, shuffle: bool, train: bool | None = None, in_batches: bool = False) -> DataLoader:
        self.setup()
        train = (split == "train") if train is None else train
        if split in self.tables:   # build the image cache first (when configured)
            self.stored_images(split, self.stored_geometry(self.train_cfg if train else self.eval_cfg), build=True)
        ds = self.dataset(split, train, output="stored" if in_batches else "tensor")
        collate = None
        if in_batches:
            from datamodules.batch_augment import BatchAugment, collate_stored

            self._batch_augment, collate = BatchAugment(ds.transform, self.augment_seed, ds.normalizer), collate_stored
        sampler = EpochShardSampler(len(ds), shuffle=shuffle, seed=self.augment_seed, encode_epoch=ds.transform.train)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=self.drop_last and shuffle, collate_fn=collate,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, in_batches=self.augment_in_batches())

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Deterministic loader of any split (no augmentation), for evaluation and features."""
        return self._loader(split, shuffle=False, train=False)

    def configure_input(self, image_size: int, channels: int, landmarks: bool | None = None,
                        train_defaults: dict[str, Any] | None = None) -> None:
        """Set the network input the method asks for (called by the runner after creating the method);
        ``train_defaults`` is the method's own training augmentation (its paper's), applied to every
        field the suite did not set explicitly (its :data:`FRAMING_KEYS` to evaluation as well)."""
        self.eval_cfg.image_size = self.train_cfg.image_size = image_size
        self.eval_cfg.channels = self.train_cfg.channels = channels
        if landmarks is not None:
            self.want_landmarks = landmarks
        for key, value in (train_defaults or {}).items():
            if key not in self._explicit_train_keys:
                setattr(self.train_cfg, key, value)
            if key in FRAMING_KEYS and key not in self._explicit_train_keys:
                setattr(self.eval_cfg, key, value)   # framing / normalisation, not augmentation: every split

    def identity_classes(self, split: str = "train") -> list[int]:
        """Sorted identity ids of a split (for identity pre-training heads)."""
        self.setup()
        ids = self.tables[split].identities
        if ids is None:
            raise ValueError(f"{self.registered_name}: the {split} split has no identities")
        return sorted(int(i) for i in np.unique(ids) if i >= 0)

    # -- description -------------------------------------------------------------------------------
    def describe(self, check_files: bool = True) -> dict[str, Any]:
        """What ``facebench inspect`` prints: samples per split, target prevalence, identities,
        duplicate files (same bytes, across splits too) and files skipped at setup."""
        self.setup()
        task = self.task
        out: dict[str, Any] = {"dataset": self.registered_name, "root": str(self.root), "task": task.to_dict(),
                               "splits": {}, **self.report}
        for split, tab in self.tables.items():
            info: dict[str, Any] = {"samples": len(tab)}
            if tab.identities is not None:
                info["identities"] = int(len(np.unique(tab.identities)))
            prev = {}
            for t, s in zip(task.targets, task.label_slices):
                y = tab.labels[:, s]
                if t.kind in ("binary", "multilabel"):
                    valid = y >= 0
                    vals = (y == 1).sum(0) / np.maximum(valid.sum(0), 1)
                    if t.kind == "binary":
                        prev[t.name] = round(float(vals[0]), 4)
                    else:
                        prev[t.name] = {c: round(float(v), 4) for c, v in zip(t.classes, vals)}
                else:
                    y0 = y[:, 0]
                    counts = np.bincount(y0[y0 >= 0], minlength=t.n_classes) / max((y0 >= 0).sum(), 1)
                    prev[t.name] = {c: round(float(v), 4) for c, v in zip(t.classes, counts)}
            info["prevalence"] = prev
            out["splits"][split] = info
        if self.tables:
            first = next(iter(self.tables.values()))
            if first.identities is not None and len(self.tables) > 1:
                ids = {s: set(np.unique(t.identities).tolist()) for s, t in self.tables.items()}
                names = list(ids)
                out["identity_overlap"] = {f"{a}/{b}": len(ids[a] & ids[b]) for i, a in enumerate(names) for b in names[i + 1:]}
        kappa = self.rater_agreement()
        if kappa is not None:
            out["kappa"] = kappa
        if check_files:
            out["duplicates"] = self.duplicate_files()
        out.setdefault("skipped", [])
        return out

    def rater_agreement(self) -> dict[str, float] | None:
        """Fleiss' kappa of the raters per target with votes (all splits together) and, when a
        target has more than two vote columns, the category kappa of each column (``target/class``),
        from :mod:`lightning_modules.agreement`. ``None`` when no target has votes."""
        names = [t for t in self.task.targets if any(t.name in tab.votes for tab in self.tables.values())]
        if not names:
            return None
        try:
            from lightning_modules.agreement import category_kappas, fleiss_kappa
        except ImportError:
            self.report["kappa_unavailable"] = "lightning_modules.agreement is not available"
            return None
        out: dict[str, float] = {}
        for t in names:
            counts = np.concatenate([tab.votes[t.name] for tab in self.tables.values() if t.name in tab.votes])
            if not len(counts) or counts.sum(1).max() < 2:
                continue
            out[t.name] = round(float(fleiss_kappa(counts)), 4)
            if counts.shape[1] > 2:
                for c, k in zip(t.vote_columns, category_kappas(counts)):
                    if np.isfinite(k):
                        out[f"{t.name}/{c}"] = round(float(k), 4)
        return out

    def duplicate_files(self) -> list[list[str]]:
        """Groups of samples whose image files have the same bytes (e.g. one in train, one in test)."""
        import hashlib

        from datamodules.preprocess import FileCache, sha1_file

        by_hash: dict[str, list[str]] = {}
        root = (self.root or Path(".")).absolute()
        with FileCache(self.cache_dir, "sha1") as cache:   # hashes cached by (path, size, mtime)
            for split, tab in self.tables.items():
                if tab.arrays is not None:
                    for i in range(len(tab)):
                        h = hashlib.sha1(np.ascontiguousarray(tab.arrays[i]).tobytes()).hexdigest()
                        by_hash.setdefault(h, []).append(f"{split}:{tab.paths[i]}")
                    continue
                keys = [str(root / p) for p in tab.paths]
                known = cache.get_many(keys, check_content=False)
                for p, key in zip(tab.paths, keys):
                    h = known.get(key)
                    if h is None:
                        try:
                            h = sha1_file(key)
                        except OSError:
                            continue
                        cache.put(key, h, with_content=False)
                    by_hash.setdefault(h, []).append(f"{split}:{p}")
        return [v for v in by_hash.values() if len(v) > 1]


def warn_or_raise(strict: bool, message: str) -> None:
    if strict:
        raise DatasetFormatError("<dataset>", None, message)
    warnings.warn(message, stacklevel=2)
