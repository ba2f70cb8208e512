"""Predictions made elsewhere, read from a CSV into the task's probability layout (for
``facebench evaluate``), every problem one line naming the file, the line and the column.

Format: a header row; an id column (``id``, ``path``, ``image``, ``image_id`` or ``file``, or the one
``--id-column`` names) holding the dataset's sample ids (image paths relative to the dataset root,
as ``facebench predict`` and the run records write them; absolute paths under the root and bare
file names that are unique in the split are matched too); then, per target of the dataset's task:

* a binary target: one column ``<target>``: the probability of its positive class in [0, 1], or a
  label (0 / 1, or one of the target's two class names);
* a multi-class or ordinal target: one column ``<target>/<class>`` per class (probabilities that sum
  to 1), or one column ``<target>`` with the predicted class (its name or index);
* a multi-label target: one column ``<target>/<class>`` per class (probability or 0 / 1), or one
  column ``<target>`` listing the predicted classes separated by ``;`` (empty or ``none``: none).

This is the layout ``facebench predict`` writes. Hard labels become probabilities 0 / 1 (their
AUROC is then that of a single operating point). Every sample of the split needs exactly one row;
rows for ids outside the split, unknown columns and values out of range are errors.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from facebench.core.tasks import Target, TaskSpec
from facebench.datamodules.formats import DatasetFormatError, open_csv

#: Header names taken as the id column (first match), unless ``id_column`` is given.
ID_COLUMN_NAMES = ("id", "path", "image", "image_id", "file")
#: How far the class probabilities of a softmax target may sum from 1.
SUM_TOLERANCE = 1e-3


def _suggest(name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _number(path: Path, line: int, column: str, cell: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise DatasetFormatError(path, line, f"column {column!r}: {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetFormatError(path, line, f"column {column!r}: {cell!r} is not a finite number")
    return value


def _probability(path: Path, line: int, column: str, cell: str, classes: Sequence[str] = ()) -> float:
    """A 0/1 output's probability: a number in [0, 1], or one of the two ``classes`` (second: 1)."""
    text = cell.strip()
    if len(classes) == 2 and text in classes:
        return float(classes.index(text))
    value = _number(path, line, column, text)
    if not 0.0 <= value <= 1.0:
        named = f" nor a class ({', '.join(classes)})" if classes else ""
        raise DatasetFormatError(path, line, f"column {column!r}: {text} is not a probability in [0, 1] or a label 0/1{named}")
    return value


def _class_index(path: Path, line: int, column: str, cell: str, target: Target) -> int:
    text = cell.strip()
    if text in target.classes:
        return target.classes.index(text)
    try:
        index = float(text)
    except ValueError:
        index = math.nan
    if math.isfinite(index) and index.is_integer() and 0 <= int(index) < target.n_classes:
        return int(index)
    raise DatasetFormatError(path, line, f"column {column!r}: {text!r} is not a class of {target.name!r} "
                                         f"({', '.join(target.classes)}) nor a class index 0-{target.n_classes - 1}")


class _Columns:
    """Where each probability column of the task comes from in the CSV header."""

    def __init__(self, path: Path, header: list[str], task: TaskSpec, id_column: str | None):
        names = [h.strip() for h in header]
        self.path, self.task = path, task
        if id_column is not None and id_column not in names:
            raise DatasetFormatError(path, 1, f"no id column {id_column!r} in the header; columns: {', '.join(names)}")
        found = [n for n in ID_COLUMN_NAMES if n in names]
        if id_column is None and not found:
            raise DatasetFormatError(path, 1, f"no id column: expected one of {', '.join(ID_COLUMN_NAMES)} (or --id-column) "
                                              f"holding the sample ids (image paths relative to the dataset root)")
        self.id_name = id_column or found[0]
        self.id_index = names.index(self.id_name)
        index = {n: i for i, n in enumerate(names)}
        self.sources: list[tuple[Target, str, Any]] = []   # (target, "single" | "classes", column index / indices)
        used = {self.id_name}
        missing = []
        for t in task.targets:
            per_class = [f"{t.name}/{c}" for c in t.classes]
            if t.kind != "binary" and all(c in index for c in per_class):
                self.sources.append((t, "classes", [index[c] for c in per_class]))
                used |= set(per_class)
            elif t.name in index:
                self.sources.append((t, "single", index[t.name]))
                used.add(t.name)
            else:
                missing.append(t.name if t.kind == "binary" else f"{t.name} (or {t.name}/<class> for each class)")
        extra = [n for n in names if n not in used]
        if extra:
            allowed = [t.name for t in task.targets] + [f"{t.name}/{c}" for t in task.targets if t.kind != "binary"
                                                        for c in t.classes]
            raise DatasetFormatError(path, 1, f"column {extra[0]!r} names no target of the dataset{_suggest(extra[0], allowed)}"
                                              f"{f' ({len(extra)} unknown columns)' if len(extra) > 1 else ''}; "
                                              f"targets: {', '.join(task.names)}")
        if missing:
            raise DatasetFormatError(path, 1, f"no column for target(s) {', '.join(missing)}; every target of the dataset "
                                              f"needs one (the datamodule's 'attributes' argument keeps a subset)")

    def row(self, cells: list[str], line: int) -> np.ndarray:
        """One row's probabilities in the task's logit layout."""
        out = np.zeros(self.task.n_logits, dtype=np.float64)
        for (t, how, where), s in zip(self.sources, self.task.logit_slices):
            if how == "classes":
                values = [_probability(self.path, line, f"{t.name}/{c}", cells[i]) if t.kind == "multilabel"
                          else _number(self.path, line, f"{t.name}/{c}", cells[i]) for c, i in zip(t.classes, where)]
                if t.is_softmax:
                    if min(values) < 0 or abs(sum(values) - 1.0) > SUM_TOLERANCE:
                        raise DatasetFormatError(self.path, line, f"columns {t.name}/*: class probabilities "
                                                                  f"{', '.join(cells[i] for i in where)} are not >= 0 with sum 1")
                out[s] = values
            elif t.kind == "binary":
                out[s.start] = _probability(self.path, line, t.name, cells[where], t.classes)
            elif t.kind == "multilabel":
                text = cells[where].strip()
                chosen = [c.strip() for c in text.split(";") if c.strip() and c.strip().lower() != "none"]
                bad = [c for c in chosen if c not in t.classes]
                if bad:
                    raise DatasetFormatError(self.path, line, f"column {t.name!r}: {bad[0]!r} is not a class of {t.name!r} "
                                                              f"({', '.join(t.classes)})")
                out[s] = [float(c in chosen) for c in t.classes]
            else:
                out[s.start + _class_index(self.path, line, t.name, cells[where], t)] = 1.0
        return out


