"""Method registry (timm-style): ``@register_method("name")`` and ``create_method(name, task, **cfg)``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facebench.core.registry import Registry

if TYPE_CHECKING:
    from facebench.core.tasks import TaskSpec
    from facebench.lightning_modules.base import FaceAttributeTask


class IncompatibleTaskError(ValueError):
    """A method was asked to serve target kinds it does not support."""


def _load_all() -> None:
    import facebench.lightning_modules.all  # noqa: F401  (imports every method module)


METHODS: Registry[type["FaceAttributeTask"]] = Registry("method", loader=_load_all, name_attribute="method_name")
#: Class decorator registering a :class:`~facebench.lightning_modules.base.FaceAttributeTask` by name.
register_method = METHODS.register
method_names = METHODS.names
get_method_class = METHODS.get


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
