"""Crowd-labelled face attribute sets in the FAD format (LACNN paper, sec. 2: PubFig images, each
labelled by 3 MTurk raters for 9 traits) and other PubFig-style or private multi-rater sets.

Files read (under ``root``):

* the ratings, ``ratings.csv`` (``ratings_file``), either long, header ``image,rater,trait,label``
  (one row per rating), or wide, header ``image,rater,<trait1>,<trait2>,...`` (one row per image and
  rater). ``image`` is a path relative to ``root`` (after ``image_dir``); ``rater`` any id; ``label``
  a class name (an empty cell: no answer);
* optionally ``images.csv`` (``metadata_file``): header ``image`` plus ``identity`` and / or
  ``split`` (``train`` / ``val`` / ``test``) columns.

Targets: one per trait, with the classes declared in ``traits: {gender: {classes: [female, male]}, ...}``
(order = class index; a trait with 2 classes is binary with the second class positive) or, when not
declared, the sorted labels seen. Per image and trait: ``votes`` = rater counts per class, ``label`` =
the majority class; a tie has no majority and the label is missing (``-1``). Labels of an undeclared
trait that differ only in case (``male`` / ``Male``) are an error naming the spellings;
``normalize_labels: true`` folds them (and the declared classes) to lower case.

Repeated rows (the same image, rater and trait in the long format, the same image and rater in the
wide one, an image listed twice in ``images.csv``) follow the ``duplicate_rows`` policy;
``drop_conflicting`` drops the image with all its ratings.

Rater filtering (sec. 2.1): raters "who disagreed with their peers on over a third of the labels for
the objective traits" are dropped with all their ratings. A rating disagrees when the majority of the
other raters of that image (ties: not counted) chose another class. ``objective_traits`` lists the
objective traits (default: FAD's gender, ethnicity, age, makeup, hair_color, those present);
``max_disagreement`` is the third; ``rater_filter: false`` keeps everyone.

Split: the FAD paper's "80/20 train/test split ... maintaining the same data distribution across the
training and test sets for all traits" (sec. 4): by default 70% train, 10% validation (taken from the
paper's 80% for model selection, which the paper does not describe), 20% test, stratified on the joint
majority labels of all traits (rare combinations pooled), identity-disjoint when identities are
given. An ``images.csv`` split column overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from facebench.datamodules.base import UNSPLIT, FaceDataModule, register_datamodule
from facebench.datamodules.formats import DatasetFormatError, check_label_spellings, fold_label, header_columns, open_csv
from facebench.datamodules.table import SampleTable
from facebench.core.tasks import MISSING, Target, TaskSpec

FAD_OBJECTIVE_TRAITS: tuple[str, ...] = ("gender", "ethnicity", "age", "makeup", "hair_color")
LONG_COLUMNS = ("image", "rater", "trait", "label")


def majority_labels(counts: np.ndarray) -> np.ndarray:
    """Class with the most votes per row; ``-1`` for ties and rows without votes."""
    top = counts.max(1)
    winners = (counts == top[:, None]).sum(1)
    return np.where((top > 0) & (winners == 1), counts.argmax(1), MISSING).astype(np.int64)


def peer_disagreement(image: np.ndarray, rater: np.ndarray, label: np.ndarray, n_images: int, n_classes: int,
                      n_raters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per rater: (ratings compared with a peer majority, ratings that disagree with it). The peers of
    a rating are the other raters of the same image; a tie among them compares nothing."""
    counts = np.zeros((n_images, n_classes), dtype=np.int64)
    np.add.at(counts, (image, label), 1)
    peers = counts[image].copy()
    peers[np.arange(len(label)), label] -= 1
    peer_major = majority_labels(peers)
    compared = peer_major >= 0
    disagree = compared & (peer_major != label)
    return (np.bincount(rater[compared], minlength=n_raters), np.bincount(rater[disagree], minlength=n_raters))


