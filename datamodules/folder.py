"""An image folder with a CSV of labels: the shape of private sets such as VicarVision's VV set
(semantic-features paper sec. 3.2: emotion, 17 age classes, gender, 5 ethnicities, glasses, beard and
moustache amounts) and the Flickr paper's sets (sec. 4: emotion, 14 age bins, ethnicity, gender).

Files read (under ``root``): ``labels.csv`` (``csv_file``) with a header; the ``path`` column
(``path_column``) holds image paths relative to ``root`` (after ``image_dir``); optional ``identity``
and ``split`` (``train`` / ``val`` / ``test``) columns; every other column is a target whose kind is
declared in the config::

    targets:
      emotion: {kind: multiclass, classes: [anger, disgust, fear, happiness, sadness, surprise, neutral]}
      age: {kind: ordinal, bin_edges: [0, 3, 8, 13, ...]}      # numeric ages, binned; exact age in extra["age"]
      gender: {kind: binary, classes: [male, female]}
      accessories: {kind: multilabel, classes: [glasses, hat]}  # cells like "glasses;hat", "none"
      beard: {kind: ordinal, classes: [none, light, heavy], column: beard_amount}

Cell values: a class name or a class index; binary also ``1``/``0``, ``1``/``-1``, ``true``/``false``,
``yes``/``no``; an empty cell is a missing label (``-1``). Without ``targets`` the file
``targets.yaml`` in ``root`` is read (SynthFaces writes one), else the kinds are inferred: 0/1-like
columns are binary, other columns with at most 20 distinct values multi-class (sorted values); the
inferred targets are listed in one warning (so that an id column taken for a target is noticed).
Any column name is a valid target name (``user.id`` too).

Labels that differ only in case (``anger`` / ``ANGER``; surrounding spaces are always stripped) are an
error naming the spellings when the classes are inferred; ``normalize_labels: true`` folds cells and
declared classes to lower case. An image listed on two rows follows ``duplicate_rows`` (compared
values: the parsed labels, identity and split).

Split: the ``split`` column when present, else the derived split (``split: {...}``; identity-disjoint
when there is an ``identity`` column, as the Flickr paper separates persons).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from facebench.datamodules.base import UNSPLIT, FaceDataModule, register_datamodule
from facebench.core.tasks import MISSING, TARGET_KINDS, Target, TaskSpec, age_bins
from facebench.datamodules.formats import DatasetFormatError, age_bin, check_label_spellings, fold_label, header_columns, open_csv
from facebench.datamodules.table import SampleTable

TRUE_WORDS = {"1", "+1", "true", "yes", "y"}
FALSE_WORDS = {"0", "-1", "false", "no", "n"}
MAX_INFERRED_CLASSES = 20
TARGET_KEYS = {"kind", "classes", "bin_edges", "column"}


def _sort_values(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def infer_targets(path: Path, header: list[str], rows: list[list[str]], reserved: set[str],
                  normalize: bool = False) -> dict[str, dict[str, Any]]:
    """Target declarations guessed from the columns' values (see the module docstring); labels
    differing only in case are an error unless ``normalize`` folds them."""
    out = {}
    for j, name in enumerate(header):
        if name in reserved:
            continue
        values = {r[j].strip() for r in rows if r[j].strip()}
        low = {v.lower() for v in values}
        if low and (low <= TRUE_WORDS | FALSE_WORDS) and len(low) <= 2:
            out[name] = {"kind": "binary"}
            continue
        if normalize:
            values = low
        else:
            check_label_spellings(path, f"column {name!r}", {r[j] for r in rows})
        if 2 <= len(values) <= MAX_INFERRED_CLASSES:
            out[name] = {"kind": "multiclass", "classes": _sort_values(values)}
        else:
            raise DatasetFormatError(path, 1, f"column {name!r} has {len(values)} distinct values; declare its kind under "
                                              f"'targets' (e.g. {{kind: ordinal, bin_edges: [...]}} for numeric ages)")
    return out


def build_target(name: str, cfg: dict[str, Any], normalize: bool = False) -> Target:
    unknown = set(cfg) - TARGET_KEYS
    if unknown:
        raise ValueError(f"folder: targets.{name}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(TARGET_KEYS))}")
    kind = cfg.get("kind", "multiclass")
    if kind not in TARGET_KINDS:
        raise ValueError(f"folder: targets.{name}.kind must be one of {TARGET_KINDS}, got {kind!r}")
    edges = cfg.get("bin_edges")
    classes = cfg.get("classes")
    if classes is None:
        if kind == "binary":
            classes = ("no", "yes")
        elif edges is not None:
            classes = age_bins(edges)
        else:
            raise ValueError(f"folder: targets.{name} ({kind}) needs 'classes'" + (" or 'bin_edges'" if kind == "ordinal" else ""))
    if edges is not None and kind != "ordinal":
        raise ValueError(f"folder: targets.{name}: bin_edges are for ordinal targets")
    classes = tuple(fold_label(str(c)) if normalize else str(c) for c in classes)
    if len(set(classes)) != len(classes):
        folded = " after folding case (normalize_labels)" if normalize else ""
        raise ValueError(f"folder: targets.{name}: classes {list(classes)} repeat a name{folded}")
    return Target(name, kind, classes, bin_edges=tuple(edges) if edges is not None else None)


def parse_cell(target: Target, value: str, path: Path, line: int,
               normalize: bool = False) -> list[int] | tuple[list[int], float]:
    """Label slots of one cell (and the numeric value of a binned ordinal cell); ``normalize``
    folds the cell's case (the classes are folded already)."""
    v = fold_label(value) if normalize else value.strip()
    if not v:
        return [MISSING] * target.n_label_slots
    classes = list(target.classes)
    if target.kind == "multilabel":
        if v.lower() == "none":
            return [0] * len(classes)
        parts = [p.strip() for p in v.replace("|", ";").split(";") if p.strip()]
        bad = [p for p in parts if p not in classes]
        if bad:
            raise DatasetFormatError(path, line, f"{target.name}: {bad[0]!r} is not one of {', '.join(classes)}")
        return [int(c in parts) for c in classes]
    if v in classes:
        return [classes.index(v)]
    if target.kind == "binary" and v.lower() in TRUE_WORDS | FALSE_WORDS:
        return [int(v.lower() in TRUE_WORDS)]
    if target.bin_edges is not None:
        try:
            x = float(v)
        except ValueError:
            raise DatasetFormatError(path, line, f"{target.name}: expected a number or one of {', '.join(classes)}, got {v!r}") from None
        return [int(age_bin(np.array([x]), target.bin_edges)[0])], x
    if v.lstrip("-").isdigit() and 0 <= int(v) < len(classes):
        return [int(v)]
    raise DatasetFormatError(path, line, f"{target.name}: expected one of {', '.join(classes)} (or a class index), got {v!r}")


