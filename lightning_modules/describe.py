"""``facebench list methods``: each method with its paper, the target kinds it serves, its input, its
constructor arguments (with defaults and the docstring's notes) and, on request, its cost.

facebench's own methods are read from the source (:mod:`facebench.core.source_index`), without
importing torch or Lightning; methods of the user's modules (``--plugins``) and of installed
packages' entry points are described from the imported classes, in the same row format. Parameter
and FLOP counts (:func:`method_cost`) build each model, so they are computed only when asked.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from facebench.core.source_index import (Argument, constructor_arguments, doc_arguments, first_paragraph, index_package,
                                         registered, setting)

PACKAGE = "facebench.lightning_modules"
FOLDER = Path(__file__).resolve().parent
BASE_CLASS = "FaceAttributeTask"
#: The reference task for parameter / FLOP figures: 40 binary attributes (CelebA).
REFERENCE_TARGETS = 40


def _index() -> dict[str, Any]:
    return index_package(str(FOLDER), PACKAGE, "register_method", ("self", "task"))


def _row(name: str, class_name: str, module: str, paper: str, doc: str, kinds: Any, size: Any, channels: Any,
         own: list[Argument], source: str) -> dict[str, Any]:
    return {"method": name, "class": class_name, "module": module, "paper": paper or "",
            "task_kinds": ",".join(sorted(kinds or ())), "input": f"{channels}x{size}x{size}",
            "arguments": [{"name": a.name, "default": a.default, "note": a.note} for a in own],
            "description": first_paragraph(doc), "source": source}


def builtin_method_rows() -> list[dict[str, Any]]:
    """facebench's registered methods, from the source alone."""
    classes = _index()
    rows = []
    for name, cls in sorted(registered(classes).items()):
        own, _ = constructor_arguments(cls, classes, BASE_CLASS)
        rows.append(_row(name, cls.name, cls.module, setting(cls, "paper", classes, ""), cls.doc,
                         setting(cls, "task_kinds", classes), setting(cls, "input_size", classes),
                         setting(cls, "input_channels", classes), own, "facebench"))
    return rows


def common_arguments() -> list[dict[str, Any]]:
    """The arguments every method takes (the base class's), with their notes."""
    classes = _index()
    base = next(c for c in classes.values() if c.name == BASE_CLASS)
    return [{"name": a.name, "default": a.default, "note": a.note} for a in base.arguments]


def runtime_arguments(cls: type, root: type) -> list[Argument]:
    """The constructor arguments of ``cls``'s chain below ``root`` (imported classes)."""
    out: dict[str, Argument] = {}
    for klass in cls.__mro__:
        if klass is root or not (isinstance(klass, type) and issubclass(klass, root)) or "__init__" not in vars(klass):
            continue
        notes = doc_arguments(inspect.getdoc(klass) or "")
        for n, p in inspect.signature(klass.__init__).parameters.items():
            if n in ("self", "task") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or n in out:
                continue
            out[n] = Argument(n, None if p.default is p.empty else repr(p.default), notes.get(n, ""))
    return list(out.values())


def describe_class(name: str, cls: type, source: str) -> dict[str, Any]:
    """The row of an imported method class (plugins, entry points)."""
    from facebench.lightning_modules.base import FaceAttributeTask

    return _row(name, cls.__name__, cls.__module__, getattr(cls, "paper", ""), inspect.getdoc(cls) or "",
                cls.task_kinds, cls.input_size, cls.input_channels, runtime_arguments(cls, FaceAttributeTask), source)


def method_rows(plugins: list[str] | None = None) -> list[dict[str, Any]]:
    """Every method: facebench's (from the source), those ``plugins`` register (imported), and the
    ``facebench.methods`` entry points (named only, unless ``plugins`` asks for imports anyway)."""
    from facebench.core.plugins import entry_points, import_plugins

    rows = builtin_method_rows()
    known = {r["method"] for r in rows}
    eps = entry_points("facebench.methods")
    if plugins:
        import_plugins(plugins)
        from facebench.lightning_modules.registry import METHODS

        for name, cls in METHODS.items():
            if name not in known and name not in eps:
                rows.append(describe_class(name, cls, f"plugin {cls.__module__}"))
                known.add(name)
        for name in eps:
            if name not in known:
                rows.append(describe_class(name, METHODS.get(name), f"entry point {eps[name].value}"))
                known.add(name)
    for name, ep in sorted(eps.items()):
        if name not in known:
            rows.append({"method": name, "class": ep.value.rpartition(":")[2], "module": ep.value.partition(":")[0],
                         "paper": "", "task_kinds": "", "input": "", "arguments": [],
                         "description": f"entry point of an installed package ({ep.value}); --plugins {ep.value.partition(':')[0]} "
                                        f"describes it", "source": f"entry point {ep.value}"})
    return sorted(rows, key=lambda r: r["method"])


def method_cost(name: str) -> dict[str, Any]:
    """Parameters and forward FLOPs per image of ``name`` built for :data:`REFERENCE_TARGETS` binary
    attributes at its default input (its ``reference_config``); the error when it cannot be built so."""
    from facebench.core.tasks import TaskSpec
    from facebench.lightning_modules.registry import get_method_class

    task = TaskSpec.binary_attributes([f"attr{i}" for i in range(REFERENCE_TARGETS)], name="40 binary attributes")
    cls = get_method_class(name)
    try:
        model = cls(task=task, **cls.reference_config())
        return {"params": model.parameter_count(), "flops_per_image": model.flops_per_image()}
    except Exception as exc:  # noqa: BLE001  (a method that needs data to be built: say why)
        return {"params": None, "flops_per_image": None, "note": f"{type(exc).__name__}: {exc}"}


def describe_methods() -> list[dict[str, Any]]:
    """Every registered method with its cost (imports and builds each one: slow)."""
    return [{**r, **method_cost(r["method"])} for r in method_rows()]
