"""What ``facebench inspect`` reports about a datamodule (:meth:`FaceDataModule.describe`): samples
per split, target prevalence, identities and their overlap between splits, rater agreement
(Fleiss' kappa), duplicate image files (and the groups of duplicates spanning splits), images
listed on more than one row of a label table and files skipped at setup. :func:`data_checks`
condenses the doubts into counts (what the suite reports carry). :mod:`facebench.datamodules.inspect`
renders it as text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from facebench.datamodules.base import FaceDataModule


def describe(dm: FaceDataModule, check_files: bool = True) -> dict[str, Any]:
    """What ``facebench inspect`` prints: samples per split, target prevalence, identities,
    duplicate files (same bytes, across splits too) and files skipped at setup."""
    dm.setup()
    task = dm.task
    out: dict[str, Any] = {"dataset": dm.registered_name, "root": str(dm.root), "task": task.to_dict(),
                           "splits": {}, **dm.report}
    for split, tab in dm.tables.items():
        info: dict[str, Any] = {"samples": len(tab)}
        if tab.identities is not None:
            info["identities"] = int(len(np.unique(tab.identities)))
        prev = {}
        for t, s in zip(task.targets, task.label_slices):
            y = tab.labels[:, s]
            if t.is_sigmoid:
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
    if dm.tables:
        first = next(iter(dm.tables.values()))
        if first.identities is not None and len(dm.tables) > 1:
            ids = {s: set(np.unique(t.identities).tolist()) for s, t in dm.tables.items()}
            names = list(ids)
            out["identity_overlap"] = {f"{a}/{b}": len(ids[a] & ids[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    kappa = rater_agreement(dm)
    if kappa is not None:
        out["kappa"] = kappa
    if check_files:
        out["duplicates"] = duplicate_files(dm)
        out["cross_split_duplicates"] = cross_split_duplicates(dm)
    out.setdefault("skipped", [])
    return out


def data_checks(dm: FaceDataModule) -> dict[str, int]:
    """``facebench inspect``'s counts of what may make results on ``dm``'s data doubtful
    (JSON-ready): files skipped at setup, groups of duplicate images spanning splits, images listed
    on more than one row of a label table (and those whose rows conflict), items ``dedupe`` dropped."""
    dm.setup()
    rows = list(dm.report.get("repeated_rows", {}).values())
    return {"skipped_files": len(dm.report.get("skipped", [])),
            "cross_split_duplicates": len(cross_split_duplicates(dm)),
            "repeated_rows": int(sum(r["repeated"] for r in rows)),
            "conflicting_rows": int(sum(r["conflicting"] for r in rows)),
            "dedupe_dropped": int(sum(d["dropped"] for d in dm.report.get("dedupe", {}).values()))}


def rater_agreement(dm: FaceDataModule) -> dict[str, float] | None:
    """Fleiss' kappa of the raters per target with votes (all splits together) and, when a
    target has more than two vote columns, the category kappa of each column (``target/class``),
    from :mod:`facebench.core.agreement`. ``None`` when no target has votes."""
    from facebench.core.agreement import category_kappas, fleiss_kappa

    names = [t for t in dm.task.targets if any(t.name in tab.votes for tab in dm.tables.values())]
    if not names:
        return None
    out: dict[str, float] = {}
    for t in names:
        counts = np.concatenate([tab.votes[t.name] for tab in dm.tables.values() if t.name in tab.votes])
        if not len(counts) or counts.sum(1).max() < 2:
            continue
        out[t.name] = round(float(fleiss_kappa(counts)), 4)
        if counts.shape[1] > 2:
            for c, k in zip(t.vote_columns, category_kappas(counts)):
                if np.isfinite(k):
                    out[f"{t.name}/{c}"] = round(float(k), 4)
    return out


def duplicate_files(dm: FaceDataModule) -> list[list[str]]:
    """Groups (``split:path``) of samples whose image files have the same bytes (e.g. one in train,
    one in test), from :func:`facebench.datamodules.duplicates.byte_hashes`."""
    from facebench.datamodules.duplicates import byte_hashes

    by_hash: dict[str, list[str]] = {}
    for split, tab in dm.tables.items():
        for p, h in zip(tab.paths, byte_hashes(tab, dm.root, dm.cache_dir)):
            if h is not None:
                by_hash.setdefault(h, []).append(f"{split}:{p}")
    return [v for v in by_hash.values() if len(v) > 1]


def cross_split_duplicates(dm: FaceDataModule) -> list[list[str]]:
    """Groups (``split:path``) of duplicate images spanning more than one split: the same bytes, or
    near-duplicates with ``near_duplicates`` (see :mod:`facebench.datamodules.duplicates`)."""
    from facebench.datamodules.duplicates import cross_split, split_groups

    dm.setup()
    groups = cross_split(split_groups(dm.tables, dm.root, dm.cache_dir, dm.near_duplicates))
    return [[f"{s}:{dm.tables[s].paths[i]}" for s, i in g] for g in groups]


def require_disjoint_splits(dm: FaceDataModule, name: str) -> None:
    """``facebench run --strict``: raise :class:`~facebench.datamodules.formats.DatasetFormatError` (one line
    naming the dataset and the count) when groups of duplicate images span ``dm``'s splits."""
    from facebench.datamodules.formats import DatasetFormatError

    n = (dm.report.get("checks") or data_checks(dm))["cross_split_duplicates"]
    if n:
        raise DatasetFormatError(dm.root or ".", None, f"dataset {name!r}: {n} group(s) of duplicate images span splits; "
                                                       f"--strict refuses to run on it (facebench inspect lists them; "
                                                       f"dedupe: {{test: drop}} drops them from the test split)")


def single_class_targets(task: Any, labels: np.ndarray) -> list[tuple[str, str, int]]:
    """``(name, the one class present, labelled samples)`` for every target (a multi-label target:
    every class, named ``target/class``) whose labelled samples in ``labels`` (the task's label
    layout, ``-1`` missing) all carry one class; targets without any label are left out."""
    out = []
    for t, s in zip(task.targets, task.label_slices):
        columns = [(t.name, labels[:, s.start], t.classes)] if t.kind != "multilabel" else \
            [(f"{t.name}/{c}", labels[:, s.start + i], ("no", "yes")) for i, c in enumerate(t.classes)]
        for name, y, classes in columns:
            y = y[y >= 0]
            present = np.unique(y)
            if len(y) and len(present) == 1:
                out.append((name, str(classes[int(present[0])]), int(len(y))))
    return out


def warn_single_class_targets(dm: FaceDataModule, splits: list[str]) -> list[str]:
    """One warning per evaluated split naming the targets that have a single class there, and what
    that does to the metrics (accuracy: the share predicted as that class; balanced accuracy,
    recall, AUROC, average precision: undefined, NaN). Returns the messages."""
    import warnings

    messages = []
    for split in splits:
        if split not in dm.tables or not len(dm.tables[split]):
            continue
        found = single_class_targets(dm.task, dm.tables[split].labels)
        if not found:
            continue
        names = ", ".join(f"{n} (all {n_labelled} '{c}')" for n, c, n_labelled in found)
        messages.append(f"{dm.registered_name}: the {split} split has one class only for {len(found)} target(s): {names}; "
                        f"their accuracy is the share predicted as that class, and balanced accuracy, recall, AUROC "
                        f"and average precision are undefined (NaN) there")
        warnings.warn(messages[-1], stacklevel=2)
    return messages
