"""FER2013 and FER+ (the "FERC" data of the semantic-features paper, sec. 3.2 / 4.1).

``fer2013``: Kaggle's original ``fer2013.csv`` with header ``emotion,pixels,Usage``: ``emotion``
0-6 (anger, disgust, fear, happiness, sadness, surprise, neutral), ``pixels`` 2,304 space-separated
grey values (48x48, row-major), ``Usage`` Training / PublicTest / PrivateTest -> train / val / test
(the official split). Pixels are kept in memory (``SampleTable.arrays``). The rows have no image
names: a row whose 2,304 pixels repeat an earlier row's is that image listed again, and follows the
``duplicate_rows`` policy (its emotion and Usage are the compared values; FER2013 has such rows).

``ferplus``: Barsoum et al.'s FER+ re-labelling (10 crowd raters per image) from

* the folders (default when present): ``FER2013Train|FER2013Valid|FER2013Test/ferNNNNNNN.png`` with a
  header-less ``label.csv`` per folder: ``fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0``
  (image, face box as (left, top, right, bottom), then the votes for neutral, happiness, surprise,
  sadness, anger, disgust, fear, contempt, unknown, not-a-face (NF)); or
* ``fer2013new.csv`` (header ``Usage,Image name,neutral,...,unknown,NF``; a blank image name marks
  an image FER+ dropped) together with ``fer2013.csv`` for the pixels (same row order).

Targets of ``ferplus``: ``emotion`` over the 8 emotions, with

* ``label`` = the FER+ "majority" label, computed as the authors' code does: votes given by a
  single rater are removed as outliers, then the most-voted emotion is the label only when it has
  more than half of the remaining votes. Ties and weak majorities, and images whose majority is
  unknown or NF, have no label (``-1``: ignored by losses and metrics), or are dropped with
  ``drop_unknown: true`` (the authors drop them; the real FER+ folders then lose a few hundred images);
* ``soft_labels["emotion"]`` = the label distribution of ``label_mode`` (the paper's training
  schemes): ``majority`` (one-hot), ``probability`` / ``crossentropy`` (the top emotions covering
  75% of the votes, at most 3, renormalised), ``multi_target`` (emotions with at least 30% of the
  votes); all-zero when that scheme marks the image unknown;
* ``votes["emotion"]`` = the raw 10 vote counts (``Target.vote_classes`` names the 10 columns) for
  rater-agreement metrics (Fleiss' kappa in ``facebench inspect``).

An image name listed twice (in one ``label.csv``, or in ``fer2013new.csv``) follows the
``duplicate_rows`` policy (compared values: box and votes, or Usage and votes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from facebench.datamodules.base import FaceDataModule, register_datamodule
from facebench.datamodules.formats import DatasetFormatError, header_columns, open_csv
from facebench.datamodules.table import SampleTable
from facebench.core.tasks import MISSING, Target, TaskSpec

FER2013_EMOTIONS: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
FER2013_USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_EMOTIONS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = FERPLUS_EMOTIONS + ("unknown", "NF")
FERPLUS_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
FER_SIZE = 48
LABEL_MODES = ("majority", "probability", "crossentropy", "multi_target")


def parse_pixels(text: str, path: Path, line: int) -> np.ndarray:
    values = np.array(text.split(), dtype=np.int64) if text.strip() else np.zeros(0, np.int64)
    if values.size != FER_SIZE * FER_SIZE:
        raise DatasetFormatError(path, line, f"expected {FER_SIZE * FER_SIZE} pixel values (48x48), got {values.size}")
    if values.min() < 0 or values.max() > 255:
        raise DatasetFormatError(path, line, "expected pixel values in 0..255")
    return values.astype(np.uint8).reshape(FER_SIZE, FER_SIZE, 1)


def read_fer2013_csv(path: Path, need_emotion: bool = True) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    """``fer2013.csv`` -> (pixels uint8 [N, 48, 48, 1], emotion [N] (-1 without the column), usage [N],
    line numbers [N])."""
    rows, lines = open_csv(path)
    if not rows:
        raise DatasetFormatError(path, 1, "empty file; expected the header 'emotion,pixels,Usage'")
    cols = header_columns(path, rows[0], ("emotion", "pixels", "Usage") if need_emotion else ("pixels", "Usage"))
    width = len(rows[0])
    pixels = np.empty((len(rows) - 1, FER_SIZE, FER_SIZE, 1), dtype=np.uint8)
    emotion = np.full(len(rows) - 1, MISSING, dtype=np.int64)
    usage = []
    for k, (row, line) in enumerate(zip(rows[1:], lines[1:])):
        if len(row) != width:
            raise DatasetFormatError(path, line, f"expected {width} fields like the header, got {len(row)}")
        if "emotion" in cols:
            e = row[cols["emotion"]].strip()
            if e not in {str(i) for i in range(len(FER2013_EMOTIONS))}:
                raise DatasetFormatError(path, line, f"expected an emotion code 0-6, got {e!r}")
            emotion[k] = int(e)
        u = row[cols["Usage"]].strip()
        if u not in FER2013_USAGE:
            raise DatasetFormatError(path, line, f"expected Usage Training, PublicTest or PrivateTest, got {u!r}")
        usage.append(u)
        pixels[k] = parse_pixels(row[cols["pixels"]], path, line)
    return pixels, emotion, usage, lines[1:]


def parse_votes(fields: list[str], path: Path, line: int) -> np.ndarray:
    try:
        votes = np.array([int(v) for v in fields], dtype=np.int64)
    except ValueError:
        raise DatasetFormatError(path, line, f"expected {len(FERPLUS_VOTE_COLUMNS)} integer vote counts "
                                             f"({', '.join(FERPLUS_VOTE_COLUMNS)}), got {','.join(fields)[:120]!r}") from None
    if (votes < 0).any():
        raise DatasetFormatError(path, line, "vote counts must be non-negative")
    return votes


def parse_box(text: str, path: Path, line: int) -> np.ndarray:
    """FER+'s ``"(left, top, right, bottom)"`` -> (x, y, w, h)."""
    try:
        left, top, right, bottom = (int(v) for v in text.strip().strip("()").split(","))
    except ValueError:
        raise DatasetFormatError(path, line, f"expected a face box like \"(0, 0, 48, 48)\", got {text!r}") from None
    return np.array([left, top, right - left, bottom - top], dtype=np.float32)


