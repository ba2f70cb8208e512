"""``facebench list datasets``: each registered dataset with what it is, the files and columns it
expects under its ``root`` (the class-level ``expected_files`` of each datamodule) and its own
constructor arguments (beyond those every datamodule takes), read from the source without
importing torch or Lightning (:mod:`facebench.core.source_index`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from facebench.core.source_index import constructor_arguments, first_paragraph, index_package, registered, setting

PACKAGE = "facebench.datamodules"
FOLDER = Path(__file__).resolve().parent
BASE_CLASS = "FaceDataModule"


def _index() -> dict[str, Any]:
    return index_package(str(FOLDER), PACKAGE, "register_datamodule", ("self",))


def dataset_rows() -> list[dict[str, Any]]:
    """One row per registered dataset: name, class, description, expected files, arguments."""
    classes = _index()
    rows = []
    for name, cls in sorted(registered(classes).items()):
        own, _ = constructor_arguments(cls, classes, BASE_CLASS)
        rows.append({"dataset": name, "class": cls.name, "module": cls.module, "description": first_paragraph(cls.doc),
                     "expected_files": dict(setting(cls, "expected_files", classes, {}) or {}),
                     "arguments": [{"name": a.name, "default": a.default, "note": a.note} for a in own if a.name != "root"]})
    return rows


def common_arguments() -> list[str]:
    """The arguments every dataset takes (:class:`~facebench.datamodules.base.FaceDataModule`'s)."""
    base = next(c for c in _index().values() if c.name == BASE_CLASS)
    return [a.name for a in base.arguments]
