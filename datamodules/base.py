"""Shared machinery of every facebench datamodule: the registry, the base ``Dataset`` returning
sample dicts and the base ``LightningDataModule`` with its loaders.

A concrete dataset file (``celeba.py``, ``lfwa.py``, ...) parses its files into a
:class:`SampleTable` per split and declares its :class:`~datamodules.tasks.TaskSpec`; everything
else (image loading, transforms, landmarks, loaders, inspection) lives here.
"""

from __future__ import annotations

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

from datamodules.sampling import EpochShardSampler
from datamodules.tasks import TaskSpec
from datamodules.transforms import FaceTransform, TransformConfig

SPLITS: tuple[str, ...] = ("train", "val", "test")

# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
_DATAMODULES: dict[str, type["FaceDataModule"]] = {}


def register_datamodule(name: str) -> Callable[[type], type]:
    """Class decorator: make a datamodule creatable by name from a suite config."""

    def deco(cls: type) -> type:
        if name in _DATAMODULES and _DATAMODULES[name] is not cls:
            raise ValueError(f"datamodule name {name!r} registered twice")
        _DATAMODULES[name] = cls
        cls.registered_name = name
        return cls

    return deco


def datamodule_names() -> list[str]:
    import datamodules.all  # noqa: F401  (registers every datamodule)

    return sorted(_DATAMODULES)


def get_datamodule_class(name: str) -> type["FaceDataModule"]:
    names = datamodule_names()
    if name not in _DATAMODULES:
        raise ValueError(f"unknown dataset {name!r}; registered datasets: {', '.join(names)}")
    return _DATAMODULES[name]


