"""Duplicate images of a dataset: the same image under several names.

* byte-identical images: SHA-1 of the file (of the pixels for in-memory images such as FER2013's
  CSV), cached by (path, size, mtime) in the per-image cache (:func:`byte_hashes`);
* near-duplicates, optional (datamodule option ``near_duplicates: <max Hamming distance>``, off by
  default): a 64-bit difference hash of a 9x8 grey thumbnail (each bit: is a pixel brighter than
  its right neighbour), two images being near-duplicates when their hashes differ in at most that
  many bits (:func:`difference_hash`, :func:`near_pairs`; a brute-force comparison of all pairs,
  O(N^2) 64-bit operations, a few seconds for 25k images);
* :func:`duplicate_groups`: groups of one table's samples that are duplicates of each other
  (connected components of the pairs), what derived splits keep in one split
  (:meth:`~facebench.datamodules.base.FaceDataModule.derive_split`), with identities (:func:`components`);
* :func:`split_groups`: the groups over all splits, each member as ``(split, index)``;
  :func:`cross_split` keeps those spanning more than one split (what ``facebench inspect`` and the
  suite reports count);
* the datamodule options: :func:`check_options`, :func:`drop_duplicates` (``dedupe: {test: drop}``),
  :func:`split_components` (what a derived split keeps together).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from facebench.datamodules.table import DatasetFiles, SampleTable

HASH_SIDE = 8          # difference hash: (HASH_SIDE + 1) x HASH_SIDE thumbnail -> 64 bits
_PAIR_BLOCK = 1 << 24  # hash comparisons per block of near_pairs (memory bound)


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root or ".").absolute()


def byte_hashes(table: SampleTable, root: str | os.PathLike | None,
                cache_dir: str | os.PathLike | None) -> list[str | None]:
    """SHA-1 per sample of its file's bytes (of its pixels for in-memory images); ``None`` for a
    file that cannot be read."""
    from facebench.datamodules.preprocess import FileCache

    if table.arrays is not None:
        return [hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest() for a in table.arrays]
    base = _root(root)
    keys = [str(base / p) for p in table.paths]
    out: list[str | None] = []
    with FileCache(cache_dir, "sha1") as cache:
        known = cache.get_many(keys, check_content=False)
        for key in keys:
            h = known.get(key)
            if h is None:
                from facebench.datamodules.preprocess import sha1_file

                try:
                    h = sha1_file(key)
                except OSError:
                    out.append(None)
                    continue
                cache.put(key, h, with_content=False)
                known[key] = h
            out.append(h)
    return out


def difference_hash(image: np.ndarray) -> int:
    """64-bit difference hash of an image (``HxW`` or ``HxWxC`` uint8): grey, resized to 9x8 by
    area averaging, one bit per horizontally adjacent pair (left darker than right)."""
    grey = image if image.ndim == 2 else (image[..., 0] if image.shape[2] == 1 else
                                          cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY))
    small = cv2.resize(np.ascontiguousarray(grey), (HASH_SIDE + 1, HASH_SIDE), interpolation=cv2.INTER_AREA)
    bits = (small[:, 1:] > small[:, :-1]).reshape(-1)
    return int(np.packbits(bits).view(">u8")[0])


def difference_hashes(table: SampleTable, root: str | os.PathLike | None,
                      cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    """(difference hash per sample as ``uint64``, whether it could be computed), cached like the
    byte hashes (an image that cannot be decoded has no hash)."""
    from facebench.datamodules.image_files import load_image
    from facebench.datamodules.preprocess import FileCache

    n = len(table)
    hashes, valid = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=bool)
    if table.arrays is not None:
        for i, a in enumerate(table.arrays):
            hashes[i], valid[i] = difference_hash(a), True
        return hashes, valid
    base = _root(root)
    keys = [str(base / p) for p in table.paths]
    with FileCache(cache_dir, f"dhash{HASH_SIDE}-v1") as cache:
        known = cache.get_many(keys, check_content=False)
        for i, key in enumerate(keys):
            h = known.get(key)
            if h is None:
                try:
                    h = difference_hash(load_image(key))
                except (OSError, ValueError):
                    continue
                cache.put(key, h, with_content=False)
            hashes[i], valid[i] = h, True
    return hashes, valid


def near_pairs(hashes: np.ndarray, valid: np.ndarray, max_distance: int) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, of valid hashes at most ``max_distance`` bits apart."""
    idx = np.flatnonzero(valid)
    h = hashes[idx].astype(np.uint64)
    n = len(h)
    block = max(1, _PAIR_BLOCK // max(n, 1))
    pairs: list[tuple[int, int]] = []
    for s in range(0, n, block):
        dist = np.bitwise_count(h[s:s + block, None] ^ h[None, :])
        a, b = np.nonzero(dist <= max_distance)
        a = a + s
        keep = a < b
        pairs += list(zip(idx[a[keep]].tolist(), idx[b[keep]].tolist()))
    return pairs


def components(n: int, groups: Iterable[Sequence[int]]) -> np.ndarray:
    """Connected component per item ``0..n-1`` of the relation "in a common group" (union-find),
    numbered in order of first appearance."""
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    for group in groups:
        group = list(group)
        if len(group) < 2:
            continue
        r0 = find(int(group[0]))
        for g in group[1:]:
            r = find(int(g))
            if r != r0:
                parent[r] = r0
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    _, first = np.unique(roots, return_index=True)
    order = {int(roots[f]): k for k, f in enumerate(np.sort(first))}
    return np.array([order[int(r)] for r in roots], dtype=np.int64)


def _groups_of(component: np.ndarray) -> list[list[int]]:
    """Index lists of the components with more than one member."""
    out: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        out.setdefault(c, []).append(i)
    return [g for g in out.values() if len(g) > 1]


def duplicate_groups(table: SampleTable, root: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                     near: int | None = None) -> list[list[int]]:
    """Groups (index lists, more than one member) of samples whose images are byte-identical or,
    with ``near``, at most ``near`` bits apart in difference hash (transitively)."""
    n = len(table)
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(byte_hashes(table, root, cache_dir)):
        if h is not None:
            by_hash.setdefault(h, []).append(i)
    pairs: list[Sequence[int]] = [g for g in by_hash.values() if len(g) > 1]
    if near is not None:
        pairs += near_pairs(*difference_hashes(table, root, cache_dir), int(near))
    return _groups_of(components(n, pairs)) if pairs else []


def split_groups(tables: dict[str, SampleTable], root: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                 near: int | None = None) -> list[list[tuple[str, int]]]:
    """:func:`duplicate_groups` over the union of all splits, members as ``(split, index)``."""
    names = [s for s, t in tables.items() if len(t)]
    if not names:
        return []
    in_memory = [tables[s].arrays is not None for s in names]
    if any(in_memory) and not all(in_memory):
        raise ValueError("cannot compare in-memory images with image files")
    paths = [p for s in names for p in tables[s].paths]
    whole = SampleTable(paths=paths, labels=np.zeros((len(paths), 0), dtype=np.int64),
                        arrays=np.concatenate([tables[s].arrays for s in names]) if all(in_memory) else None)
    where = [(s, i) for s in names for i in range(len(tables[s]))]
    return [[where[k] for k in g] for g in duplicate_groups(whole, root, cache_dir, near)]


def cross_split(groups: list[list[tuple[str, int]]]) -> list[list[tuple[str, int]]]:
    """The groups whose members are in more than one split."""
    return [g for g in groups if len({s for s, _ in g}) > 1]


# ------------------------------------------------------------------------------------------------
# the datamodule options (duplicate_rows, dedupe, near_duplicates)
# ------------------------------------------------------------------------------------------------
def check_options(duplicate_rows: str, dedupe: dict[str, str] | None,
                  near_duplicates: int | None) -> tuple[str, dict[str, str], int | None]:
    """Validated ``(duplicate_rows, dedupe (only the dropped splits), near_duplicates)``."""
    from facebench.datamodules.formats import DUPLICATE_ROW_POLICIES

    if duplicate_rows not in DUPLICATE_ROW_POLICIES:
        raise ValueError(f"duplicate_rows must be one of {', '.join(DUPLICATE_ROW_POLICIES)}, got {duplicate_rows!r}")
    if not isinstance(dedupe or {}, dict) or any(k not in ("val", "test") or v not in ("drop", "keep")
                                                 for k, v in (dedupe or {}).items()):
        raise ValueError(f"dedupe must map 'val' / 'test' to 'drop' or 'keep' (e.g. {{test: drop}}), got {dedupe!r}")
    if near_duplicates is not None and (isinstance(near_duplicates, bool) or not 0 <= int(near_duplicates) < 64):
        raise ValueError(f"near_duplicates must be a Hamming distance in 0..63 (bits of a 64-bit hash), "
                         f"got {near_duplicates!r}")
    return (duplicate_rows, {k: v for k, v in (dedupe or {}).items() if v == "drop"},
            None if near_duplicates is None else int(near_duplicates))


def duplicates_of_training(tables: dict[str, SampleTable], splits: Iterable[str], root: str | os.PathLike | None,
                           cache_dir: str | os.PathLike | None, near: int | None = None) -> dict[str, set[int]]:
    """Per split of ``splits`` (``val`` / ``test``), the rows whose image duplicates a training image
    (same bytes, or with ``near`` near-duplicates)."""
    splits = [s for s in splits if s in tables and s != "train"]
    wanted = {s: tables[s] for s in ("train", *splits) if s in tables}
    found: dict[str, set[int]] = {s: set() for s in splits}
    for group in split_groups(wanted, root, cache_dir, near):
        if any(s == "train" for s, _ in group):
            for s, i in group:
                if s in found:
                    found[s].add(i)
    return found


def drop_duplicates(tables: dict[str, SampleTable], splits: Iterable[str], files: DatasetFiles,
                    near: int | None = None) -> tuple[dict[str, SampleTable], dict[str, Any]]:
    """``dedupe``: drop the items of ``splits`` (``val`` / ``test``) whose image duplicates a
    training image. Returns the new tables and, per split, the count and (up to 100) items dropped
    (the datamodule's ``report["dedupe"]``)."""
    if "train" not in tables:
        raise ValueError(f"{files.name}: dedupe needs a train split; splits: {', '.join(tables)}")
    drop = duplicates_of_training(tables, splits, files.root, files.cache_dir, near)
    out, report = dict(tables), {}
    for s, idx in drop.items():
        report[s] = {"dropped": len(idx), "items": [tables[s].paths[i] for i in sorted(idx)][:100]}
        if idx:
            out[s] = tables[s].take(np.setdiff1d(np.arange(len(tables[s])), sorted(idx)))
    return out, report


def split_components(table: SampleTable, groups: np.ndarray | None, files: DatasetFiles,
                     near: int | None = None) -> tuple[np.ndarray | None, int]:
    """The groups a derived split assigns whole: ``groups`` (identities, or ``None``) joined by the
    duplicate images of ``table`` (connected components); ``groups`` itself when there are none.
    Also returns the number of groups of duplicate images (``report["split_duplicate_groups"]``)."""
    dups = duplicate_groups(table, files.root, files.cache_dir, near)
    if not dups:
        return groups, 0
    same: list[np.ndarray] = []
    if groups is not None:   # index lists of the given groups
        order = np.argsort(groups, kind="stable")
        same = np.split(order, np.flatnonzero(np.diff(np.asarray(groups)[order])) + 1)
    return components(len(table), same + dups), len(dups)
