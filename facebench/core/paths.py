"""Where facebench reads and writes, in one place.

* :func:`results_root`: results go under the *current directory's* ``results/`` unless a command is
  given another root; never into the installed package.
* :data:`SOURCE_ROOT`: the source checkout this code runs from (the folder holding
  ``pyproject.toml`` beside ``facebench/`` and the layer folders, ``benchmarks/`` ...), or ``None``
  for an installed wheel. Provenance (git
  commit, code hash) is read from it; a wheel has neither.
"""

from __future__ import annotations

from pathlib import Path

_CANDIDATE = Path(__file__).resolve().parents[2]
#: The source checkout (``None`` when facebench runs from an installed wheel).
SOURCE_ROOT: Path | None = _CANDIDATE if (_CANDIDATE / "pyproject.toml").is_file() \
    and (_CANDIDATE / "benchmarks" / "__init__.py").is_file() else None
RESULTS = "results"


def results_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``./results`` of the current directory (absolute)."""
    return Path(root).resolve() if root else Path.cwd() / RESULTS
