"""What produced a result: package versions, git commit, a hash of the code, machine, and a hash
of the config.

* :func:`code_hash`: sha256 of facebench's own ``.py`` files (every module of the installed
  ``facebench`` package, named by dotted module path, so a source checkout and a wheel of the same
  code give the same hash). Two results with the same code hash ran the same facebench code.
* :func:`tree_state`: the git commit of the source checkout and whether its code is modified.
  Changes under ``results/`` (and untracked files other than ``.py`` files in the package folders)
  do not make a tree dirty: results are outputs, not code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from facebench.core.paths import SOURCE_ROOT

#: Folders of the source checkout whose ``.py`` files are facebench's code (the packages of the wheel).
CODE_FOLDERS = ("benchmarks", "datamodules", "lightning_modules", "facebench")

PACKAGES = ("torch", "torchvision", "lightning", "torchmetrics", "timm", "numpy", "pandas", "wandb")


def config_hash(config: Any) -> str:
    """Short sha256 of a config's canonical JSON form."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass(frozen=True)
class TreeState:
    """The source checkout's commit and its uncommitted code changes."""

    commit: str                       # "<sha>", "<sha>+dirty", or "unknown" (no checkout / no git)
    changed: list[str] = field(default_factory=list)

    @property
    def dirty(self) -> bool:
        return bool(self.changed)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=10,
                          check=True).stdout


@functools.lru_cache(maxsize=1)
def tree_state() -> TreeState:
    """Commit of the source checkout, and the paths that make it dirty: modified or staged tracked
    files outside ``results/``, and untracked ``.py`` files in the package folders."""
    if SOURCE_ROOT is None:   # an installed wheel: no checkout to read
        return TreeState("unknown")
    try:
        sha = _git("rev-parse", "HEAD").strip()
        lines = _git("status", "--porcelain", "--untracked-files=all", "--", ".", ":(exclude)results").splitlines()
    except (OSError, subprocess.SubprocessError):
        return TreeState("unknown")
    changed = []
    for line in lines:
        code, path = line[:2], line[3:].split(" -> ")[-1].strip('"')
        if code == "??" and not (path.endswith(".py") and path.split("/")[0] in CODE_FOLDERS):
            continue
        changed.append(path)
    return TreeState(sha + ("+dirty" if changed else ""), changed)


def git_commit() -> str:
    """The commit of the facebench checkout, with ``+dirty`` when its code is modified (:func:`tree_state`)."""
    return tree_state().commit


def _package_sources() -> list[tuple[str, Path]]:
    """(dotted module name, file) of every ``.py`` file of the ``facebench`` package."""
    import facebench

    out = []
    for root in {Path(p).resolve() for p in facebench.__path__}:
        out += [("facebench." + ".".join(f.relative_to(root).with_suffix("").parts), f) for f in root.rglob("*.py")]
    for sub in ("benchmarks", "datamodules", "lightning_modules"):
        pkg = __import__(f"facebench.{sub}", fromlist=["__path__"])
        for root in {Path(p).resolve() for p in pkg.__path__}:
            if root.parent.name == "facebench" and root.parent in {Path(p).resolve() for p in facebench.__path__}:
                continue   # a wheel: already walked under facebench/
            out += [(f"facebench.{sub}." + ".".join(f.relative_to(root).with_suffix("").parts), f) for f in root.rglob("*.py")]
    return sorted({name: f for name, f in out if "__pycache__" not in f.parts}.items())


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Short sha256 of facebench's code: every ``.py`` file of the package, by module name and bytes."""
    h = hashlib.sha256()
    for name, path in _package_sources():
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def machine() -> dict[str, str]:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"host": platform.node(), "cpu_count": str(os.cpu_count()), "gpu": gpu, "platform": platform.platform()}


def provenance(config: Any) -> dict[str, str]:
    """Flat provenance columns added to every result row."""
    return {"config_hash": config_hash(config), "code_hash": code_hash(), "git_commit": git_commit(),
            **{f"version_{k}": v for k, v in package_versions().items()}}


def result_info(command: str, **extra: Any) -> dict[str, Any]:
    """The ``*_info.json`` sidecar of a results file: the command, commit, time, versions, machine."""
    import time

    return {**extra, "command": command, "git_commit": git_commit(), "code_hash": code_hash(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": package_versions(), "machine": machine()}
