"""UTKFace: ``[age]_[gender]_[race]_[date&time].jpg.chip.jpg`` (the aligned, cropped "chip" images).

Name fields: age 0-116 in years; gender 0 male, 1 female; race 0 White, 1 Black, 2 Asian,
3 Indian, 4 Others; date and time ``yyyymmddHHMMSSfff``. Images are found recursively under
``root`` (the release's ``UTKFace/`` folder or its ``part1..3`` folders).

Targets: ``gender`` (binary, 1 = female as coded in the names), ``race`` (5 classes) and age as
ordinal targets with ``bin_edges`` (lower edges in years, the last bin open-ended):

* ``age17``: the 17 age classes of the semantic-features paper (sec. 4.2.2): "5 year age intervals
  around ages that are multiples of 5 (except for the range [0-2])": 0-2, 3-7, 8-12, ..., 73-77, 78+;
* ``age8``: the 8 Adience groups (Levi & Hassner; Eidinger et al.) 0-2, 4-6, 8-13, 15-20, 25-32,
  38-43, 48-53, 60+. Adience leaves the ages between its groups undefined; here each group extends
  up to the next group's lower edge (3 -> 0-2, 7 -> 4-6, 21-24 -> 15-20, ...), the usual choice;
* ``age14``: the Flickr paper's 14 bins (sec. 4.5: "similar to the adience dataset ... they leave
  out intermediate bins, like 21-24"): the Adience groups plus the intermediate ranges 7, 14, 21-24,
  33-37, 44-47, 54-59, with age 3 folded into the first bin (the paper gives the count, not the
  edges; this is the only way to add the intermediate ranges and reach exactly 14).

``age_bins`` replaces these with ``{name: [lower edges]}``. The exact age is kept in
``SampleTable.extra["age"]`` (for MAE). UTKFace has no official split and no identities: the split
is the stratified derived one (``split: {stratify: ...}``, default on ``age8`` and ``gender``).

Malformed names (the release has a few, e.g. a missing race field) are skipped, counted and listed in
``dm.report["skipped"]`` with a warning; ``strict: true`` raises instead. The labels are the file
name, so the same name in two folders (e.g. ``UTKFace/`` and ``crop_part1/`` both extracted under
``root``) is one image listed twice, with agreeing labels: it follows the ``duplicate_rows`` policy
(``error`` names both files; ``first`` and ``drop_conflicting`` keep the first in sorted order).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from facebench.datamodules.base import UNSPLIT, FaceDataModule, register_datamodule
from facebench.core.tasks import Target, TaskSpec
from facebench.core.tasks import age_bins as age_bin_names
from facebench.datamodules.formats import DatasetFormatError, age_bin
from facebench.datamodules.table import SampleTable

UTK_RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "others")
UTK_GENDERS: tuple[str, ...] = ("male", "female")
AGE_BINS: dict[str, tuple[float, ...]] = {
    "age17": (0.0,) + tuple(float(3 + 5 * k) for k in range(16)),
    "age8": (0.0, 4.0, 8.0, 15.0, 25.0, 38.0, 48.0, 60.0),
    "age14": (0.0, 4.0, 7.0, 8.0, 14.0, 15.0, 21.0, 25.0, 33.0, 38.0, 44.0, 48.0, 54.0, 60.0),
}
MAX_AGE = 116
UTK_NAME = re.compile(r"^(?P<age>\d{1,3})_(?P<gender>\d)_(?P<race>\d)_(?P<datetime>\d{8,17})\.jpg\.chip\.jpg$")


def parse_utk_name(name: str) -> tuple[int, int, int] | str:
    """(age, gender, race) from a UTKFace file name, or why the name is malformed."""
    m = UTK_NAME.match(name)
    if not m:
        return "expected '<age>_<gender>_<race>_<yyyymmddHHMMSSfff>.jpg.chip.jpg'"
    age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
    if age > MAX_AGE:
        return f"age {age} is above {MAX_AGE}"
    if gender > 1:
        return f"gender {gender} is not 0 (male) or 1 (female)"
    if race >= len(UTK_RACES):
        return f"race {race} is not 0-4"
    return age, gender, race


@register_datamodule("utkface")
class UTKFaceDataModule(FaceDataModule):
    """UTKFace: age (exact + 17 / 8 / 14 ordinal bins), gender, race (5) parsed from file names; derived stratified split."""

    expected_files = {
        "UTKFace/[age]_[gender]_[race]_[date&time].jpg.chip.jpg": ("the aligned chips, found recursively under root; the labels are the file name: age "
                                                                   "0-116, gender 0 male / 1 female, race 0-4 (White, Black, Asian, Indian, Others)"),
    }
    default_split = {"fractions": (0.8, 0.1, 0.1), "stratify": ["age8", "gender"]}

    def __init__(self, root: str | os.PathLike | None = None, *, age_bins: dict[str, Sequence[float]] | None = None,
                 **kwargs):
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("utkface: 'root' is required (the folder holding the *.jpg.chip.jpg files)")
        self.age_bins = {k: tuple(float(e) for e in v) for k, v in (age_bins or AGE_BINS).items()}
        for name, edges in self.age_bins.items():
            if len(edges) < 2 or list(edges) != sorted(set(edges)):
                raise ValueError(f"utkface: age_bins.{name} must be at least 2 increasing lower edges, got {list(edges)}")
        if kwargs.get("split") is None and "age8" not in self.age_bins:
            self.split_cfg.stratify = [next(iter(self.age_bins)), "gender"]

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        assert self.root is not None
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: UTKFace folder is missing")
        files = sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*.jpg") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{self.root}: no *.jpg.chip.jpg image found (expected UTKFace's file names)")
        paths, rows = [], []
        malformed = 0
        for f in files:
            parsed = parse_utk_name(Path(f).name)
            if isinstance(parsed, str):
                if self.strict:
                    raise DatasetFormatError(self.root / f, None, f"malformed UTKFace name: {parsed}")
                self.report["skipped"].append(f"{f}: malformed UTKFace name ({parsed})")
                malformed += 1
                continue
            paths.append(f)
            rows.append(parsed)
        keep, _ = self.unique_rows(self.root, [Path(f).name for f in paths], rows, paths, fields=("age", "gender", "race"))
        paths, rows = [paths[i] for i in keep], [rows[i] for i in keep]
        if malformed:
            warnings.warn(f"utkface: skipped {malformed} file(s) with malformed names (see dm.report['skipped'])", stacklevel=2)
        self.report["malformed_names"] = malformed
        if not rows:
            raise DatasetFormatError(self.root, None, "no file has a well-formed UTKFace name")
        arr = np.array(rows, dtype=np.int64)
        ages = arr[:, 0]
        targets = [Target(name, "ordinal", age_bin_names(edges), bin_edges=edges) for name, edges in self.age_bins.items()]
        targets += [Target("gender", "binary", UTK_GENDERS), Target("race", "multiclass", UTK_RACES)]
        labels = np.stack([age_bin(ages, e) for e in self.age_bins.values()] + [arr[:, 1], arr[:, 2]], axis=1)
        table = SampleTable(paths=paths, labels=labels, extra={"age": ages.astype(np.float32)})
        return TaskSpec(tuple(targets), name=self.registered_name), {UNSPLIT: table}