@register_datamodule("multirater")
class MultiRaterDataModule(FaceDataModule):
    """Crowd-labelled traits (FAD / PubFig style): long or wide rating CSV, majority labels, votes, rater filtering."""

    expected_files = {
        "ratings.csv (ratings_file)": ("long, header `image,rater,trait,label` (one row per rating), or wide, header "
                                       "`image,rater,<trait>,...`; image: a path relative to root (after image_dir), label: "
                                       "a class name (empty: no answer)"),
        "images.csv (metadata_file)": ("optional: header `image` plus `identity` and / or `split` (train / val / test) "
                                       "columns"),
        "<image_dir>/...": "the images named in the image column",
    }
    default_split = {"fractions": (0.7, 0.1, 0.2), "stratify": "all"}

    def __init__(self, root: str | os.PathLike | None = None, *, ratings_file: str = "ratings.csv",
                 metadata_file: str | None = "images.csv", image_dir: str = "", traits: dict[str, Any] | None = None,
                 objective_traits: list[str] | None = None, rater_filter: bool = True,
                 max_disagreement: float = 1 / 3, normalize_labels: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        if self.root is None:
            raise ValueError("multirater: 'root' is required (the folder holding ratings.csv)")
        self.ratings_file, self.metadata_file, self.image_dir = ratings_file, metadata_file, image_dir
        self.trait_cfg = dict(traits or {})
        for name, cfg in self.trait_cfg.items():
            if not isinstance(cfg, dict) or not set(cfg) <= {"classes", "kind"} or len(cfg.get("classes", [1, 2])) < 2:
                raise ValueError(f"multirater: traits.{name} must be {{classes: [c1, c2, ...], kind: binary|multiclass}}, got {cfg!r}")
        self.objective_traits = list(objective_traits) if objective_traits is not None else None
        self.rater_filter, self.max_disagreement = rater_filter, float(max_disagreement)
        self.normalize_labels = bool(normalize_labels)

    def fold(self, label: str) -> str:
        """A label as compared with the classes: stripped, and lower-cased with ``normalize_labels``."""
        return fold_label(label) if self.normalize_labels else label.strip()

    # -- parsing -----------------------------------------------------------------------------------
    def read_ratings(self) -> tuple[list[str], list[str], list[str], list[tuple[str, str, str, str, int]]]:
        """(images, raters, traits in file order, ratings (image, rater, trait, label, line))."""
        assert self.root is not None
        path = self.root / self.ratings_file
        rows, lines = open_csv(path)
        if not rows:
            raise DatasetFormatError(path, 1, "empty file; expected the header 'image,rater,trait,label' or 'image,rater,<traits>'")
        header = [h.strip() for h in rows[0]]
        cols = header_columns(path, header, ("image", "rater"), lines[0])
        long = set(LONG_COLUMNS) <= set(header)
        if long:
            cols = header_columns(path, header, LONG_COLUMNS, lines[0])
            trait_cols = {}
        else:
            trait_cols = {h: j for j, h in enumerate(header) if h not in ("image", "rater") and h}
            if not trait_cols:
                raise DatasetFormatError(path, lines[0], "expected trait columns after image,rater (wide format) or the "
                                                         "long header 'image,rater,trait,label'")
        fold = self.fold
        keys, values = [], []
        for row, line in zip(rows[1:], lines[1:]):
            if len(row) != len(header):
                raise DatasetFormatError(path, line, f"expected {len(header)} fields like the header, got {len(row)}")
            image, rater = row[cols["image"]].strip(), row[cols["rater"]].strip()
            if not image or not rater:
                raise DatasetFormatError(path, line, "expected an image path and a rater id")
            keys.append((image, rater, row[cols["trait"]].strip()) if long else (image, rater))
            values.append((fold(row[cols["label"]]),) if long else tuple(fold(row[j]) for j in trait_cols.values()))
        keep, dropped = self.unique_rows(path, keys, values, lines[1:], fields=("label",) if long else list(trait_cols),
                                         what="rating", key_name=lambda k: f"the rating of {k[0]} by rater {k[1]}"
                                         + (f" for trait {k[2]}" if len(k) > 2 else ""))
        dropped_images = {k[0] for k in dropped}   # drop_conflicting: the image goes
        ratings, traits_seen = [], dict.fromkeys(trait_cols)
        for i in keep:
            (image, rater, *_), line = keys[i], lines[1 + i]
            if image in dropped_images:
                continue
            pairs = [(keys[i][2], values[i][0])] if long else list(zip(trait_cols, values[i]))
            for trait, label in pairs:
                if not trait:
                    raise DatasetFormatError(path, line, "expected a trait name")
                if self.trait_cfg and trait not in self.trait_cfg:
                    raise DatasetFormatError(path, line, f"trait {trait!r} is not declared; declared traits: {', '.join(self.trait_cfg)}")
                if label:
                    traits_seen.setdefault(trait)
                    ratings.append((image, rater, trait, label, line))
        if not ratings:
            raise DatasetFormatError(path, None, "no rating found")
        images = list(dict.fromkeys(r[0] for r in ratings))
        raters = list(dict.fromkeys(r[1] for r in ratings))
        traits = list(self.trait_cfg) or list(traits_seen)
        for t in traits:
            if t not in self.trait_cfg:
                check_label_spellings(path, f"trait {t}", {r[3] for r in ratings if r[2] == t})
        return images, raters, traits, ratings

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        assert self.root is not None
        path = self.root / self.ratings_file
        images, raters, traits, ratings = self.read_ratings()
        image_idx = {im: i for i, im in enumerate(images)}
        rater_idx = {r: i for i, r in enumerate(raters)}
        targets = []
        for t in traits:
            cfg = self.trait_cfg.get(t)
            classes = tuple(self.fold(str(c)) for c in cfg["classes"]) if cfg else tuple(sorted({r[3] for r in ratings if r[2] == t}))
            if len(classes) < 2:
                classes = classes + ("other",) if classes else ("no", "yes")
            kind = (cfg or {}).get("kind") or ("binary" if len(classes) == 2 else "multiclass")
            targets.append(Target(t, kind, classes, has_votes=True))
        task = TaskSpec(tuple(targets), name=self.registered_name)
        # ratings as arrays per trait
        per_trait: dict[str, tuple[list[int], list[int], list[int]]] = {t: ([], [], []) for t in traits}
        for image, rater, trait, label, line in ratings:
            target = task.target(trait)
            if label not in target.classes:
                raise DatasetFormatError(path, line, f"label {label!r} of trait {trait} is not one of {', '.join(target.classes)}")
            key = (image_idx[image], rater_idx[rater], trait)   # unique: repeated rows follow duplicate_rows
            ims, rs, ls = per_trait[trait]
            ims.append(key[0])
            rs.append(key[1])
            ls.append(target.classes.index(label))
        arrays = {t: tuple(np.asarray(v, dtype=np.int64) for v in per_trait[t]) for t in traits}
        dropped = self.filter_raters(task, arrays, len(images), len(raters))
        self.report["raters"] = {"total": len(raters), "dropped": [raters[r] for r in dropped],
                                 "max_disagreement": self.max_disagreement}
        keep_rater = np.ones(len(raters), dtype=bool)
        keep_rater[dropped] = False
        votes, labels = {}, []
        for t in task.targets:
            ims, rs, ls = arrays[t.name]
            ok = keep_rater[rs]
            counts = np.zeros((len(images), t.n_classes), dtype=np.int64)
            np.add.at(counts, (ims[ok], ls[ok]), 1)
            votes[t.name] = counts
            labels.append(majority_labels(counts))
        for im in images:
            if not (self.root / self.image_dir / im).is_file():
                line = next(r[4] for r in ratings if r[0] == im)
                raise DatasetFormatError(path, line, f"image {Path(self.image_dir) / im} listed here does not exist")
        identities, split, dropped = self.read_metadata(images)
        table = SampleTable(paths=[str(Path(self.image_dir) / im) if self.image_dir else im for im in images],
                            labels=np.stack(labels, axis=1), identities=identities, votes=votes)
        if dropped:   # drop_conflicting: images listed twice in images.csv with different identity / split
            keep = np.array([i for i, im in enumerate(images) if im not in dropped], dtype=np.int64)
            table, split = table.take(keep), (split[keep] if split is not None else None)
        if split is None:
            return task, {UNSPLIT: table}
        return task, {s: table.take(np.flatnonzero(split == s)) for s in ("train", "val", "test") if (split == s).any()}

    def filter_raters(self, task: TaskSpec, arrays: dict[str, tuple[np.ndarray, ...]], n_images: int,
                      n_raters: int) -> np.ndarray:
        """Indices of raters who disagree with their peers on more than ``max_disagreement`` of their
        objective ratings (LACNN sec. 2.1)."""
        if not self.rater_filter:
            return np.zeros(0, dtype=np.int64)
        objective = self.objective_traits if self.objective_traits is not None else \
            [t for t in FAD_OBJECTIVE_TRAITS if t in task.names]
        unknown = [t for t in objective if t not in task.names]
        if unknown:
            raise ValueError(f"multirater: objective_traits names {unknown}; traits: {', '.join(task.names)}")
        compared = np.zeros(n_raters, dtype=np.int64)
        disagreed = np.zeros(n_raters, dtype=np.int64)
        for t in objective:
            ims, rs, ls = arrays[t]
            c, d = peer_disagreement(ims, rs, ls, n_images, task.target(t).n_classes, n_raters)
            compared += c
            disagreed += d
        rate = np.where(compared > 0, disagreed / np.maximum(compared, 1), 0.0)
        self.report["rater_disagreement"] = {"objective_traits": list(objective),
                                             "mean_rate": round(float(rate[compared > 0].mean()), 4) if (compared > 0).any() else None}
        return np.flatnonzero(rate > self.max_disagreement)

    def read_metadata(self, images: list[str]) -> tuple[np.ndarray | None, np.ndarray | None, set[str]]:
        """Identities and official split per image from ``images.csv`` (each optional), and the
        images dropped for conflicting rows (``duplicate_rows: drop_conflicting``)."""
        assert self.root is not None
        if not self.metadata_file or not (self.root / self.metadata_file).is_file():
            return None, None, set()
        path = self.root / self.metadata_file
        rows, lines = open_csv(path)
        if not rows:
            raise DatasetFormatError(path, 1, "empty file; expected the header 'image,identity,split'")
        header = [h.strip() for h in rows[0]]
        header_columns(path, header, ("image",), lines[0])
        if "identity" not in header and "split" not in header:
            raise DatasetFormatError(path, lines[0], "expected an 'identity' and / or a 'split' column")
        recs = []
        for row, line in zip(rows[1:], lines[1:]):
            if len(row) != len(header):
                raise DatasetFormatError(path, line, f"expected {len(header)} fields like the header, got {len(row)}")
            rec = {h: v.strip() for h, v in zip(header, row)}
            if "split" in rec and rec["split"] not in ("train", "val", "test"):
                raise DatasetFormatError(path, line, f"expected split train, val or test, got {rec['split']!r}")
            recs.append(rec)
        others = [h for h in header if h != "image"]
        keep, dropped = self.unique_rows(path, [r["image"] for r in recs], [tuple(r[h] for h in others) for r in recs],
                                         lines[1:], fields=others)
        info = {recs[i]["image"]: recs[i] for i in keep}
        missing = [im for im in images if im not in info and im not in dropped]
        if missing:
            raise DatasetFormatError(path, None, f"{len(missing)} rated image(s) are not listed, e.g. {missing[0]}")
        info.update({im: {h: "" for h in header} for im in dropped})   # placeholders: the caller drops them
        identities = None
        if "identity" in header:
            names = sorted({info[im]["identity"] for im in images})
            code = {n: i for i, n in enumerate(names)}
            identities = np.array([code[info[im]["identity"]] for im in images], dtype=np.int64)
        split = np.array([info[im]["split"] for im in images]) if "split" in header else None
        return identities, split, set(dropped) & set(images)
