"""Paper analyses (``facebench analyze NAME ARGS...``): one module per paper plus rater agreement.

Each module registers its commands with ``@register_analysis("name")``; a command is a function
taking the argument list (it parses it itself, argparse with ``prog=f"facebench analyze {name}"``)
and returning an exit code. The analyses read result records, checkpoints and datasets; they sit in
the runner layer, so methods and datamodules never import them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from datamodules.core.registry import Registry


def _load_all() -> None:
    """Import every module of this package (each registers its analyses)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


ANALYSES: Registry[Callable[[list[str]], int]] = Registry("analysis", loader=_load_all, plural="analyses")
register_analysis = ANALYSES.register
analysis_names = ANALYSES.names


def run_analysis(name: str, argv: list[str]) -> int:
    """Run the analysis registered as ``name`` on its arguments; returns its exit code."""
    return ANALYSES.get(name)(argv)
