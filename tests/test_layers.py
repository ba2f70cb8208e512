"""The layering of the code base, read from the source: every import of every module (top level and
inside functions, ``import x`` and ``from x import y``, relative imports resolved, and
``importlib.import_module("...")`` with a literal name) points downward only:

    benchmarks -> lightning_modules -> datamodules -> datamodules.core

and no project ``.py`` file is longer than :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmarks", "lightning_modules", "datamodules")
MAX_LINES = 700
#: Files allowed over MAX_LINES, each with the reason (e.g. a data table that cannot be split).
LONG_FILES_ALLOWED: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    file: str       # repository-relative path
    line: int
    module: str     # the dotted module imported (resolved)
    source: str     # the statement as written

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source}  (imports {self.module})"


def module_name(path: Path) -> str:
    """``datamodules/core/io.py`` -> ``datamodules.core.io``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_project_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository (a file or a folder)."""
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def resolve_relative(path: Path, level: int, module: str | None) -> str:
    """The absolute module of ``from <level dots><module> import ...`` written in ``path``."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    if level - 1 > len(package):
        raise ValueError(f"{path}: relative import beyond the top-level package")
    base = package[:len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(path: Path, text: str | None = None) -> list[Import]:
    """Every import in ``path`` (or in ``text``, read as if it were that file). ``from X import a``
    counts as importing ``X.a`` when that is a project module (a submodule), else ``X``."""
    text = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(text, filename=str(path))
    rel = str(path.relative_to(REPO))
    out: list[Import] = []
    lines = text.splitlines()

    def source(node: ast.AST) -> str:
        return " ".join(line.strip() for line in lines[node.lineno - 1:node.end_lineno])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(rel, node.lineno, alias.name, source(node)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_relative(path, node.level, node.module) if node.level else node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append(Import(rel, node.lineno, sub if alias.name != "*" and is_project_module(sub) else base,
                              source(node)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append(Import(rel, node.lineno, node.args[0].value, source(node)))
    return out


def project_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def violations(files_under: str, forbidden: Callable[[str], bool]) -> list[str]:
    bad = []
    for path in project_files(files_under):
        bad += [str(imp) for imp in imports_of(path) if forbidden(imp.module)]
    return bad


def test_the_import_reader_sees_every_form():
    """The reader finds top-level and nested imports, both statement forms, resolved relative
    imports and literal ``import_module`` calls, with their lines."""
    fake = REPO / "datamodules" / "core" / "_layers_probe.py"      # read as if it lived there (never written)
    text = ("import os\nfrom . import tasks\nfrom .io import write_json\nfrom .. import base\n"
            "def f():\n    import lightning_modules.metrics as m\n    from benchmarks import runner\n"
            "    import importlib\n    importlib.import_module('benchmarks.cli')\n")
    found = {(i.line, i.module) for i in imports_of(fake, text)}
    assert found == {(1, "os"), (2, "datamodules.core.tasks"), (3, "datamodules.core.io"), (4, "datamodules.base"),
                     (6, "lightning_modules.metrics"), (7, "benchmarks.runner"), (8, "importlib"), (9, "benchmarks.cli")}
    assert str(next(i for i in imports_of(fake, text) if i.line == 7)) == (
        "datamodules/core/_layers_probe.py:7: from benchmarks import runner  (imports benchmarks.runner)")


def test_every_package_is_read():
    for pkg in PACKAGES:
        assert (REPO / pkg / "__init__.py").is_file()
    assert any(imp.module.startswith("datamodules") for imp in imports_of(REPO / "lightning_modules" / "base.py"))


@pytest.mark.parametrize("package", ["lightning_modules", "datamodules"])
def test_methods_and_data_never_import_the_runner(package: str):
    bad = violations(package, lambda m: within(m, "benchmarks"))
    assert not bad, f"{package}/ must not import benchmarks (the runner layer):\n" + "\n".join(bad)


def test_data_never_imports_the_methods():
    bad = violations("datamodules", lambda m: within(m, "lightning_modules"))
    assert not bad, "datamodules/ must not import lightning_modules (the methods layer):\n" + "\n".join(bad)


def test_core_imports_only_core():
    def outside_core(m: str) -> bool:
        return m.split(".")[0] in PACKAGES and not within(m, "datamodules.core")

    bad = violations("datamodules/core", outside_core)
    assert not bad, "datamodules/core/ may import only datamodules.core of the project:\n" + "\n".join(bad)


def test_no_file_is_too_long():
    files = project_files(*PACKAGES, "tests")
    assert len(files) > 20
    long = {str(p.relative_to(REPO)): n for p in files
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    unexplained = {f: n for f, n in long.items() if f not in LONG_FILES_ALLOWED}
    assert not unexplained, (f"files over {MAX_LINES} lines (split them by job): "
                             + ", ".join(f"{f} ({n})" for f, n in sorted(unexplained.items())))
    stale = sorted(set(LONG_FILES_ALLOWED) - set(long))
    assert not stale, f"LONG_FILES_ALLOWED names files that are not long (any more): {stale}"
