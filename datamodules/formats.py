"""Readers of the text formats several datasets share, and the error they raise.

* :class:`DatasetFormatError`: a data file does not have the expected format (file, line, expectation);
* :func:`open_csv` / :func:`header_columns`: CSV rows with their line numbers, and the column of each
  required header name (FER2013 / FER+, LFWA's split file, the labels-CSV folder, multi-rater ratings);
* :func:`read_delimited`: comma- or whitespace-separated text (LFWA's exports of the release's .mat files);
* :func:`read_table_file`: CelebA-style list files (optional count line, optional header, then
  ``<image> v1 v2 ...``), used by CelebA's lists and the 68-landmark file of SynthFaces;
* :func:`age_bin`: ordinal bin index of numeric ages for lower bin edges (UTKFace names, binned age
  cells of the folder CSV);
* :func:`unique_rows`: the one policy for an image listed more than once in a label table
  (``duplicate_rows``: ``error`` / ``first`` / ``drop_conflicting``), applied by every loader;
* :func:`fold_label` / :func:`check_label_spellings`: class labels that differ only in case or
  surrounding spaces (``anger`` / ``ANGER``), an error unless folded (``normalize_labels``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

import numpy as np


class DatasetFormatError(ValueError):
    """A data file does not have the expected format: names the file, the line and the expectation."""

    def __init__(self, path: os.PathLike | str, line: int | None, message: str):
        self.path, self.line = Path(path), line
        where = f"{path}, line {line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


# ------------------------------------------------------------------------------------------------
# CSV and delimited text
# ------------------------------------------------------------------------------------------------
def open_csv(path: Path) -> tuple[list[list[str]], list[int]]:
    """Rows of a CSV file (UTF-8, any line ends) and their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file is missing")
    rows, lines = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    rows.append(row)
                    lines.append(reader.line_num)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetFormatError(path, reader.line_num, f"not a readable CSV file ({exc})") from None
    return rows, lines


def header_columns(path: Path, header: list[str], required: tuple[str, ...], line: int = 1) -> dict[str, int]:
    """Column index of each required name in a header row (clear error naming the missing ones)."""
    names = [h.strip() for h in header]
    missing = [r for r in required if r not in names]
    if missing:
        raise DatasetFormatError(path, line, f"expected column(s) {', '.join(missing)} in the header; got {','.join(names)[:200]!r}")
    return {r: names.index(r) for r in required}


def read_delimited(path: Path) -> tuple[list[list[str]], list[int]]:
    """Rows of a comma- or whitespace-separated text file with their line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file is missing")
    with open(path, "rb") as f:
        first = f.readline()
    if b"," in first:
        return open_csv(path)
    rows, lines = [], []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(path, None, f"is not UTF-8 text ({exc})") from None
    for k, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append(line.split())
            lines.append(k)
    return rows, lines


# ------------------------------------------------------------------------------------------------
# CelebA-style list files
# ------------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file is missing (expected CelebA's official layout)")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetFormatError(path, line, "is not UTF-8 / ASCII text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def read_table_file(path: str | os.PathLike, n_values: int | None, *, count_line: bool, header: Sequence[str] | None,
                    parse: Callable[[str], Any] = int, what: str = "integers",
                    dtype: Any = np.int64) -> tuple[list[str], list[str], np.ndarray]:
    """Read a CelebA list file: optional count line, optional header line, then
    ``<filename> v1 v2 ...`` rows. Returns (header names, filenames, values [N, n_values]).

    ``header=None`` means no header line; an empty tuple means "read whatever names are there"
    (the attribute file), in which case ``n_values`` is the number of names.
    """
    path = Path(path)
    lines = _lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    pos, expected_rows, names = 0, None, []
    if count_line:
        if not lines:
            raise DatasetFormatError(path, 1, "expected the row count on line 1, the file is empty")
        try:
            expected_rows = int(lines[0].strip())
        except ValueError:
            raise DatasetFormatError(path, 1, f"expected the row count (an integer), got {lines[0].strip()[:60]!r}") from None
        pos = 1
    if header is not None:
        if pos >= len(lines):
            raise DatasetFormatError(path, pos + 1, "expected a header line, the file ends")
        names = lines[pos].split()
        if header:
            got = [n for n in names if n != "image_id"] if "image_id" not in header else names
            want = [n for n in header if n != "image_id"] if "image_id" not in names else list(header)
            if got != list(want):
                raise DatasetFormatError(path, pos + 1, f"expected header {' '.join(header)!r}, got {lines[pos].strip()[:200]!r}")
            names = [n for n in names if n != "image_id"]
        if n_values is None:
            n_values = len(names)
        pos += 1
    assert n_values is not None
    files: list[str] = []
    values = np.empty((max(len(lines) - pos, 0), n_values), dtype=dtype)
    n = 0
    for lineno in range(pos, len(lines)):
        parts = lines[lineno].split()
        if not parts:
            raise DatasetFormatError(path, lineno + 1, f"empty line; expected '<image> followed by {n_values} {what}'")
        if len(parts) != n_values + 1:
            raise DatasetFormatError(path, lineno + 1, f"expected an image name and {n_values} {what}, got {len(parts) - 1} "
                                                       f"value(s): {lines[lineno].strip()[:120]!r}")
        try:
            values[n] = [parse(p) for p in parts[1:]]
        except ValueError as exc:
            raise DatasetFormatError(path, lineno + 1, f"expected {what}: {exc}") from None
        files.append(parts[0])
        n += 1
    values = values[:n]
    if expected_rows is not None and expected_rows != n:
        raise DatasetFormatError(path, 1, f"the count line says {expected_rows} rows but the file has {n}")
    return names, files, values


# ------------------------------------------------------------------------------------------------
# numeric cells
# ------------------------------------------------------------------------------------------------
def age_bin(ages: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Ordinal bin index of each age for lower ``edges`` (ages below the first edge -> bin 0)."""
    return np.clip(np.searchsorted(np.asarray(edges, dtype=float), np.asarray(ages, dtype=float), side="right") - 1,
                   0, len(edges) - 1).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# repeated rows and label spellings
