"""What a registry holds, read from the source files without importing them: the classes a
decorator such as ``@register_method("name")`` registers, their docstrings, class-level settings
(literal values), constructor arguments (through the base classes) and their ``Args:`` notes.

Importing the methods or datasets means importing torch and Lightning (many seconds);
``facebench list`` reads this index instead and answers in well under a second. The tests check
that it agrees with the imported registries (``tests/test_cli_list.py``).
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Calls a class-level setting may be written with and still be read (``frozenset({"binary"})``).
LITERAL_CALLS = {"frozenset": frozenset, "set": set, "tuple": tuple, "list": list, "dict": dict}


@dataclass(frozen=True)
class Argument:
    """One constructor argument: its name, default (as written), and the docstring's note on it."""

    name: str
    default: str | None = None       # None: required
    note: str = ""


@dataclass
class IndexedClass:
    """A class found in the source: where it is, what it says, what its constructor takes."""

    name: str                        # the class name
    module: str                      # dotted module
    file: Path
    doc: str
    bases: list[str]                 # dotted names of the base classes (resolved through the module's imports)
    settings: dict[str, Any]         # class-level assignments with a literal value
    arguments: list[Argument]        # this class's own constructor arguments (no self, no *args / **kwargs)
    takes_kwargs: bool               # its constructor passes **kwargs on (to its bases)
    registered_as: str | None = None
    module_doc: str = ""
    setting_names: set[str] = field(default_factory=set)   # every class-level name assigned (literal or not)

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