def create_datamodule(name: str, **kwargs: Any) -> "FaceDataModule":
    cls = get_datamodule_class(name)
    return cls(**kwargs)


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


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 (RGB) or HxWx1 (grayscale), with a clear error."""
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "I;16", "I"):
                return np.asarray(im.convert("L"))[:, :, None]
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(path, None, f"cannot decode image ({exc.__class__.__name__}: {exc})") from None


class FaceDataset(Dataset):
    """A split of a face dataset: returns ``{"image", "label", "identity", "index", ...}`` dicts.

    ``crop`` chooses what the network sees: ``"image"`` the whole (aligned) image, ``"box"`` the
    face box of each sample scaled by ``box_margin`` (in-the-wild images).
    """

    def __init__(self, table: SampleTable, root: Path, transform: FaceTransform, *, crop: str = "image",
                 box_margin: float = 1.0, augment_seed: int = 0, landmarks: bool = True):
        self.table, self.root, self.transform, self.landmarks = table, Path(root), transform, landmarks
        self.crop, self.box_margin, self.augment_seed = crop, box_margin, augment_seed

    def __len__(self) -> int:
        return len(self.table)

    def read(self, i: int) -> np.ndarray:
        if self.table.arrays is not None:
            return self.table.arrays[i]
        return load_image(self.root / self.table.paths[i])

    def __getitem__(self, key: int) -> dict[str, Any]:
        """``key`` is a sample index, or ``epoch * len(self) + index`` from :class:`EpochShardSampler`:
        training augmentation is drawn from (augment_seed, epoch, index) only."""
        t = self.table
        epoch, i = divmod(int(key), len(t))
        image = self.read(i)
        rng = np.random.default_rng([self.augment_seed, epoch, i]) if self.transform.train else None
        box = t.boxes[i] if t.boxes is not None else None
        crop_box = None
        if self.crop == "box" and box is not None:
            x, y, w, h = box
            m = self.box_margin
            crop_box = (x + w / 2 - w * m / 2, y + h / 2 - h * m / 2, w * m, h * m)
        lm = t.landmarks[i] if t.landmarks is not None and self.landmarks else None
        sample = self.transform(image, landmarks=lm, box=box, rng=rng, crop_box=crop_box)
        sample["label"] = torch.from_numpy(np.asarray(t.labels[i], dtype=np.int64))
        sample["index"] = torch.tensor(i, dtype=torch.long)
        sample["identity"] = torch.tensor(int(t.identities[i]) if t.identities is not None else -1, dtype=torch.long)
        if t.votes:
            sample["votes"] = {k: torch.from_numpy(np.asarray(v[i], dtype=np.int64)) for k, v in t.votes.items()}
        if t.soft_labels:
            sample["soft_label"] = {k: torch.from_numpy(np.asarray(v[i], dtype=np.float32)) for k, v in t.soft_labels.items()}
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
    * ``seed``: for derived splits and subsets (same seed, same split on every machine).
    """

    registered_name: ClassVar[str] = ""
    #: Landmarks available from the files (e.g. CelebA's 5 points) -> number of points, else 0.
    has_identities: ClassVar[bool] = False

    def __init__(self, root: str | os.PathLike | None = None, *, batch_size: int = 64, num_workers: int | None = None,
                 image_size: int = 64, channels: int = 3, transforms: dict | None = None,
                 train_transforms: dict | None = None, attributes: Sequence[str] | None = None,
                 max_samples: int | dict[str, int] | None = None, crop: str = "image", box_margin: float = 1.0,
                 landmarks: bool = True, seed: int = 0, pin_memory: bool | None = None,
                 persistent_workers: bool = True, drop_last: bool = False, strict: bool = False):
        super().__init__()
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
        self.tables: dict[str, SampleTable] = {}
        self._task: TaskSpec | None = None
        self.report: dict[str, Any] = {}

    # -- to implement ------------------------------------------------------------------------------
    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        """Parse the dataset's files: its task and one table per split."""
        raise NotImplementedError

    # -- setup -------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        task, tables = self.load_tables()
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
        self._task, self.tables = task, tables

    @property
    def task(self) -> TaskSpec:
        if self._task is None:
            self.setup()
        assert self._task is not None
        return self._task

    def dataset(self, split: str, train: bool | None = None) -> FaceDataset:
        self.setup()
        if split not in self.tables:
            raise ValueError(f"{self.registered_name} has no {split!r} split; splits: {', '.join(self.tables)}")
        train = (split == "train") if train is None else train
        transform = FaceTransform(self.train_cfg if train else self.eval_cfg, train=train)
        return FaceDataset(self.tables[split], self.root or Path("."), transform, crop=self.crop,
                           box_margin=self.box_margin, augment_seed=self.augment_seed,
                           landmarks=self.want_landmarks)

    def _loader(self, split: str, shuffle: bool, train: bool | None = None) -> DataLoader:
        ds = self.dataset(split, train)
        sampler = EpochShardSampler(len(ds), shuffle=shuffle, seed=self.augment_seed, encode_epoch=ds.transform.train)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=self.drop_last and shuffle,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

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
        field the suite did not set explicitly."""
        self.eval_cfg.image_size = self.train_cfg.image_size = image_size
        self.eval_cfg.channels = self.train_cfg.channels = channels
        if landmarks is not None:
            self.want_landmarks = landmarks
        for key, value in (train_defaults or {}).items():
            if key not in self._explicit_train_keys:
                setattr(self.train_cfg, key, value)

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
        if check_files:
            out["duplicates"] = self.duplicate_files()
        out.setdefault("skipped", [])
        return out

    def duplicate_files(self) -> list[list[str]]:
        """Groups of samples whose image files have the same bytes (e.g. one in train, one in test)."""
        import hashlib

        by_hash: dict[str, list[str]] = {}
        for split, tab in self.tables.items():
            if tab.arrays is not None:
                for i in range(len(tab)):
                    h = hashlib.sha1(np.ascontiguousarray(tab.arrays[i]).tobytes()).hexdigest()
                    by_hash.setdefault(h, []).append(f"{split}:{tab.paths[i]}")
                continue
            root = self.root or Path(".")
            for p in tab.paths:
                try:
                    h = hashlib.sha1((root / p).read_bytes()).hexdigest()
                except OSError:
                    continue
                by_hash.setdefault(h, []).append(f"{split}:{p}")
        return [v for v in by_hash.values() if len(v) > 1]


def warn_or_raise(strict: bool, message: str) -> None:
    if strict:
        raise DatasetFormatError("<dataset>", None, message)
    warnings.warn(message, stacklevel=2)
