"""LFWA: LFW images with the 40 face attributes of Liu et al. (ICCV 2015; used by LNets+ANet sec. 5 and
MCNN-AUX, "6,263 for training and 6,880 for testing").

Files read (under ``root``):

* images ``lfw/<Name>/<Name>_NNNN.jpg`` (LFW's layout; colour or grayscale JPEGs); the identity is
  the folder name;
* the labels, ``lfwa_attributes.csv`` (``labels_file``): a text export of the release's .mat file,
  header ``image,<attribute>,...`` then one row per image, ``image`` being ``Name/Name_0001.jpg`` or
  ``Name_0001.jpg`` (the folder is the name without ``_NNNN.jpg``), values ``1``/``-1`` or
  ``1``/``0`` (``-1`` with ``0`` in the same file: ``0`` means unknown). Commas or runs of
  whitespace separate the fields. Attribute names are CelebA's 40 (spaces, case and underscores
  are forgiven, so ``"Wearing Hat"`` is ``Wearing_Hat``); any subset of them, in any order;
* optionally the split, ``lfwa_split.csv`` (``split_file``): header ``image,split`` then
  ``train`` / ``val`` / ``test`` (or ``0`` / ``1`` / ``2``) per image (the papers' 6,263 / 6,880
  split). Without ``val`` the ``split.val_from_train`` fraction of the training identities becomes
  validation (the papers have no validation split).

An image listed twice in either file follows the ``duplicate_rows`` policy.

Without a split file the derived split is used (``split: {...}``; default 48% train+val / 52% test
like the papers, not identity-disjoint unless ``by_identity: true``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from facebench.datamodules.base import UNSPLIT, FaceDataModule, register_datamodule
from facebench.datamodules.celeba import CELEBA_ATTRIBUTES
from facebench.core.tasks import MISSING, TaskSpec
from facebench.datamodules.formats import DatasetFormatError, header_columns, read_delimited
from facebench.datamodules.table import SampleTable

LFWA_ATTRIBUTES: tuple[str, ...] = CELEBA_ATTRIBUTES
LFW_FILE = re.compile(r"^(?P<name>.+)_(?P<number>\d{4})\.jpg$")
SPLIT_CODES = {"train": "train", "val": "val", "test": "test", "0": "train", "1": "val", "2": "test"}


def canonical_attribute(name: str) -> str | None:
    key = re.sub(r"[\s_]+", "_", name.strip()).lower()
    for a in LFWA_ATTRIBUTES:
        if a.lower() == key:
            return a
    return None


def lfw_relpath(image: str) -> str | None:
    """``Name/Name_0001.jpg`` for ``Name_0001.jpg`` or ``Name/Name_0001.jpg`` (``None`` if not LFW-like)."""
    image = image.strip().replace("\\", "/")
    base = image.rsplit("/", 1)[-1]
    m = LFW_FILE.match(base)
    if not m:
        return None
    return f"{m['name']}/{base}"


def parse_lfwa_labels(path: Path) -> tuple[list[str], list[str], np.ndarray, list[int]]:
    """(attribute names, image relpaths ``Name/Name_NNNN.jpg``, labels {0,1,-1} [N, A], line numbers)."""
    rows, lines = read_delimited(path)
    if not rows:
        raise DatasetFormatError(path, 1, "empty file; expected the header 'image,<attribute>,...'")
    header = [h.strip() for h in rows[0]]
    if header[0].lower() not in ("image", "image_id", "file", "path", "name"):
        raise DatasetFormatError(path, lines[0], f"expected the first header column to be 'image', got {header[0]!r}")
    names = []
    for col, h in enumerate(header[1:], start=2):
        a = canonical_attribute(h)
        if a is None:
            raise DatasetFormatError(path, lines[0], f"column {col}: {h!r} is not one of the 40 LFWA attributes "
                                                     f"({', '.join(LFWA_ATTRIBUTES)})")
        if a in names:
            raise DatasetFormatError(path, lines[0], f"column {col}: attribute {a} appears twice")
        names.append(a)
    raw = np.zeros((len(rows) - 1, len(names)), dtype=np.int64)
    files = []
    for k, (row, line) in enumerate(zip(rows[1:], lines[1:])):
        if len(row) != len(header):
            raise DatasetFormatError(path, line, f"expected an image name and {len(names)} values, got {len(row)} field(s)")
        rel = lfw_relpath(row[0])
        if rel is None:
            raise DatasetFormatError(path, line, f"expected an LFW image name like Name_0001.jpg, got {row[0]!r}")
        try:
            vals = [int(float(v)) for v in row[1:]]
        except ValueError:
            raise DatasetFormatError(path, line, f"expected 1/-1 or 1/0 values, got {','.join(row[1:])[:120]!r}") from None
        if any(v not in (-1, 0, 1) for v in vals):
            raise DatasetFormatError(path, line, f"expected 1/-1 or 1/0 values, got {[v for v in vals if v not in (-1, 0, 1)][:3]}")
        raw[k] = vals
        files.append(rel)
    if (raw == -1).any():
        labels = np.where(raw == 1, 1, np.where(raw == -1, 0, MISSING))   # +1/-1 (0 = unknown)
    else:
        labels = raw.copy()                                                 # 1/0
    return names, files, labels, lines[1:]


@register_datamodule("lfwa")
class LFWADataModule(FaceDataModule):
    """LFWA: LFW images + 40 binary attributes from a CSV/text export; the papers' 6,263 / 6,880 split from a split file."""

    expected_files = {
        "lfw/<Name>/<Name>_NNNN.jpg": "LFW's images; the folder name is the identity",
        "lfwa_attributes.csv (labels_file)": ("header `image,<attribute>,...` then one row per image (`Name/Name_0001.jpg` or "
                                              "`Name_0001.jpg`), values 1 / -1 or 1 / 0; comma or whitespace separated"),
        "lfwa_split.csv (split_file)": ("optional: header `image,split`, then train / val / test (or 0 / 1 / 2) per image; "
                                        "without it the derived split"),
    }
    has_identities = True
    default_split = {"fractions": (0.43, 0.05, 0.52), "by_identity": False}

    def __init__(self, root: str | os.PathLike | None = None, *, image_dir: str = "lfw",
                 labels_file: str = "lfwa_attributes.csv", split_file: str | None = "lfwa_split.csv", **kwargs):
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("lfwa: 'root' is required (the folder holding lfw/ and lfwa_attributes.csv)")
        self.image_dir, self.labels_file, self.split_file = image_dir, labels_file, split_file

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        assert self.root is not None
        label_path = self.root / self.labels_file
        names, files, labels, lines = parse_lfwa_labels(label_path)
        keep, _ = self.unique_rows(label_path, files, [tuple(v) for v in labels.tolist()], lines, fields=names)
        files, labels, lines = [files[i] for i in keep], labels[keep], [lines[i] for i in keep]
        for f, line in zip(files, lines):
            if not (self.root / self.image_dir / f).is_file():
                raise DatasetFormatError(label_path, line, f"image {self.image_dir}/{f} listed here does not exist")
        people = sorted({f.split("/")[0] for f in files})
        person_id = {p: i for i, p in enumerate(people)}
        self.identity_names = people
        identities = np.array([person_id[f.split("/")[0]] for f in files], dtype=np.int64)
        table = SampleTable(paths=[f"{self.image_dir}/{f}" for f in files], labels=labels, identities=identities)
        task = TaskSpec.binary_attributes(names, name=self.registered_name)
        split_path = self.root / self.split_file if self.split_file else None
        if split_path is None or not split_path.is_file():
            return task, {UNSPLIT: table}
        rows, slines = read_delimited(split_path)
        if not rows:
            raise DatasetFormatError(split_path, 1, "empty file; expected the header 'image,split'")
        cols = header_columns(split_path, rows[0], ("image", "split"), slines[0])
        rels, codes_read = [], []
        for row, line in zip(rows[1:], slines[1:]):
            if len(row) != len(rows[0]):
                raise DatasetFormatError(split_path, line, f"expected {len(rows[0])} fields like the header, got {len(row)}")
            rel = lfw_relpath(row[cols["image"]])
            code = SPLIT_CODES.get(row[cols["split"]].strip().lower())
            if rel is None or code is None:
                raise DatasetFormatError(split_path, line, f"expected '<Name_0001.jpg>,<train|val|test>', got {','.join(row)!r}")
            rels.append(rel)
            codes_read.append(code)
        keep, dropped = self.unique_rows(split_path, rels, codes_read, slines[1:])
        split_of = {rels[i]: codes_read[i] for i in keep}
        if dropped:   # drop_conflicting: images with two different splits
            keep = [i for i, f in enumerate(files) if f not in dropped]
            table, files, lines = table.take(keep), [files[i] for i in keep], [lines[i] for i in keep]
        missing = [(f, line) for f, line in zip(files, lines) if f not in split_of]
        if missing:
            raise DatasetFormatError(split_path, None, f"{len(missing)} image(s) of {self.labels_file} have no split, "
                                                       f"e.g. {missing[0][0]} (line {missing[0][1]} of {self.labels_file})")
        codes = np.array([split_of[f] for f in files])
        return task, {s: table.take(np.flatnonzero(codes == s)) for s in ("train", "val", "test") if (codes == s).any()}
