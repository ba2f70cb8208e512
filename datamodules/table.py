"""The samples of one split as aligned arrays (:class:`SampleTable`): what every dataset parser
returns and every ``Dataset`` reads; and where a dataset's files are (:class:`DatasetFiles`), what
the helpers that process tables (landmarks, alignment, wild canvases, duplicates) need of it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np


#: ``SampleTable.extra`` key of the source image paths when ``paths`` point at derived images (wild canvases).
SOURCE_PATH = "source_path"


@dataclass(frozen=True)
class DatasetFiles:
    """Where a dataset's tables point: ``name`` (its registered name, for messages and cache
    folders), ``root`` (the absolute folder that table paths are relative to) and ``cache_dir``
    (where per-image results are cached; ``None``: ``$FACEBENCH_CACHE`` or ``~/.cache/facebench``)."""

    name: str
    root: Path
    cache_dir: str | os.PathLike | None = None


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

    def sample_ids(self) -> np.ndarray:
        """One stable id per row, the image's path relative to the dataset root: also after ``wild``
        replaced ``paths`` by its cached canvases (whose file names change with the cache key), so
        the predictions of two runs on the same images pair up (``extra["source_path"]``)."""
        return np.asarray(self.extra.get(SOURCE_PATH, self.paths)).astype(str)

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