# ------------------------------------------------------------------------------------------------
DUPLICATE_ROW_POLICIES: tuple[str, ...] = ("error", "first", "drop_conflicting")


def _where(line: int | str | None) -> str:
    return f"line {line}" if isinstance(line, int) else str(line)


def _difference(a: Any, b: Any, fields: Sequence[str] | None) -> str:
    """What differs between two rows' values (``identical`` when nothing does)."""
    if a == b:
        return "identical"
    if fields is not None and isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == len(fields):
        diff = [f"{f} {x!s} vs {y!s}" for f, x, y in zip(fields, a, b) if x != y]
        text = ", ".join(diff[:6]) + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
    else:
        text = f"{a!s} vs {b!s}"
    return "conflicting: " + (text if len(text) <= 300 else text[:297] + "...")


def unique_rows(path: os.PathLike | str, keys: Sequence[Hashable], values: Sequence[Any], lines: Sequence[int | str | None],
                policy: str, *, fields: Sequence[str] | None = None, what: str = "image",
                key_name: Callable[[Hashable], str] | None = None) -> tuple[np.ndarray, dict[str, int], set[Hashable]]:
    """Rows to keep of a label table whose rows are keyed by ``keys`` (the image each row labels),
    under the ``duplicate_rows`` policy:

    * ``error``: a key on more than one row raises :class:`DatasetFormatError` naming the file, both
      lines (or files, when ``lines`` holds names) and the differing values, or ``identical``;
    * ``first``: the first row of each key is kept;
    * ``drop_conflicting``: a key whose rows disagree (``values`` compare unequal) loses every row
      (the caller drops that image altogether); of rows that agree the first is kept.

    Returns (indices of the kept rows in file order, counts ``{"repeated": keys on more than one row,
    "conflicting": those whose rows disagree, "rows_dropped": ...}``, the keys dropped altogether).
    ``fields`` names the entries of tuple ``values`` for the message, ``key_name`` shows a key
    (default ``"<what> <key>"``).
    """
    if policy not in DUPLICATE_ROW_POLICIES:
        raise ValueError(f"duplicate_rows must be one of {', '.join(DUPLICATE_ROW_POLICIES)}, got {policy!r}")
    first: dict[Hashable, int] = {}
    repeats: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j != i:
            repeats.setdefault(key, [j]).append(i)
    counts = {"repeated": len(repeats), "conflicting": 0, "rows_dropped": 0}
    if not repeats:
        return np.arange(len(keys)), counts, set()
    conflicting = {k for k, rows in repeats.items() if any(values[r] != values[rows[0]] for r in rows[1:])}
    counts["conflicting"] = len(conflicting)
    if policy == "error":
        key, rows = next(iter(repeats.items()))
        a = rows[0]
        b = next((r for r in rows[1:] if values[r] != values[a]), rows[1])
        others = f"; {len(repeats) - 1} more {what}(s) are listed more than once" if len(repeats) > 1 else ""
        line = lines[b] if isinstance(lines[b], int) else None
        shown = key_name(key) if key_name is not None else f"{what} {key}"
        raise DatasetFormatError(path, line, f"{shown} is listed twice ({_where(lines[a])} and {_where(lines[b])}; "
                                             f"{_difference(values[a], values[b], fields)}){others}. Set duplicate_rows: "
                                             f"first (keep the first row) or drop_conflicting (drop an image whose rows "
                                             f"disagree, keep one of rows that agree) to load it")
    dropped_keys = conflicting if policy == "drop_conflicting" else set()
    drop = {r for k, rows in repeats.items() for r in (rows if k in dropped_keys else rows[1:])}
    counts["rows_dropped"] = len(drop)
    return np.array([i for i in range(len(keys)) if i not in drop], dtype=np.int64), counts, dropped_keys


def fold_label(value: str) -> str:
    """A class label folded for comparison: stripped and lower-cased (``normalize_labels``)."""
    return value.strip().lower()


def check_label_spellings(path: os.PathLike | str, what: str, values: Iterable[str]) -> None:
    """Raise :class:`DatasetFormatError` when labels of ``what`` differ only in case or surrounding
    spaces (``anger`` / ``ANGER`` / `` anger``): naming every spelling of each such label."""
    spellings: dict[str, set[str]] = {}
    for v in values:
        if v.strip():
            spellings.setdefault(fold_label(v), set()).add(v)
    clashes = [sorted(s) for s in spellings.values() if len({v.strip() for v in s}) > 1]
    if clashes:
        shown = "; ".join(" / ".join(repr(v) for v in c) for c in clashes[:5])
        raise DatasetFormatError(path, None, f"{what}: labels that differ only in case or surrounding spaces: {shown}"
                                             f"{f' (+{len(clashes) - 5} more)' if len(clashes) > 5 else ''}; declare the "
                                             f"classes, or set normalize_labels: true to fold them (lower-case, stripped)")