def _literal(node: ast.AST, names: dict[str, Any] | None = None) -> Any:
    """A literal value, also through :data:`LITERAL_CALLS` and the module constants ``names``
    (:func:`module_constants`); raises ``ValueError`` for anything else."""
    names = names or {}
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise ValueError(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in LITERAL_CALLS \
            and len(node.args) <= 1 and not node.keywords:
        return LITERAL_CALLS[node.func.id](_literal(node.args[0], names) if node.args else ())
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        items = [_literal(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else (items if isinstance(node, ast.List) else set(items))
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_literal(k, names): _literal(v, names) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def _module_file(module: str) -> Path | None:
    """The source file of ``module``, found under the nearest package that is imported already
    (nothing is imported: a package's ``__init__`` may import torch)."""
    import sys

    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        package = sys.modules.get(".".join(parts[:i]))
        if package is None or not hasattr(package, "__path__"):
            continue
        for folder in package.__path__:
            base = Path(folder).joinpath(*parts[i:])
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
        return None
    return None


@functools.lru_cache(maxsize=256)
def module_constants(module: str, depth: int = 2) -> dict[str, Any]:
    """Top-level names of ``module`` bound to literal values, also those it imports from modules
    ``depth`` imports away (read from the source, nothing is imported but parent packages)."""
    path = _module_file(module)
    if path is None:
        return {}
    return _constants(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py", depth)


def _constants(tree: ast.Module, module: str, is_package: bool, depth: int) -> dict[str, Any]:
    names: dict[str, Any] = {}
    if depth > 0:
        for local, dotted in _imports(tree, module, is_package).items():
            source, _, attr = dotted.rpartition(".")
            if source.startswith("facebench"):
                value = module_constants(source, depth - 1).get(attr, _MISSING)
                if value is not _MISSING:
                    names[local] = value
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if len(targets) == 1 and isinstance(targets[0], ast.Name) and node.value is not None:
                try:
                    names[targets[0].id] = _literal(node.value, names)
                except (ValueError, TypeError, SyntaxError):
                    pass
    return names


_MISSING = object()


def doc_arguments(doc: str) -> dict[str, str]:
    """``{name: note}`` from a docstring's ``Args:`` section (Google style, continuation lines joined)."""
    notes: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return notes
    indent, current = None, None
    for line in lines[start + 1:]:
        if not line.strip():
            if current is not None:
                current = None
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break
        m = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s*\([^)]*\))?:\s*(.*)", line)
        if width == indent and m:
            current = m.group(1)
            notes[current] = m.group(2).strip()
        elif current is not None and width > indent:
            notes[current] += " " + line.strip()
        elif width == indent:
            break
    return notes


def _imports(tree: ast.Module, module: str, is_package: bool) -> dict[str, str]:
    """Names bound by the module's imports -> the dotted object they name."""
    out: dict[str, str] = {}
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                out[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                out[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
    return out


def _decorator_name(dec: ast.AST, decorator: str) -> str | None:
    if isinstance(dec, ast.Call) and isinstance(dec.func, (ast.Name, ast.Attribute)) and dec.args:
        name = dec.func.id if isinstance(dec.func, ast.Name) else dec.func.attr
        if name == decorator and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str):
            return dec.args[0].value
    return None


def _arguments(fn: ast.FunctionDef, skip: tuple[str, ...], notes: dict[str, str]) -> list[Argument]:
    a = fn.args
    positional = a.posonlyargs + a.args
    defaults: list[ast.AST | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
    return [Argument(arg.arg, None if default is None else ast.unparse(default), notes.get(arg.arg, ""))
            for arg, default in pairs if arg.arg not in skip]


def _index_file(path: Path, module: str, decorator: str, skip: tuple[str, ...]) -> list[IndexedClass]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = _imports(tree, module, path.name == "__init__.py")
    constants = _constants(tree, module, path.name == "__init__.py", 2)
    module_doc = ast.get_docstring(tree) or ""
    out = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        doc = ast.get_docstring(node) or ""
        settings: dict[str, Any] = {}
        names: set[str] = set()
        init = None
        for item in node.body:
            target, value = None, None
            if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
                target, value = item.targets[0].id, item.value
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                target, value = item.target.id, item.value
            elif isinstance(item, ast.FunctionDef) and item.name == "__init__":
                init = item
            if target is not None:
                names.add(target)
                try:
                    settings[target] = _literal(value, constants)
                except (ValueError, TypeError, SyntaxError):
                    pass
        bases = []
        for b in node.bases:
            text = ast.unparse(b)
            head = text.split(".")[0].split("[")[0]
            bases.append(imports[head] + text[len(head):] if head in imports else f"{module}.{text}")
        registered = next((n for n in (_decorator_name(d, decorator) for d in node.decorator_list) if n), None)
        out.append(IndexedClass(node.name, module, path, doc, bases, settings,
                                _arguments(init, skip, doc_arguments(doc)) if init else [],
                                bool(init and init.args.kwarg) if init else True, registered, module_doc, names))
    return out


@functools.lru_cache(maxsize=8)
def index_package(folder: str, package: str, decorator: str, skip: tuple[str, ...] = ("self",)) -> dict[str, IndexedClass]:
    """Every class of the ``.py`` files under ``folder`` (installed as ``package``), by dotted name."""
    root = Path(folder)
    classes: dict[str, IndexedClass] = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join([package] + parts)
        for cls in _index_file(path, module, decorator, skip):
            classes[cls.qualname] = cls
    return classes


def _resolve(name: str, classes: dict[str, IndexedClass]) -> IndexedClass | None:
    """A class by dotted name, also when it is re-exported by a package ``__init__``."""
    if name in classes:
        return classes[name]
    short = name.rsplit(".", 1)[-1]
    prefix = name.rsplit(".", 1)[0]
    matches = [c for q, c in classes.items() if c.name == short and q.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


def lineage(cls: IndexedClass, classes: dict[str, IndexedClass]) -> list[IndexedClass]:
    """``cls`` and its indexed base classes in Python's method resolution order (C3 linearisation;
    bases outside the index are left out)."""
    bases = [b for b in (_resolve(name, classes) for name in cls.bases) if b is not None]
    sequences = [lineage(b, classes) for b in bases] + [bases]
    out = [cls]
    while any(sequences):
        for seq in sequences:
            head = seq[0] if seq else None
            if head is not None and not any(head.qualname in {c.qualname for c in s[1:]} for s in sequences):
                break
        else:   # no consistent order (Python would refuse the class): keep the rest depth-first
            head = next(seq[0] for seq in sequences if seq)
        out.append(head)
        sequences = [[c for c in seq if c.qualname != head.qualname] for seq in sequences]
    return out


def setting(cls: IndexedClass, name: str, classes: dict[str, IndexedClass], default: Any = None) -> Any:
    """A class-level setting as the class sees it (inherited from the nearest base that sets it)."""
    for c in lineage(cls, classes):
        if name in c.setting_names:
            return c.settings.get(name, default)
    return default


def constructor_arguments(cls: IndexedClass, classes: dict[str, IndexedClass], root: str) -> tuple[list[Argument], list[Argument]]:
    """(the class chain's own constructor arguments, those of the ``root`` class): what
    :func:`facebench.core.config.constructor_options` accepts, split into specific and common."""
    own: dict[str, Argument] = {}
    common: dict[str, Argument] = {}
    for c in lineage(cls, classes):
        target = common if c.name == root else own
        for a in c.arguments:
            if a.name not in own and a.name not in common:
                target[a.name] = a
            elif a.name in target and not target[a.name].note and a.note:
                target[a.name] = Argument(a.name, target[a.name].default, a.note)
    return list(own.values()), list(common.values())


def registered(classes: dict[str, IndexedClass]) -> dict[str, IndexedClass]:
    """The registered classes by their registered name."""
    return {c.registered_as: c for c in classes.values() if c.registered_as}


def first_paragraph(doc: str) -> str:
    """A docstring's first paragraph as one line (whole sentences: never cut)."""
    return " ".join(doc.strip().split("\n\n")[0].split())
