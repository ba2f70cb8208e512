"""Configuration checking shared by every layer: which keyword arguments a constructor chain
accepts, one clear error naming unknown keys, and config dataclasses built from YAML mappings."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any


def constructor_options(cls: type, root: type, skip: tuple[str, ...] = ("self",)) -> set[str]:
    """Keyword arguments accepted by the constructors of ``cls`` and its bases up to ``root``
    (a subclass passing ``**kwargs`` on accepts its bases' arguments too)."""
    keys: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and issubclass(klass, root):
            params = inspect.signature(klass.__init__).parameters
            keys |= {n for n, p in params.items() if n not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return keys


def check_options(what: str, cfg: dict[str, Any], allowed: set[str]) -> None:
    """``ValueError`` naming the keys of ``cfg`` not in ``allowed`` (and the allowed ones), prefixed by ``what``."""
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def config_from_value(cls: type, value: Any, where: str, defaults: Any = None) -> Any:
    """A config dataclass from a YAML mapping (fields not given keep ``defaults``' values, else the
    class defaults), checked by its ``validate()``. ``None`` gives the defaults, an instance of
    ``cls`` is returned as it is; anything else, or a mapping with unknown keys, is a ``ValueError``
    prefixed by ``where``."""
    base = defaults if defaults is not None else cls()
    if value is None:
        return base
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping of {', '.join(f.name for f in fields(cls))}, got {value!r}")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    cfg = cls(**{**{f.name: getattr(base, f.name) for f in fields(cls)}, **value})
    cfg.validate()
    return cfg
