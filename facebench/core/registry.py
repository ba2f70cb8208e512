"""One registry class for everything facebench creates by name from a config (timm style):
datasets, methods, analyses and loss weightings each own one :class:`Registry` instance."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, filled by a decorator.

    Args:
        kind: what an entry is, for messages ("method", "dataset", ...).
        loader: imports the modules that register the entries (called before any lookup, so that
            ``names()`` is complete without importing everything at start-up).
        name_attribute: attribute set on a registered class to its name (e.g. ``method_name``).
        plural: the plural of ``kind`` (default ``kind + "s"``).
    """

    def __init__(self, kind: str, loader: Callable[[], object] | None = None, name_attribute: str | None = None,
                 plural: str | None = None):
        self.kind, self._loader, self.name_attribute = kind, loader, name_attribute
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` (and setting its
        ``name_attribute``); another object under a taken name is a ``ValueError``."""

        def deco(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} name {name!r} registered twice "
                                 f"({getattr(self._entries[name], '__name__', self._entries[name])}, {getattr(obj, '__name__', obj)})")
            self._entries[name] = obj
            if self.name_attribute:
                setattr(obj, self.name_attribute, name)
            return obj

        return deco

    def _load(self) -> None:
        if self._loader is not None:
            self._loader()

    def names(self) -> list[str]:
        """The registered names, sorted (after the loader has imported the registering modules)."""
        self._load()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; a ``ValueError`` listing the registered names otherwise."""
        self._load()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(sorted(self._entries)) or 'none'}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())