def ferplus_distribution(votes: np.ndarray, mode: str) -> np.ndarray:
    """The FER+ authors' label processing (their ``_process_data``) of one image's 10 vote counts:
    a distribution over the 10 columns; the result puts all mass on ``unknown`` when the scheme
    finds no usable label. Votes of a single rater are removed first (outliers)."""
    size = len(votes)
    raw = np.where(votes <= 1, 0.0, votes.astype(float))
    total = raw.sum()
    unknown = np.zeros(size)
    unknown[-2] = 1.0
    emotion = np.zeros(size)
    if total <= 0:
        return unknown
    if mode == "majority":
        top = raw.max()
        if top > 0.5 * total:
            emotion[int(np.argmax(raw))] = top
        else:
            return unknown
    elif mode in ("probability", "crossentropy"):
        part, count, valid = 0.0, 0, True
        raw = raw.copy()
        while part < 0.75 * total and count < 3 and valid:
            top = raw.max()
            for i in range(size):
                if raw[i] == top:
                    emotion[i] = top
                    raw[i] = 0
                    part += emotion[i]
                    count += 1
                    if i >= len(FERPLUS_EMOTIONS):      # unknown / NF among the top votes
                        valid = False
                        if emotion.sum() > top:         # other emotions came before it: keep them
                            emotion[i] = 0
                            count -= 1
                        break
        if emotion.sum() <= 0.5 * total or count > 3:
            return unknown
    elif mode == "multi_target":
        emotion = np.where(raw >= 0.3 * total, raw, 0.0)
        if emotion.sum() <= 0.5 * total:
            return unknown
    else:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {mode!r}")
    return emotion / emotion.sum()


