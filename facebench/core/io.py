"""Atomic file writes: results are written to a temporary file in the same folder and renamed, so
a reader never sees a half-written file and a crash never destroys the previous version. The
renamed file gets the permissions a plain ``open(path, "w")`` would give (0644 under the usual
umask 022), not the 0600 of a temporary file."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml


def _file_mode() -> int:
    """``0o666`` less the process umask (read without changing it for other threads)."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """``write(f)`` into a temporary file beside ``path`` (its folders created), synced to disk and
    renamed onto ``path``; on any error the temporary file is removed and ``path`` is untouched.
    Returns ``path``. The ``write_*`` helpers below go through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | os.PathLike, df: "Any", **kwargs: Any) -> Path:
    return write_text(path, df.to_csv(index=False, **kwargs))


def write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when the file does not exist (invalid JSON raises)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
