"""Modules keyed by target name (:class:`TargetModuleDict`): any column name is a valid target name
(``user.id``, ``keys``, ...), but ``nn.ModuleDict`` refuses keys containing ``"."`` and keys that
shadow its attributes (``KeyError: module name can't contain "."``). The user's name stays the key
everywhere outside; inside, :func:`module_key` maps it to a safe one (unchanged when already safe,
so state-dict keys of ordinary names do not change)."""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

from torch import nn

_RESERVED = frozenset(dir(nn.ModuleDict())) | {"_names"}


def module_key(name: str) -> str:
    """A key ``nn.Module.add_module`` accepts for ``name``, one-to-one: ``%`` and ``.`` escaped as
    ``%25`` / ``%2E``; an empty name or one shadowing a ``ModuleDict`` attribute gets a ``%`` prefix
    (which no escaped name starts with unless followed by two hex digits)."""
    key = name.replace("%", "%25").replace(".", "%2E")
    return "%" + key if key == "" or key in _RESERVED else key


class TargetModuleDict(nn.ModuleDict):
    """``nn.ModuleDict`` keyed by target names: indexing, ``in``, iteration, ``keys()`` and
    ``items()`` use the names; the registered submodules use :func:`module_key`."""

    def __init__(self, modules: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self._names: dict[str, str] = {}   # module key -> target name
        for name, module in (modules or {}).items():
            self[name] = module

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(module_key(name))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        key = module_key(name)
        self._names[key] = name
        super().__setitem__(key, module)

    def __delitem__(self, name: str) -> None:
        key = module_key(name)
        super().__delitem__(key)
        self._names.pop(key, None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(module_key(name))

    def __iter__(self) -> Iterator[str]:
        return (self._names[k] for k in super().__iter__())

    def keys(self) -> Iterable[str]:  # type: ignore[override]
        return list(self)

    def items(self) -> Iterable[tuple[str, nn.Module]]:  # type: ignore[override]
        return [(self._names[k], m) for k, m in super().items()]
