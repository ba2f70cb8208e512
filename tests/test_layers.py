"""The layering of the code base, read from the source: every import of every module (top level and
inside functions, ``import x`` and ``from x import y``, relative imports resolved, and
``importlib.import_module("...")`` with a literal name) points downward only:

    facebench.benchmarks -> facebench.lightning_modules -> facebench.datamodules -> facebench.core

The repository's folders ``benchmarks/``, ``lightning_modules/`` and ``datamodules/`` are installed as
``facebench.<folder>`` (``pyproject.toml``'s ``package-dir``); the old top-level names are never
imported. No project ``.py`` file is longer than :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
#: repository folder -> the dotted package it is installed as
FOLDERS = {"benchmarks": "facebench.benchmarks", "lightning_modules": "facebench.lightning_modules",
           "datamodules": "facebench.datamodules", "facebench": "facebench"}
PACKAGES = ("benchmarks", "lightning_modules", "datamodules", "facebench")
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
    """``benchmarks/stats.py`` -> ``facebench.benchmarks.stats``, ``facebench/core/io.py`` ->
    ``facebench.core.io``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts and parts[0] in FOLDERS:
        parts = FOLDERS[parts[0]].split(".") + parts[1:]
    return ".".join(parts)


def source_path(dotted: str) -> Path | None:
    """The repository path of an installed dotted name (``facebench.benchmarks.x`` -> ``benchmarks/x``)."""
    parts = dotted.split(".")
    for folder, package in sorted(FOLDERS.items(), key=lambda kv: -len(kv[1])):
        pkg = package.split(".")
        if parts[:len(pkg)] == pkg:
            return REPO.joinpath(folder, *parts[len(pkg):])
    return None


def is_project_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository (a file or a folder)."""
    base = source_path(dotted)
    return base is not None and (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file())


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
    fake = REPO / "facebench" / "core" / "_layers_probe.py"      # read as if it lived there (never written)
    text = ("import os\nfrom . import tasks\nfrom .io import write_json\nfrom .. import core\n"
            "def f():\n    import facebench.lightning_modules.metrics as m\n    from facebench.benchmarks import runner\n"
            "    import importlib\n    importlib.import_module('facebench.benchmarks.cli')\n")
    found = {(i.line, i.module) for i in imports_of(fake, text)}
    assert found == {(1, "os"), (2, "facebench.core.tasks"), (3, "facebench.core.io"), (4, "facebench.core"),
                     (6, "facebench.lightning_modules.metrics"), (7, "facebench.benchmarks.runner"), (8, "importlib"),
                     (9, "facebench.benchmarks.cli")}
    assert str(next(i for i in imports_of(fake, text) if i.line == 7)) == (
        "facebench/core/_layers_probe.py:7: from facebench.benchmarks import runner  (imports facebench.benchmarks.runner)")


def test_every_package_is_read():
    for pkg in PACKAGES:
        assert (REPO / pkg / "__init__.py").is_file()
    assert any(imp.module.startswith("facebench.core") for imp in imports_of(REPO / "lightning_modules" / "base.py"))


def test_pyproject_installs_every_package_under_one_name():
    """The wheel's package list names every folder with an ``__init__.py`` (as ``facebench.*``) and
    nothing else, and maps the layer folders onto ``facebench``."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {module_name(p) for folder in PACKAGES for p in (REPO / folder).rglob("__init__.py")
               if "__pycache__" not in p.parts}
    assert set(setup["packages"]) == on_disk
    assert all(p == "facebench" or p.startswith("facebench.") for p in setup["packages"])
    assert setup["package-dir"] == {v: k for k, v in FOLDERS.items()}


def test_nothing_imports_the_folders_by_their_old_top_level_names():
    """``import benchmarks`` would load a second copy of every module (two registries): only the
    installed ``facebench.*`` names are used, in the code and in the tests."""
    old = ("benchmarks", "lightning_modules", "datamodules")
    bad = [str(imp) for pkg in (*PACKAGES, "tests") for path in project_files(pkg) for imp in imports_of(path)
           if imp.module.split(".")[0] in old]
    assert not bad, "import facebench.<folder>, not <folder>:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["lightning_modules", "datamodules", "facebench/core"])
def test_methods_and_data_never_import_the_runner(package: str):
    bad = violations(package, lambda m: within(m, "facebench.benchmarks"))
    assert not bad, f"{package}/ must not import facebench.benchmarks (the runner layer):\n" + "\n".join(bad)


def test_data_never_imports_the_methods():
    bad = violations("datamodules", lambda m: within(m, "facebench.lightning_modules"))
    assert not bad, "datamodules/ must not import facebench.lightning_modules (the methods layer):\n" + "\n".join(bad)


def test_core_imports_only_core():
    def outside_core(m: str) -> bool:
        return within(m, "facebench") and not within(m, "facebench.core")

    bad = violations("facebench/core", outside_core)
    assert not bad, "facebench/core/ may import only facebench.core of the project:\n" + "\n".join(bad)


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