def row_values(task: TaskSpec, labels: np.ndarray, exact: dict[str, float]) -> tuple[str, ...]:
    """One row's labels as class names per target (multi-label: ``a;b``; a binned age: the number;
    missing: ``""``), to compare repeated rows and show how they differ."""
    out = []
    for t, sl in zip(task.targets, task.label_slices):
        y = labels[sl]
        if t.name in exact and np.isfinite(exact[t.name]):
            out.append(f"{exact[t.name]:g}")
        elif t.kind == "multilabel":
            out.append("" if (y < 0).any() else ";".join(c for c, v in zip(t.classes, y) if v == 1))
        else:
            out.append(t.classes[int(y[0])] if y[0] >= 0 else "")
    return tuple(out)


@register_datamodule("folder")
class FolderDataModule(FaceDataModule):
    """Image folder + labels CSV with declared target kinds (VV / Flickr private-set shape); optional identity and split columns."""

    expected_files = {
        "labels.csv (csv_file)": ("a header row; the `path` column (path_column) holds image paths relative to root "
                                  "(after image_dir); optional `identity` (identity_column) and `split` (split_column: "
                                  "train / val / test) columns; every other column is a target"),
        "targets.yaml": ("optional: `targets: {name: {kind: binary|multiclass|multilabel|ordinal, classes: "
                         "[...], bin_edges: [...], column: ...}}` (or the targets argument; without either the"
                         " kinds are inferred from the values)"),
        "<image_dir>/...": "the images named in the path column",
    }

    def __init__(self, root: str | os.PathLike | None = None, *, csv_file: str = "labels.csv", path_column: str = "path",
                 identity_column: str = "identity", split_column: str = "split", image_dir: str = "",
                 targets: dict[str, dict[str, Any]] | None = None, normalize_labels: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("folder: 'root' is required (the folder holding labels.csv)")
        self.csv_file, self.path_column, self.image_dir = csv_file, path_column, image_dir
        self.identity_column, self.split_column = identity_column, split_column
        self.target_cfg, self.normalize_labels = targets, bool(normalize_labels)
        if targets is not None:
            for name, cfg in targets.items():
                build_target(name, cfg or {}, self.normalize_labels)

    def declared_targets(self, path: Path, header: list[str], rows: list[list[str]]) -> dict[str, dict[str, Any]]:
        assert self.root is not None
        if self.target_cfg is not None:
            return self.target_cfg
        sidecar = self.root / "targets.yaml"
        if sidecar.is_file():
            try:
                declared = yaml.safe_load(sidecar.read_text())
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                raise DatasetFormatError(sidecar, mark.line + 1 if mark else None, f"not valid YAML ({exc})") from None
            if not isinstance(declared, dict) or not isinstance(declared.get("targets"), dict):
                raise DatasetFormatError(sidecar, 1, "expected a mapping 'targets: {name: {kind: ..., classes: [...]}}'")
            return declared["targets"]
        inferred = infer_targets(path, header, rows, {self.path_column, self.identity_column, self.split_column},
                                 self.normalize_labels)
        shown = ", ".join(f"{n} ({c['kind']}" + (f", {len(c['classes'])} classes)" if "classes" in c else ")")
                          for n, c in inferred.items())
        warnings.warn(f"folder: no targets declared for {path}; taking {len(inferred)} column(s) as targets: {shown}. "
                      f"Declare 'targets' (or a targets.yaml) to choose them, e.g. to leave out an id column",
                      stacklevel=3)
        return inferred

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        assert self.root is not None
        path = self.root / self.csv_file
        rows, lines = open_csv(path)
        if not rows:
            raise DatasetFormatError(path, 1, f"empty file; expected a header with a {self.path_column!r} column")
        header = [h.strip() for h in rows[0]]
        header_columns(path, header, (self.path_column,), lines[0])
        body, body_lines = rows[1:], lines[1:]
        for row, line in zip(body, body_lines):
            if len(row) != len(header):
                raise DatasetFormatError(path, line, f"expected {len(header)} fields like the header, got {len(row)}")
        declared = self.declared_targets(path, header, body)
        targets = [build_target(name, cfg or {}, self.normalize_labels) for name, cfg in declared.items()]
        columns = {}
        for t in targets:
            col = (declared[t.name] or {}).get("column", t.name)
            columns[t.name] = header_columns(path, header, (col,), lines[0])[col]
        task = TaskSpec(tuple(targets), name=self.registered_name)
        labels = np.full((len(body), task.n_label_slots), MISSING, dtype=np.int64)
        extra = {t.name: np.full(len(body), np.nan, dtype=np.float32) for t in targets if t.bin_edges is not None}
        pcol = header.index(self.path_column)
        paths = []
        for k, (row, line) in enumerate(zip(body, body_lines)):
            rel = row[pcol].strip()
            if not rel:
                raise DatasetFormatError(path, line, f"empty {self.path_column!r}; expected an image path")
            full = Path(self.image_dir) / rel if self.image_dir else Path(rel)
            if not (self.root / full).is_file():
                raise DatasetFormatError(path, line, f"image {full} listed here does not exist")
            paths.append(str(full))
            for t, sl in zip(targets, task.label_slices):
                parsed = parse_cell(t, row[columns[t.name]], path, line, self.normalize_labels)
                if isinstance(parsed, tuple):
                    parsed, extra[t.name][k] = parsed
                labels[k, sl] = parsed
        identities = None
        if self.identity_column in header:
            ids = [r[header.index(self.identity_column)].strip() for r in body]
            names = sorted(set(ids) - {""})
            code = {n: i for i, n in enumerate(names)}
            identities = np.array([code.get(i, -1) for i in ids], dtype=np.int64)
        table = SampleTable(paths=paths, labels=labels, identities=identities, extra=extra)
        split = np.array([r[header.index(self.split_column)].strip() for r in body]) if self.split_column in header else None
        meta = [c for c in (self.identity_column, self.split_column) if c in header]
        values = [row_values(task, labels[k], {n: e[k] for n, e in extra.items()})
                  + tuple(r[header.index(c)].strip() for c in meta) for k, r in enumerate(body)]
        keep, _ = self.unique_rows(path, paths, values, body_lines, fields=[*task.names, *meta])
        if len(keep) < len(body):
            table, split, body_lines = table.take(keep), (split[keep] if split is not None else None), \
                [body_lines[i] for i in keep]
        if split is None:
            return task, {UNSPLIT: table}
        bad = [(s, line) for s, line in zip(split, body_lines) if s not in ("train", "val", "test")]
        if bad:
            raise DatasetFormatError(path, bad[0][1], f"expected split train, val or test, got {bad[0][0]!r}")
        return task, {s: table.take(np.flatnonzero(split == s)) for s in ("train", "val", "test") if (split == s).any()}
