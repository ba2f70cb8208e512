"""What produced a result: package versions, git commit, machine, and a hash of the config."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from typing import Any

from facebench.core.paths import SOURCE_ROOT

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


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the facebench checkout, with ``+dirty`` when tracked files are modified."""
    if SOURCE_ROOT is None:   # an installed wheel: no checkout to read
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=SOURCE_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, str]:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {"host": platform.node(), "cpu_count": str(os.cpu_count()), "gpu": gpu, "platform": platform.platform()}


def provenance(config: Any) -> dict[str, str]:
    """Flat provenance columns added to every result row."""
    return {"config_hash": config_hash(config), "git_commit": git_commit(),
            **{f"version_{k}": v for k, v in package_versions().items()}}


def result_info(command: str, **extra: Any) -> dict[str, Any]:
    """The ``*_info.json`` sidecar of a results file: the command, commit, time, versions, machine."""
    import time

    return {**extra, "command": command, "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "versions": package_versions(), "machine": machine()}
