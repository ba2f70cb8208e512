"""Method registry (timm-style): ``@register_method("name")`` and ``create_method(name, task, **cfg)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from datamodules.tasks import TaskSpec
    from lightning_modules.base import FaceAttributeTask

_METHODS: dict[str, type["FaceAttributeTask"]] = {}


class IncompatibleTaskError(ValueError):
    """A method was asked to serve target kinds it does not support."""


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator registering a :class:`~lightning_modules.base.FaceAttributeTask` by name."""

    def deco(cls: type) -> type:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return deco


def _load_all() -> None:
    import lightning_modules.all  # noqa: F401  (imports every method module)


def method_names() -> list[str]:
    _load_all()
    return sorted(_METHODS)


def get_method_class(name: str) -> type["FaceAttributeTask"]:
    _load_all()
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def create_method(name: str, task: "TaskSpec", **cfg: Any) -> "FaceAttributeTask":
    """Instantiate a registered method for ``task``; raises :class:`IncompatibleTaskError` with the
    target kinds it cannot serve, and ``TypeError`` naming unknown config keys."""
    cls = get_method_class(name)
    unsupported = sorted(task.kinds - set(cls.task_kinds))
    if unsupported:
        raise IncompatibleTaskError(
            f"method {name!r} serves {sorted(cls.task_kinds)} targets; task {task.name!r} has {unsupported} "
            f"target(s): {', '.join(t.name for t in task.targets if t.kind in unsupported)}")
    cls.check_config(cfg)
    return cls(task=task, **cfg)


_ANALYSES: dict[str, Callable[[list[str]], int]] = {}


def register_analysis(name: str) -> Callable[[Callable[[list[str]], int]], Callable[[list[str]], int]]:
    """Register an analysis command: ``facebench analyze NAME ARGS...`` calls ``fn(ARGS)``; the
    function parses its own arguments (argparse, ``prog=f"facebench analyze {name}"``)."""

    def deco(fn: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
        if name in _ANALYSES and _ANALYSES[name] is not fn:
            raise ValueError(f"analysis {name!r} registered twice")
        _ANALYSES[name] = fn
        return fn

    return deco


def analysis_names() -> list[str]:
    _load_all()
    return sorted(_ANALYSES)


def run_analysis(name: str, argv: list[str]) -> int:
    _load_all()
    if name not in _ANALYSES:
        raise ValueError(f"unknown analysis {name!r}; available: {', '.join(sorted(_ANALYSES)) or 'none'}")
    return _ANALYSES[name](argv)
