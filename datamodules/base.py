"""The base ``LightningDataModule`` of every facebench dataset (:class:`FaceDataModule`: setup,
splits, file verification, loaders, the image cache, input configuration) and the registry that
creates datamodules by name.

A concrete dataset file (``celeba.py``, ``lfwa.py``, ...) parses its files into a
:class:`~facebench.datamodules.table.SampleTable` per split and declares its
:class:`~facebench.core.tasks.TaskSpec`; the rest lives in shared modules: the text readers and
:class:`~facebench.datamodules.formats.DatasetFormatError` in :mod:`facebench.datamodules.formats`, image decoding and
checks in :mod:`facebench.datamodules.image_files`, the sample dicts in :mod:`facebench.datamodules.dataset`
(:class:`~facebench.datamodules.dataset.FaceDataset`), ``facebench inspect``'s figures in
:mod:`facebench.datamodules.describe`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

from facebench.datamodules import describe as describe_module
from facebench.datamodules import duplicates
from facebench.core.config import check_options, constructor_options
from facebench.core.registry import Registry
from facebench.datamodules.cache import StoredGeometry, StoredImages
from facebench.datamodules.dataset import FaceDataset, crop_boxes
from facebench.datamodules.formats import DatasetFormatError, unique_rows
from facebench.datamodules.image_files import check_image_file
from facebench.datamodules.epoch_sampler import EpochShardSampler
from facebench.datamodules.splits import SplitConfig, assign_splits, split_indices, strata_of
from facebench.core.tasks import TaskSpec
from facebench.datamodules.table import DatasetFiles, SampleTable
from facebench.datamodules.transforms import FaceTransform, TransformConfig
from facebench.datamodules.wild import WildConfig, apply_wild

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
    import facebench.datamodules.all  # noqa: F401  (registers every datamodule)


DATAMODULES: Registry[type["FaceDataModule"]] = Registry("dataset", loader=_load_all, name_attribute="registered_name")
#: Class decorator: make a datamodule creatable by name from a suite config.
register_datamodule = DATAMODULES.register
datamodule_names = DATAMODULES.names
get_datamodule_class = DATAMODULES.get


def create_datamodule(name: str, **kwargs: Any) -> "FaceDataModule":
    """The datamodule registered as ``name``, constructed with ``kwargs`` (nothing is loaded before
    ``setup``). An unknown name raises ``ValueError`` listing the registered ones; unknown keywords
    reach the constructor (``TypeError``): suites check them first with
    :meth:`FaceDataModule.check_config`."""
    return get_datamodule_class(name)(**kwargs)


# ------------------------------------------------------------------------------------------------
# datamodule
# ------------------------------------------------------------------------------------------------
class FaceDataModule(L.LightningDataModule):
    """Base datamodule. Subclasses implement :meth:`load_tables` and :attr:`task`.

    Arguments shared by all datasets (all settable from a suite YAML):

    * ``root``: dataset folder; ``batch_size``, ``num_workers`` (``None``: ``min(4, cpu count)``);
      ``pin_memory`` (``None``: when CUDA is available), ``persistent_workers`` (with workers only),
      ``drop_last`` (the training loader only);
    * ``image_size``, ``channels``: network input (usually filled in from the method's input spec);
    * ``transforms`` / ``train_transforms``: :class:`TransformConfig` fields for every split / only
      for training (training augmentation is off unless configured);
    * ``attributes``: keep only these targets; ``max_samples``: cap per split (an int, or a dict
      split -> int) taking a seeded random subset, for CPU-sized runs;
    * ``crop``: ``"image"`` or ``"box"`` (crop the face box when the dataset has boxes), the box
      scaled by ``box_margin`` about its centre (a preprocessing alignment box takes precedence);
    * ``landmarks``: return landmarks in samples when the dataset has them;
    * ``seed``: for derived splits and subsets (same seed, same split on every machine);
    * ``split``: :class:`~facebench.datamodules.splits.SplitConfig` fields, used by datasets without an
      official split (``load_tables`` returns ``{UNSPLIT: table}``), to carve ``val`` out of an
      official train split that has none, or to re-split (``override_official``);
    * ``verify_images``: ``"header"`` (default: a fast header / end-marker check, cached on disk by
      path, size and mtime), ``"full"`` (decode every image) or ``"none"``; unusable images are
      skipped and listed in ``report["skipped"]``; ``strict``: a :class:`DatasetFormatError` naming
      the file instead of skipping it (unusable files and rows alike);
    * ``landmark_provider``: fill ``SampleTable.landmarks`` (``"dataset"``, ``"dlib68"`` or
      ``{name: dlib68, detector: image}``, see :mod:`facebench.datamodules.landmarks`);
    * ``preprocess``: :class:`~facebench.datamodules.preprocess.PreprocessConfig` fields (face detection,
      eye alignment, global contrast normalisation, training-mean subtraction);
    * ``cache_dir``: where per-image results are cached (default ``$FACEBENCH_CACHE`` or
      ``~/.cache/facebench``).
    * ``image_cache``: ``true`` / ``false`` (default) / ``auto`` or a mapping of
      :class:`~facebench.datamodules.cache.ImageCacheConfig` fields: keep the stage-1 images of each split in
      a memory-mapped array under ``cache_dir`` (built once by the training / evaluation loaders,
      shared by every run); ``oversample``: stage 1 stores ``(resize_to or image_size) *
      oversample`` pixels on the shorter side (or crop-box side), never more than the source;
      ``crop_context``: stored region / crop box side (see :mod:`facebench.datamodules.cache`);
    * ``augment_on``: where the training warp and augmentation run: ``"worker"`` (DataLoader
      workers, OpenCV), ``"batch"`` (on the whole batch after it reached the device,
      :mod:`facebench.datamodules.batch_augment`) or ``"auto"`` (default: ``batch`` when training on CUDA).
    * ``wild``: composite every image onto a cluttered canvas and record its face box
      (:class:`~facebench.datamodules.wild.WildConfig` fields, see :mod:`facebench.datamodules.wild`).
    * ``duplicate_rows``: an image listed on more than one row of a label table: ``"error"``
      (default: a :class:`DatasetFormatError` naming the file, both lines and the values),
      ``"first"`` (keep the first row) or ``"drop_conflicting"`` (drop an image whose rows
      disagree, keep one of rows that agree); counted in ``report["repeated_rows"]``;
    * ``dedupe``: ``{test: drop}`` (and / or ``val: drop``) drops the items of that split whose
      image duplicates a training image (``report["dedupe"]``); ``near_duplicates``: also treat
      images whose 64-bit difference hashes differ in at most this many bits as duplicates (derived
      splits, ``dedupe``, the cross-split count; default: same bytes only). See
      :mod:`facebench.datamodules.duplicates`.
    """

    registered_name: ClassVar[str] = ""
    #: Whether the dataset's tables carry identities (CelebA, LFWA): identity pre-training heads
    #: (:meth:`identity_classes`) and identity-disjoint derived splits need them.
    has_identities: ClassVar[bool] = False
    #: ``split`` defaults of datasets without an official split (SplitConfig fields).
    default_split: ClassVar[dict[str, Any]] = {}
    #: The files (and their columns) the dataset reads under ``root``: ``{path or pattern: what it holds}``,
    #: as ``facebench list datasets`` shows them (a literal, read from the source).
    expected_files: ClassVar[dict[str, str]] = {}

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
                 augment_on: str = "auto", wild: bool | dict[str, Any] | None = None, duplicate_rows: str = "error",
                 dedupe: dict[str, str] | None = None, near_duplicates: int | None = None):
        super().__init__()
        from facebench.datamodules.preprocess import PreprocessConfig

        if verify_images not in ("header", "full", "none"):
            raise ValueError(f"verify_images must be 'header', 'full' or 'none', got {verify_images!r}")
        self.split_cfg = SplitConfig.from_value(split, SplitConfig.from_value(dict(self.default_split)))
        self.duplicate_rows, self.dedupe, self.near_duplicates = duplicates.check_options(duplicate_rows, dedupe,
                                                                                          near_duplicates)
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
        from facebench.datamodules.cache import ImageCacheConfig

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
        self.wild_cfg = WildConfig.from_value(wild)

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """``ValueError`` naming the keys of a suite's dataset arguments that no constructor of the
        class chain accepts, and the allowed ones."""
        check_options(f"dataset {cls.registered_name!r}", cfg, constructor_options(cls, FaceDataModule))

    # -- to implement ------------------------------------------------------------------------------
    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        """Parse the dataset's files: its task and one table per split."""
        raise NotImplementedError

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Build the split tables once (any ``stage``; later calls return at once), in this order:
        parse the files (:meth:`load_tables`), derive splits, keep ``attributes``, ``dedupe``,
        ``max_samples``, verify the image files, then landmarks, ``wild`` canvases and the
        ``preprocess`` alignment. What was skipped or counted is in :attr:`report`."""
        if self.tables:
            return
        self.report.setdefault("skipped", [])
        with self._aligned_source():
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
        if self.dedupe:
            tables, self.report["dedupe"] = duplicates.drop_duplicates(tables, self.dedupe, self.files,
                                                                       self.near_duplicates)
        if self.max_samples:
            for split, tab in list(tables.items()):
                cap = self.max_samples.get(split) if isinstance(self.max_samples, dict) else self.max_samples
                if cap and len(tab) > cap:
                    rng = np.random.default_rng([self.seed, SPLITS.index(split) if split in SPLITS else 9])
                    tables[split] = tab.take(np.sort(rng.choice(len(tab), size=cap, replace=False)))
        self.verify_files(tables)
        self._task, self.tables = task, tables
        if self.landmark_provider:
            from facebench.datamodules.landmarks import fill_landmarks

            self.report["landmarks"] = fill_landmarks(self.tables, self.files, self.landmark_provider)
        if self.wild_wanted():
            self.report["wild"] = apply_wild(self.tables, self.files, self.wild_cfg)
        if self.preprocess_cfg.geometric:
            from facebench.datamodules.preprocess import compute_alignment

            self.report["preprocess"] = compute_alignment(self.tables, self.files, self.preprocess_cfg)

    @property
    def files(self) -> DatasetFiles:
        """The dataset's name, absolute root and cache folder: what the table helpers need."""
        return DatasetFiles(self.registered_name, (self.root or Path(".")).absolute(), self.cache_dir)

    def wild_wanted(self) -> bool:
        """Whether setup composites the images onto canvases: ``wild`` is set and ``in_the_wild``
        (when the dataset has that flag) is true (see :mod:`facebench.datamodules.wild`)."""
        return self.wild_cfg is not None and bool(getattr(self, "in_the_wild", True))

    @contextmanager
    def _aligned_source(self) -> Iterator[None]:
        """While loading the tables of a ``wild`` dataset with an ``in_the_wild`` flag, read its
        aligned images (the canvases stand in for its own in-the-wild photos)."""
        flag = getattr(self, "in_the_wild", None)
        if not (flag and self.wild_cfg is not None):
            yield
            return
        self.in_the_wild = False
        try:
            yield
        finally:
            self.in_the_wild = flag

    # -- splits, verification ------------------------------------------------------------------------
    def apply_split(self, task: TaskSpec, tables: dict[str, SampleTable]) -> dict[str, SampleTable]:
        """Official splits as loaded; derived ones per :attr:`split_cfg` (see :mod:`facebench.datamodules.splits`)."""
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
        """Split codes (0 train, 1 val, 2 test) in proportions ``fractions``: stratified on
        ``split.stratify``, identity-disjoint when ``split.by_identity`` and identities are known,
        duplicate images kept in one split when ``split.by_duplicates``."""
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
        if cfg.by_duplicates:   # duplicate images join their groups: components of "same identity or duplicate"
            groups, n_duplicate_groups = duplicates.split_components(table, groups, self.files, self.near_duplicates)
            if n_duplicate_groups:
                self.report["split_duplicate_groups"] = self.report.get("split_duplicate_groups", 0) + n_duplicate_groups
        seed = self.seed if cfg.seed is None else int(cfg.seed)
        return assign_splits(len(table), fractions, seed, strata=strata, groups=groups)

    def unique_rows(self, path: os.PathLike | str, keys: Sequence[Any], values: Sequence[Any], lines: Sequence[Any], *,
                    fields: Sequence[str] | None = None, what: str = "image",
                    key_name: Any = None) -> tuple[np.ndarray, set]:
        """Rows of a label table to keep under ``duplicate_rows`` and the keys dropped altogether
        (:func:`facebench.datamodules.formats.unique_rows`); counted in ``report["repeated_rows"]``."""
        keep, counts, dropped = unique_rows(path, keys, values, lines, self.duplicate_rows, fields=fields, what=what,
                                            key_name=key_name)
        if counts["repeated"]:
            name = os.path.relpath(path, self.root) if self.root is not None else str(path)
            name = "file names" if name == "." else name   # labels read from the file names (UTKFace)
            self.report.setdefault("repeated_rows", {})[name] = {**counts, "policy": self.duplicate_rows}
            warnings.warn(f"{self.registered_name}: {counts['repeated']} {what}(s) listed more than once in {path} "
                          f"({counts['conflicting']} with conflicting rows; duplicate_rows: {self.duplicate_rows})",
                          stacklevel=2)
        return keep, dropped

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
        from facebench.datamodules.preprocess import FileCache

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
        """The dataset's :class:`TaskSpec` after ``attributes`` (sets the datamodule up on first use)."""
        if self._task is None:
            self.setup()
        assert self._task is not None
        return self._task

    def dataset(self, split: str, train: bool | None = None, output: str = "tensor") -> FaceDataset:
        """The :class:`FaceDataset` of ``split`` (set up first), with the training transforms when
        ``train`` (default: for ``"train"``); ``output="stored"`` returns stage-1 images for
        ``augment_on: batch``. ``ValueError`` for a split the dataset does not have."""
        self.setup()
        if split not in self.tables:
            raise ValueError(f"{self.registered_name} has no {split!r} split; splits: {', '.join(self.tables)}")
        train = (split == "train") if train is None else train
        cfg, normalizer = self.train_cfg if train else self.eval_cfg, None
        if self.preprocess_cfg.photometric:
            from facebench.datamodules.preprocess import Normalizer

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
        """What stage 1 keeps of each image for a transform config (see :mod:`facebench.datamodules.cache`)."""
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
        from facebench.datamodules.cache import ImageCache

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
        from facebench.datamodules.batch_augment import is_stored_batch

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
            from facebench.datamodules.preprocess import Normalizer, PreprocessConfig, pixel_statistics

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
            from facebench.datamodules.batch_augment import BatchAugment, collate_stored

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

    # -- description (facebench.datamodules.describe) -------------------------------------------------------------
    def describe(self, check_files: bool = True) -> dict[str, Any]:
        """What ``facebench inspect`` prints (see :func:`facebench.datamodules.describe.describe`)."""
        return describe_module.describe(self, check_files)

    def rater_agreement(self) -> dict[str, float] | None:
        """Fleiss' kappa per voted target (see :func:`facebench.datamodules.describe.rater_agreement`)."""
        return describe_module.rater_agreement(self)

    def data_checks(self) -> dict[str, int]:
        """``facebench inspect``'s counts of doubts about the data (see :func:`facebench.datamodules.describe.data_checks`)."""
        return describe_module.data_checks(self)

    def duplicate_files(self) -> list[list[str]]:
        """Groups of samples with identical image files (see :func:`facebench.datamodules.describe.duplicate_files`)."""
        return describe_module.duplicate_files(self)


def warn_or_raise(strict: bool, message: str) -> None:
    """A :class:`DatasetFormatError` with ``message`` when ``strict``, else a warning."""
    if strict:
        raise DatasetFormatError("<dataset>", None, message)
    warnings.warn(message, stacklevel=2)
