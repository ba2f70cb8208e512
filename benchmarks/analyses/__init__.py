"""Paper analyses (``facebench analyze NAME ARGS...``): one module per paper plus rater agreement.

Each module registers its commands with ``@register_analysis("name")``; a command is a function
taking the argument list (it parses it itself, argparse with ``prog=f"facebench analyze {name}"``)
and returning an exit code. The analyses read result records, checkpoints and datasets; they sit in
the runner layer, so methods and datamodules never import them.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable

from facebench.core.registry import Registry


def _load_all() -> None:
    """Import every module of this package (each registers its analyses)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


ANALYSES: Registry[Callable[[list[str]], int]] = Registry("analysis", loader=_load_all, plural="analyses")
register_analysis = ANALYSES.register
analysis_names = ANALYSES.names


def _out_path(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
    return None


def run_analysis(name: str, argv: list[str]) -> int:
    """Run the analysis registered as ``name`` on its arguments; returns its exit code. A file written
    with ``--out PATH`` gets its provenance beside it, ``<stem>_info.json`` (command, commit, versions)."""
    code = ANALYSES.get(name)(argv)
    out = _out_path(argv)
    if code == 0 and out is not None and out.is_file():
        from facebench.benchmarks.provenance import result_info
        from facebench.core.io import write_json

        write_json(out.with_name(f"{out.stem}_info.json"),
                   result_info(" ".join(["facebench", "analyze", name, *argv]), analysis=name))
    return code
