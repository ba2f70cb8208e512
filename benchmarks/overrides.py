"""``--set key=value`` arguments of the CLI and the analyses: each value is read as YAML
(``3`` -> int, ``[a, b]`` -> list, ``null`` -> None), keys are kept as given (dotted for suites)."""

from __future__ import annotations

from typing import Any, Sequence

import yaml


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` as a dict; a ``SystemExit`` naming an item without ``=``."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"facebench: --set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out
