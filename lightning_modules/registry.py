"""Method registry (timm-style): ``@register_method("name")`` and ``create_method(name, task, **cfg)``.

A method is found, in this order, as

1. a registered name: facebench's own methods, and those of the user's modules imported first
   (a suite's ``plugins: [mymethods]`` or ``facebench run --plugins mymethods``, see
   :mod:`facebench.core.plugins`);
2. an import path ``package.module:ClassName`` (the class need not be registered);
3. an entry point of the ``facebench.methods`` group declared by an installed package
   (``[project.entry-points."facebench.methods"] tinycnn = "mypkg.tinycnn:TinyCNN"``), loaded only
   when its name is asked for.

Whatever the route, the class must subclass
:class:`~facebench.lightning_modules.base.FaceAttributeTask`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from facebench.core.plugins import entry_points, is_import_path, load_entry_point, load_object
from facebench.core.registry import Registry

if TYPE_CHECKING:
    from facebench.core.tasks import TaskSpec
    from facebench.lightning_modules.base import FaceAttributeTask

#: Entry point group of methods that installed packages provide.
ENTRY_POINT_GROUP = "facebench.methods"


class IncompatibleTaskError(ValueError):
    """A method was asked to serve target kinds it does not support."""


def _load_all() -> None:
    import facebench.lightning_modules.all  # noqa: F401  (imports every method module)


def _checked_method(obj: Any, where: str) -> type["FaceAttributeTask"]:
    from facebench.lightning_modules.base import FaceAttributeTask

    if not (isinstance(obj, type) and issubclass(obj, FaceAttributeTask)):
        raise ValueError(f"{where} is {obj!r}, not a subclass of facebench.lightning_modules.base.FaceAttributeTask")
    return obj


class MethodRegistry(Registry["type[FaceAttributeTask]"]):
    """The method :class:`~facebench.core.registry.Registry`, which also resolves import paths and
    ``facebench.methods`` entry points (see the module docstring)."""

    def names(self) -> list[str]:
        """Registered names and the names of installed entry points (not imported)."""
        self._load()
        return sorted(set(self._entries) | set(entry_points(ENTRY_POINT_GROUP)))

    def get(self, name: str) -> type["FaceAttributeTask"]:
        self._load()
        if name in self._entries:
            return self._entries[name]
        if is_import_path(name):
            cls = _checked_method(load_object(name, "method"), f"method {name!r}")
            if not vars(cls).get("method_name"):   # an unregistered class: records name it by its path
                cls.method_name = name
            return cls
        eps = entry_points(ENTRY_POINT_GROUP)
        if name in eps:
            cls = _checked_method(load_entry_point(eps[name], "method entry point"),
                                  f"method entry point {name!r} ({eps[name].value})")
            if name not in self._entries:
                self.register(name)(cls)
            return cls
        known = sorted(set(self._entries) | set(eps))
        raise ValueError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(known) or 'none'} "
                         f"(a method of your own: an import path module:ClassName, or the module that registers it "
                         f"under 'plugins:')")

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries or (isinstance(name, str) and name in entry_points(ENTRY_POINT_GROUP))


METHODS = MethodRegistry("method", loader=_load_all, name_attribute="method_name")
#: Class decorator registering a :class:`~facebench.lightning_modules.base.FaceAttributeTask` by name.
register_method = METHODS.register
method_names = METHODS.names
get_method_class = METHODS.get


def create_method(name: str, task: "TaskSpec", **cfg: Any) -> "FaceAttributeTask":
    """Instantiate the method ``name`` (a registered name, an import path or an entry point) for
    ``task``; raises :class:`IncompatibleTaskError` with the target kinds it cannot serve, and
    ``ValueError`` naming unknown config keys or an unknown method."""
    cls = get_method_class(name)
    unsupported = sorted(task.kinds - set(cls.task_kinds))
    if unsupported:
        raise IncompatibleTaskError(
            f"method {name!r} serves {sorted(cls.task_kinds)} targets; task {task.name!r} has {unsupported} "
            f"target(s): {', '.join(t.name for t in task.targets if t.kind in unsupported)}")
    cls.check_config(cfg)
    return cls(task=task, **cfg)