def ferplus_targets(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(majority label [N] with -1 where FER+ finds none, soft labels [N, 8] of ``mode``)."""
    n_emotions = len(FERPLUS_EMOTIONS)
    labels = np.full(len(votes), MISSING, dtype=np.int64)
    soft = np.zeros((len(votes), n_emotions), dtype=np.float32)
    for i, v in enumerate(votes):
        major = ferplus_distribution(v, "majority")
        k = int(np.argmax(major))
        if k < n_emotions:
            labels[i] = k
        dist = major if mode == "majority" else ferplus_distribution(v, mode)
        if int(np.argmax(dist)) < n_emotions:
            soft[i] = dist[:n_emotions]
    return labels, soft


@register_datamodule("fer2013")
class FER2013DataModule(FaceDataModule):
    """FER2013 from Kaggle's fer2013.csv: 7 emotions, 48x48 grayscale, official Training / PublicTest / PrivateTest split."""

    expected_files = {
        "fer2013.csv (csv_file)": ("header `emotion,pixels,Usage`: emotion 0-6, 2,304 space-separated grey values "
                                   "(48x48), Usage Training / PublicTest / PrivateTest (train / val / test)"),
    }

    def __init__(self, root: str | os.PathLike | None = None, *, csv_file: str = "fer2013.csv", **kwargs):
        kwargs.setdefault("channels", 1)
        kwargs.setdefault("image_size", FER_SIZE)
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("fer2013: 'root' is required (the folder holding fer2013.csv)")
        self.csv_file = csv_file

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        assert self.root is not None
        path = self.root / self.csv_file
        pixels, emotion, usage, lines = read_fer2013_csv(path)
        keep, _ = self.unique_rows(path, [p.tobytes() for p in pixels], list(zip(emotion.tolist(), usage)), lines,
                                   fields=("emotion", "Usage"), key_name=lambda _: "an image (the same 48x48 pixels)")
        task = TaskSpec((Target("emotion", "multiclass", FER2013_EMOTIONS),), name=self.registered_name)
        usage_arr = np.array([FER2013_USAGE[u] for u in usage])
        tables = {}
        for split in ("train", "val", "test"):
            idx = keep[usage_arr[keep] == split]
            tables[split] = SampleTable(paths=[f"{self.csv_file}#{i}" for i in idx], labels=emotion[idx, None],
                                        arrays=pixels[idx])
        return task, tables


@register_datamodule("ferplus")
class FERPlusDataModule(FaceDataModule):
    """FER+ (FER2013 images, 10 crowd votes each): 8 emotions, majority / soft / raw-vote targets, official split.

    Args:
        source: ``auto`` (folders when ``FER2013Train/label.csv`` exists, else the two CSV files),
            ``folders`` or ``csv``.
        label_mode: soft-label scheme (``majority``, ``probability``, ``crossentropy``, ``multi_target``).
        drop_unknown: drop images without a FER+ label (training split: under ``label_mode``;
            validation / test: under ``majority``, as the authors evaluate) instead of keeping them
            with label ``-1``.
    """

    expected_files = {
        "FER2013Train/, FER2013Valid/, FER2013Test/": ("`ferNNNNNNN.png` images and a header-less label.csv per folder: image, face box "
                                                       "`(left, top, right, bottom)`, then 10 vote counts (neutral, happiness, surprise, "
                                                       "sadness, anger, disgust, fear, contempt, unknown, NF)"),
        "fer2013new.csv + fer2013.csv": ("the alternative source: header `Usage,Image name,neutral,...,unknown,NF` (a blank "
                                         "image name: dropped by FER+), the pixels from fer2013.csv in the same row order"),
    }

    def __init__(self, root: str | os.PathLike | None = None, *, source: str = "auto", label_mode: str = "majority",
                 drop_unknown: bool = False, ferplus_csv: str = "fer2013new.csv", fer2013_csv: str = "fer2013.csv",
                 **kwargs):
        kwargs.setdefault("channels", 1)
        kwargs.setdefault("image_size", FER_SIZE)
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("ferplus: 'root' is required (the folder holding FER2013Train/ or fer2013new.csv)")
        if source not in ("auto", "folders", "csv"):
            raise ValueError(f"ferplus: source must be 'auto', 'folders' or 'csv', got {source!r}")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"ferplus: label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        self.source, self.label_mode, self.drop_unknown = source, label_mode, drop_unknown
        self.ferplus_csv, self.fer2013_csv = ferplus_csv, fer2013_csv

    def task_spec(self) -> TaskSpec:
        return TaskSpec((Target("emotion", "multiclass", FERPLUS_EMOTIONS, has_votes=True,
                                vote_classes=FERPLUS_VOTE_COLUMNS),), name=self.registered_name)

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        assert self.root is not None
        source = self.source
        if source == "auto":
            source = "folders" if (self.root / FERPLUS_FOLDERS["train"] / "label.csv").is_file() else "csv"
        raw = self._read_folders() if source == "folders" else self._read_csv()
        tables: dict[str, SampleTable] = {}
        unlabelled: dict[str, int] = {}
        for split, (paths, votes, boxes, arrays) in raw.items():
            labels, soft = ferplus_targets(votes, self.label_mode)
            keep = np.ones(len(paths), dtype=bool)
            if self.drop_unknown:
                keep = soft.sum(1) > 0 if split == "train" else labels >= 0
            unlabelled[split] = int((labels < 0).sum())
            idx = np.flatnonzero(keep)
            tables[split] = SampleTable(
                paths=[paths[i] for i in idx], labels=labels[idx, None], votes={"emotion": votes[idx]},
                soft_labels={"emotion": soft[idx]}, boxes=boxes[idx] if boxes is not None else None,
                arrays=arrays[idx] if arrays is not None else None)
        self.report["ferplus"] = {"source": source, "label_mode": self.label_mode, "without_majority_label": unlabelled,
                                  "dropped": self.drop_unknown}
        return self.task_spec(), tables

    def _read_folders(self) -> dict[str, tuple[list[str], np.ndarray, np.ndarray | None, None]]:
        assert self.root is not None
        n_votes = len(FERPLUS_VOTE_COLUMNS)
        out = {}
        for split, folder in FERPLUS_FOLDERS.items():
            path = self.root / folder / "label.csv"
            rows, lines = open_csv(path)
            present = set(os.listdir(self.root / folder))
            paths, votes, boxes = [], np.zeros((len(rows), n_votes), dtype=np.int64), np.zeros((len(rows), 4), np.float32)
            for k, (row, line) in enumerate(zip(rows, lines)):
                if len(row) != 2 + n_votes:
                    raise DatasetFormatError(path, line, f"expected an image name, a face box and {n_votes} vote counts "
                                                         f"({', '.join(FERPLUS_VOTE_COLUMNS)}), got {len(row)} field(s)")
                name = row[0].strip()
                if name not in present:
                    raise DatasetFormatError(path, line, f"image {folder}/{name} listed here does not exist")
                paths.append(f"{folder}/{name}")
                boxes[k] = parse_box(row[1], path, line)
                votes[k] = parse_votes(row[2:], path, line)
            keep, _ = self.unique_rows(path, paths, [(tuple(b), tuple(v)) for b, v in zip(boxes.tolist(), votes.tolist())],
                                       lines, fields=("box", "votes"))
            out[split] = ([paths[i] for i in keep], votes[keep], boxes[keep], None)
        return out

    def _read_csv(self) -> dict[str, tuple[list[str], np.ndarray, None, np.ndarray]]:
        assert self.root is not None
        new_path, old_path = self.root / self.ferplus_csv, self.root / self.fer2013_csv
        rows, lines = open_csv(new_path)
        if not rows:
            raise DatasetFormatError(new_path, 1, "empty file; expected the header 'Usage,Image name,neutral,...,NF'")
        cols = header_columns(new_path, rows[0], ("Usage", "Image name") + FERPLUS_VOTE_COLUMNS)
        pixels, _, usage, _ = read_fer2013_csv(old_path, need_emotion=False)
        if len(rows) - 1 != len(pixels):
            raise DatasetFormatError(new_path, None, f"has {len(rows) - 1} rows but {old_path.name} has {len(pixels)}; "
                                                     f"the two files must list the same images in the same order")
        per_split: dict[str, tuple[list[str], list[np.ndarray], list[int]]] = {s: ([], [], []) for s in FERPLUS_FOLDERS}
        dropped = 0
        named: list[tuple[str, str, np.ndarray, int, int]] = []   # (name, usage, votes, row, line)
        for k, (row, line) in enumerate(zip(rows[1:], lines[1:])):
            if len(row) != len(rows[0]):
                raise DatasetFormatError(new_path, line, f"expected {len(rows[0])} fields like the header, got {len(row)}")
            u = row[cols["Usage"]].strip()
            if u not in FER2013_USAGE:
                raise DatasetFormatError(new_path, line, f"expected Usage Training, PublicTest or PrivateTest, got {u!r}")
            if u != usage[k]:
                raise DatasetFormatError(new_path, line, f"Usage {u} differs from {old_path.name}'s {usage[k]} for the same row")
            name = row[cols["Image name"]].strip()
            if not name:
                dropped += 1          # FER+ removed this image
                continue
            named.append((name, u, parse_votes([row[cols[c]] for c in FERPLUS_VOTE_COLUMNS], new_path, line), k, line))
        keep, _ = self.unique_rows(new_path, [r[0] for r in named], [(r[1], tuple(r[2].tolist())) for r in named],
                                   [r[4] for r in named], fields=("Usage", "votes"))
        for name, u, v, k, _ in (named[i] for i in keep):
            paths, votes, index = per_split[FER2013_USAGE[u]]
            paths.append(f"{self.fer2013_csv}#{k}:{name}")
            votes.append(v)
            index.append(k)
        self.report["ferplus_dropped_rows"] = dropped
        out = {}
        for split, (paths, votes, index) in per_split.items():
            v = np.stack(votes) if votes else np.zeros((0, len(FERPLUS_VOTE_COLUMNS)), np.int64)
            out[split] = (paths, v, None, pixels[np.asarray(index, dtype=np.int64)])
        return out