def _id_lookup(sample_ids: list[str], root: Path | None) -> tuple[dict[str, int], dict[str, int]]:
    """Positions by sample id, and by bare file name where that name is unique in the split."""
    by_id = {str(s): i for i, s in enumerate(sample_ids)}
    names: dict[str, list[int]] = {}
    for i, s in enumerate(sample_ids):
        names.setdefault(os.path.basename(str(s)), []).append(i)
    return by_id, {n: idx[0] for n, idx in names.items() if len(idx) == 1}


def _position(text: str, by_id: dict[str, int], by_name: dict[str, int], root: Path | None) -> int | None:
    if text in by_id:
        return by_id[text]
    if root is not None and os.path.isabs(text):
        try:
            rel = os.path.relpath(text, root.absolute())
        except ValueError:
            rel = ""
        if rel in by_id:
            return by_id[rel]
    norm = os.path.normpath(text)
    if norm in by_id:
        return by_id[norm]
    return by_name.get(os.path.basename(text))


def read_predictions(path: str | os.PathLike, task: TaskSpec, sample_ids: Sequence[str], *, split: str,
                     dataset: str, root: Path | None = None, id_column: str | None = None) -> np.ndarray:
    """Probabilities ``float32 [len(sample_ids), task.n_logits]`` in the split's sample order, from
    the CSV at ``path`` (see the module docstring for its format and the errors)."""
    path = Path(path)
    rows, lines = open_csv(path)
    if not rows:
        raise DatasetFormatError(path, 1, "empty file: expected a header row and one row per sample")
    columns = _Columns(path, rows[0], task, id_column)
    ids = [str(i) for i in sample_ids]
    by_id, by_name = _id_lookup(ids, root)
    probs = np.full((len(ids), task.n_logits), np.nan)
    seen: dict[int, int] = {}
    unknown: list[tuple[int, str]] = []
    width = len(rows[0])
    for cells, line in zip(rows[1:], lines[1:]):
        if len(cells) != width:
            raise DatasetFormatError(path, line, f"{len(cells)} cells; the header has {width}")
        text = cells[columns.id_index].strip()
        pos = _position(text, by_id, by_name, root)
        if pos is None:
            unknown.append((line, text))
            continue
        if pos in seen:
            raise DatasetFormatError(path, line, f"sample {ids[pos]!r} has a second row (the first is on line {seen[pos]})")
        seen[pos] = line
        probs[pos] = columns.row(cells, line)
    if unknown:
        line, text = unknown[0]
        more = f" ({len(unknown)} rows name ids outside it)" if len(unknown) > 1 else ""
        example = f"; ids are image paths relative to the dataset root, e.g. {ids[0]!r}" if len(ids) else ""
        raise DatasetFormatError(path, line, f"id {text!r} is not a sample of {dataset}'s {split} split{more}{example}")
    absent = [i for i in range(len(ids)) if i not in seen]
    if absent:
        raise DatasetFormatError(path, None, f"{len(absent)} of the {len(ids)} samples of {dataset}'s {split} split have no "
                                             f"row, e.g. {ids[absent[0]]!r}; every sample needs a prediction")
    return probs.astype(np.float32)
