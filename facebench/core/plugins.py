"""User code that facebench imports by name: plugin modules (a suite's ``plugins:`` list or
``facebench run --plugins``), ``module:Attribute`` import paths, and the entry points that installed
packages declare (``facebench.methods``).

The current directory is importable, as it is for ``python -m``: a module ``mymethods.py`` (or a
package ``mymethods/``) in the folder where ``facebench`` runs can be named without installing it.
The suite runner's worker processes run in that same folder, so they import the same modules.

Every failure is one line (:class:`PluginError`) naming the module, and where the user's code
failed (its file and line) when importing it raised.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib import metadata
from types import ModuleType
from typing import Any, Iterable

#: Environment variable carrying ``facebench run --plugins`` (comma-separated modules) to suite loading.
PLUGINS_ENV = "FACEBENCH_PLUGINS"


class PluginError(ValueError):
    """A plugin module, import path or entry point could not be loaded (the message says why)."""


def ensure_cwd_importable() -> None:
    """Put the current directory on ``sys.path`` (first) unless it is there already, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _user_frame(exc: BaseException) -> str:
    """``file:line`` of the innermost traceback frame outside Python's import machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "<unknown>"


def import_module(name: str, what: str = "plugin module") -> ModuleType:
    """Import ``name`` (current directory first); a :class:`PluginError` naming what failed."""
    ensure_cwd_importable()
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise PluginError(f"{what} {name!r}: no such module (looked in the current directory {os.getcwd()} "
                              f"and the installed packages)") from None
        raise PluginError(f"{_user_frame(exc)}: {what} {name!r} imports a module that is not installed: {exc}") from None
    except SyntaxError as exc:
        raise PluginError(f"{exc.filename}:{exc.lineno}: {what} {name!r} is not valid Python ({exc.msg})") from None
    except Exception as exc:  # noqa: BLE001  (the user's module raised while being imported)
        raise PluginError(f"{_user_frame(exc)}: importing {what} {name!r} raised {type(exc).__name__}: {exc}") from None


def import_plugins(modules: Iterable[str] | None, what: str = "plugin module") -> list[ModuleType]:
    """Import every module of ``modules`` (they register their methods or datasets as they load)."""
    return [import_module(str(m), what) for m in (modules or [])]


def plugins_from_env() -> list[str]:
    """The modules of ``facebench run --plugins`` (:data:`PLUGINS_ENV`), in order."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def is_import_path(name: str) -> bool:
    """``package.module:Attribute`` (the ``module:attribute`` form of entry points)."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def load_object(path: str, what: str = "object") -> Any:
    """The object an import path ``package.module:Attribute`` (attribute possibly dotted) names."""
    if not is_import_path(path):
        raise PluginError(f"{what} {path!r}: an import path looks like package.module:ClassName")
    module_name, _, attr = path.partition(":")
    obj: Any = import_module(module_name, f"{what} module")
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what} {path!r}: module {module_name!r} ({getattr(obj, '__file__', '?')}) has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """The entry points of ``group`` that installed packages declare, by name (nothing is imported)."""
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def load_entry_point(ep: metadata.EntryPoint, what: str = "entry point") -> Any:
    """``ep.load()`` with a one-line error naming the entry point and its package."""
    ensure_cwd_importable()
    try:
        return ep.load()
    except Exception as exc:  # noqa: BLE001  (a third-party package's import failed)
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        where = _user_frame(exc) if exc.__traceback__ else ep.value
        raise PluginError(f"{where}: {what} {ep.name!r} = {ep.value} (package {dist}) could not be loaded: "
                          f"{type(exc).__name__}: {exc}") from None
