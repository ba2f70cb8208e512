"""CelebA (Liu et al., "Deep Learning Face Attributes in the Wild", ICCV 2015): the official layout.

Files read (all tolerate CRLF or LF line ends, runs of spaces and trailing spaces):

* ``list_attr_celeba.txt``: line 1 the row count, line 2 the attribute names, then
  ``000001.jpg -1  1 ...`` with one +1/-1 value per name;
* ``list_eval_partition.txt``: ``000001.jpg 0`` (0 train, 1 val, 2 test), the official split;
* ``identity_CelebA.txt``: ``000001.jpg 2880``;
* optional ``list_landmarks_align_celeba.txt`` (5 points in the aligned images),
  ``list_bbox_celeba.txt`` + ``list_landmarks_celeba.txt`` with ``img_celeba/`` (in the wild).

Every malformed line raises :class:`~facebench.datamodules.formats.DatasetFormatError` naming the file, the
line number and what was expected. An image listed twice in any of these files follows the
``duplicate_rows`` policy (:meth:`~facebench.datamodules.base.FaceDataModule.unique_rows`). Images go under
``img_align_celeba/`` (or ``img_celeba/`` in the wild variant).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from facebench.datamodules.base import FaceDataModule, register_datamodule
from facebench.core.tasks import TaskSpec
from facebench.datamodules.formats import DatasetFormatError, read_table_file
from facebench.datamodules.table import SampleTable

#: The 40 CelebA attributes in the order of ``list_attr_celeba.txt``.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
PARTITION_SPLITS = {0: "train", 1: "val", 2: "test"}
LANDMARK_COLUMNS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
                    "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
BBOX_COLUMNS = ("image_id", "x_1", "y_1", "width", "height")


def _plus_minus_one(token: str) -> int:
    if token == "1" or token == "+1":
        return 1
    if token == "-1":
        return 0
    if token == "0":
        return -1   # some re-distributions mark unknown with 0
    raise ValueError(f"{token!r} is not +1 or -1")


def parse_attributes(path: str | os.PathLike) -> tuple[list[str], list[str], np.ndarray]:
    """``list_attr_celeba.txt`` -> (attribute names, filenames, labels in {0,1} [N, A])."""
    names, files, values = read_table_file(path, None, count_line=True, header=(), parse=_plus_minus_one,
                                           what="+1/-1 values")
    if not names:
        raise DatasetFormatError(path, 2, "expected the attribute names on line 2")
    return names, files, values


#: Line of the first data row of each list file (after the count and header lines).
FIRST_ROW_LINE = {"list_attr_celeba.txt": 3, "list_eval_partition.txt": 1, "identity_CelebA.txt": 1,
                  "list_landmarks_align_celeba.txt": 3, "list_landmarks_celeba.txt": 3, "list_bbox_celeba.txt": 3}


@register_datamodule("celeba")
class CelebADataModule(FaceDataModule):
    """CelebA with its official split (162,770 / 19,867 / 19,962 in the full release).

    ``in_the_wild=True`` reads ``img_celeba/`` with ``list_bbox_celeba.txt`` (and
    ``list_landmarks_celeba.txt`` when present): samples then carry the face ``box``, and
    ``crop="box"`` feeds the face region while the default ``crop="image"`` feeds the whole image
    (for face-localisation methods such as LNets).
    """

    expected_files = {
        "list_attr_celeba.txt": ("line 1 the number of images, line 2 the 40 attribute names, then one line per image:"
                                 " `000001.jpg -1 1 ...` (+1 / -1 per attribute; 0: unknown)"),
        "list_eval_partition.txt": "`000001.jpg 0` per image: 0 train, 1 val, 2 test (the official split)",
        "img_align_celeba/": "the aligned images named in list_attr_celeba.txt",
        "identity_CelebA.txt": "optional: `000001.jpg 2880`, the identity of each image",
        "list_landmarks_align_celeba.txt": ("optional: line 1 the count, line 2 `lefteye_x lefteye_y ... rightmouth_y`, then 10 "
                                            "numbers per image (5 points)"),
    }
    has_identities = True

    def __init__(self, root: str | os.PathLike | None = None, *, in_the_wild: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("celeba: 'root' is required (the folder holding list_attr_celeba.txt)")
        self.in_the_wild = in_the_wild

    @property
    def image_dir(self) -> str:
        return "img_celeba" if self.in_the_wild else "img_align_celeba"

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        root = self.root
        assert root is not None
        names, files, labels = parse_attributes(root / "list_attr_celeba.txt")
        keep, dropped = self.unique_rows(root / "list_attr_celeba.txt", files, [tuple(v) for v in labels.tolist()],
                                         list(range(FIRST_ROW_LINE["list_attr_celeba.txt"], 3 + len(files))), fields=names)
        files, labels = [files[i] for i in keep], labels[keep]
        task = TaskSpec.binary_attributes(names, name=self.registered_name)
        _, pfiles, pvals = read_table_file(root / "list_eval_partition.txt", 1, count_line=False, header=None,
                                           what="partition number (0, 1 or 2)")
        partition, drop = self._by_file(root / "list_eval_partition.txt", pfiles, pvals, ("partition",))
        dropped |= drop
        identities = None
        if (root / "identity_CelebA.txt").is_file():
            _, ifiles, ivals = read_table_file(root / "identity_CelebA.txt", 1, count_line=False, header=None,
                                               what="identity number")
            identities, drop = self._by_file(root / "identity_CelebA.txt", ifiles, ivals, ("identity",))
            dropped |= drop
        lm_name = "list_landmarks_celeba.txt" if self.in_the_wild else "list_landmarks_align_celeba.txt"
        landmarks = None
        if (root / lm_name).is_file():
            _, lfiles, lvals = read_table_file(root / lm_name, 10, count_line=True, header=LANDMARK_COLUMNS,
                                               what="landmark coordinates")
            landmarks, drop = self._by_file(root / lm_name, lfiles, lvals, LANDMARK_COLUMNS)
            dropped |= drop
        boxes = None
        if self.in_the_wild:
            _, bfiles, bvals = read_table_file(root / "list_bbox_celeba.txt", 4, count_line=True, header=BBOX_COLUMNS,
                                               what="box integers (x_1 y_1 width height)")
            boxes, drop = self._by_file(root / "list_bbox_celeba.txt", bfiles, bvals, BBOX_COLUMNS[1:])
            dropped |= drop
        if dropped:   # drop_conflicting: images whose rows disagree in any file
            keep = [i for i, f in enumerate(files) if f not in dropped]
            files, labels = [files[i] for i in keep], labels[keep]
        image_dir = root / self.image_dir
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{image_dir}: image folder is missing (expected CelebA's official layout)")
        present = set(os.listdir(image_dir))
        missing = [f for f in files if f not in present]
        if missing:
            raise FileNotFoundError(f"{image_dir}: {len(missing)} image(s) listed in list_attr_celeba.txt are missing, "
                                    f"e.g. {', '.join(missing[:3])}")
        not_partitioned = [f for f in files if f not in partition]
        if not_partitioned:
            raise DatasetFormatError(root / "list_eval_partition.txt", None,
                                     f"{len(not_partitioned)} image(s) of list_attr_celeba.txt have no partition, "
                                     f"e.g. {not_partitioned[0]}")
        for f, p in partition.items():
            if int(p[0]) not in PARTITION_SPLITS:
                raise DatasetFormatError(root / "list_eval_partition.txt", pfiles.index(f) + 1,
                                         f"partition of {f} is {int(p[0])}, expected 0, 1 or 2")
        tables = {}
        split_of = np.array([int(partition[f][0]) for f in files])
        for code, split in PARTITION_SPLITS.items():
            idx = np.flatnonzero(split_of == code)
            sel = [files[i] for i in idx]
            tables[split] = SampleTable(
                paths=[f"{self.image_dir}/{f}" for f in sel],
                labels=labels[idx],
                identities=np.array([int(identities[f][0]) if f in identities else -1 for f in sel]) if identities else None,
                landmarks=np.stack([landmarks[f].reshape(5, 2).astype(np.float32) for f in sel]) if landmarks and sel else None,
                boxes=np.stack([boxes[f].astype(np.float32) for f in sel]) if boxes and sel else None,
            )
        return task, tables

    def _by_file(self, path: Path, files: list[str], values: np.ndarray,
                 fields: Sequence[str]) -> tuple[dict[str, np.ndarray], set[str]]:
        """Rows of a list file by image name, under the ``duplicate_rows`` policy, and the images
        dropped altogether (``drop_conflicting``)."""
        first = FIRST_ROW_LINE.get(path.name, 1)
        keep, dropped = self.unique_rows(path, files, [tuple(v) for v in values.tolist()],
                                         list(range(first, first + len(files))), fields=fields)
        return {files[i]: values[i] for i in keep}, dropped


@register_datamodule("celeba_wild")
class CelebAWildDataModule(CelebADataModule):
    """CelebA in the wild: full img_celeba/ images; every sample carries its face ``box`` (list_bbox_celeba.txt).

    The network sees the whole image by default (``crop: image``, for face-localising methods such
    as LNets); ``crop: box`` (with ``box_margin``) feeds the face region instead.
    """

    expected_files = {
        "list_attr_celeba.txt": ("line 1 the number of images, line 2 the 40 attribute names, then one line per image:"
                                 " `000001.jpg -1 1 ...` (+1 / -1 per attribute; 0: unknown)"),
        "list_eval_partition.txt": "`000001.jpg 0` per image: 0 train, 1 val, 2 test (the official split)",
        "list_bbox_celeba.txt": ("line 1 the count, line 2 `image_id x_1 y_1 width height`, then one face box per "
                                 "image"),
        "img_celeba/": "the in-the-wild images named in list_attr_celeba.txt",
        "identity_CelebA.txt": "optional: `000001.jpg 2880`, the identity of each image",
        "list_landmarks_celeba.txt": ("optional: 5 points per in-the-wild image (same layout as "
                                      "list_landmarks_align_celeba.txt)"),
    }

    def __init__(self, root: str | os.PathLike | None = None, **kwargs):
        kwargs.setdefault("in_the_wild", True)
        super().__init__(root, **kwargs)
