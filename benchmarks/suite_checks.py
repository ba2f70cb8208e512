"""Checks a suite passes before any run starts, each failing with one line naming the file, the key
and what is allowed (:class:`~facebench.benchmarks.suite.SuiteConfigError`):

* ``trainer`` keys (suite level and per method): ``lightning.Trainer``'s arguments, read from its
  source without importing Lightning (so that a typo fails in a second), minus those facebench
  sets itself (:data:`RESERVED_TRAINER_KEYS`);
* the early-stopping callback's values (``mode``, ``patience``, ``min_delta``, ``monitor``);
* the ``timm`` method's ``backbone`` (and its grid values): a name ``timm.list_models()`` knows;
* ``plugins``: the user's modules import (they register their methods before the methods are looked up).

A key set with ``--set`` is named as such in the message.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

#: Trainer arguments the worker sets itself: the suite may not (checkpointing, logging, samplers).
RESERVED_TRAINER_KEYS: dict[str, str] = {
    "callbacks": "facebench adds checkpointing, early stopping (the suite's early_stopping key) and progress",
    "logger": "facebench logs to CSV and W&B (the suite's logging key)",
    "default_root_dir": "each run writes into its own run folder",
    "plugins": "facebench writes checkpoints atomically (for facebench's own plugins use the suite's top-level plugins key)",
    "use_distributed_sampler": "facebench's datamodules shard every split themselves",
    "enable_checkpointing": "every run keeps its best and last checkpoints (evaluation.checkpoint picks one)",
}
EARLY_STOPPING_MODES = ("min", "max")


def _error(message: str) -> Exception:
    from facebench.benchmarks.suite import SuiteConfigError

    return SuiteConfigError(message)


def _suggest(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _set_by(dotted: str, overrides: dict[str, Any] | None) -> str:
    return " (from --set)" if overrides and dotted in overrides else ""


@functools.lru_cache(maxsize=1)
def trainer_arguments() -> tuple[str, ...]:
    """``lightning.Trainer.__init__``'s parameter names: from the imported class when Lightning is
    loaded already, else parsed from its source file (importing Lightning takes seconds)."""
    if "lightning" not in sys.modules:
        spec = importlib.util.find_spec("lightning")
        source = Path(spec.submodule_search_locations[0]) / "pytorch" / "trainer" / "trainer.py" \
            if spec and spec.submodule_search_locations else None
        if source is not None and source.is_file():
            for node in ast.parse(source.read_text()).body:
                if isinstance(node, ast.ClassDef) and node.name == "Trainer":
                    for f in node.body:
                        if isinstance(f, ast.FunctionDef) and f.name == "__init__" and not f.args.kwarg:
                            a = f.args
                            return tuple(x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg != "self")
    import lightning

    params = inspect.signature(lightning.Trainer.__init__).parameters
    return tuple(n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def check_trainer(where: str, trainer: Any, source: str, overrides: dict[str, Any] | None = None) -> None:
    """``trainer`` (the mapping at ``where``) holds only ``lightning.Trainer`` arguments facebench leaves to the suite."""
    if trainer is None:
        return
    if not isinstance(trainer, dict):
        raise _error(f"{source}: {where} must be a mapping of lightning.Trainer arguments, got {type(trainer).__name__}")
    allowed = [k for k in trainer_arguments() if k not in RESERVED_TRAINER_KEYS]
    for key in trainer:
        if key in RESERVED_TRAINER_KEYS:
            raise _error(f"{source}: {where}.{key} cannot be set{_set_by(f'{where}.{key}', overrides)}: "
                         f"{RESERVED_TRAINER_KEYS[key]}")
        if key not in allowed:
            raise _error(f"{source}: unknown key {key!r} in {where}{_set_by(f'{where}.{key}', overrides)}"
                         f"{_suggest(str(key), allowed)}; allowed: lightning.Trainer arguments {', '.join(sorted(allowed))}")


def check_early_stopping(where: str, es: Any, source: str) -> None:
    """The early-stopping callback's values (its keys are checked with the other keys)."""
    if not es:
        return
    if "mode" in es and es["mode"] not in EARLY_STOPPING_MODES:
        raise _error(f"{source}: {where}.mode is {es['mode']!r}; expected one of {', '.join(EARLY_STOPPING_MODES)}")
    if "patience" in es and not (isinstance(es["patience"], int) and not isinstance(es["patience"], bool)
                                 and es["patience"] >= 0):
        raise _error(f"{source}: {where}.patience is {es['patience']!r}; expected a whole number of epochs >= 0")
    if "min_delta" in es and (isinstance(es["min_delta"], bool) or not isinstance(es["min_delta"], (int, float))):
        raise _error(f"{source}: {where}.min_delta is {es['min_delta']!r}; expected a number")
    if "monitor" in es and not (isinstance(es["monitor"], str) and es["monitor"]):
        raise _error(f"{source}: {where}.monitor is {es['monitor']!r}; expected the name of a logged quantity such as "
                     f"val/loss or val/mean_accuracy")


#: ``@register_model`` functions and ``register_model_deprecations`` aliases in timm's source.
_TIMM_REGISTERED = re.compile(r"@register_model(?:\(\))?\s*\n\s*def\s+(\w+)\s*\(")
_TIMM_DEPRECATIONS = re.compile(r"register_model_deprecations\(\s*__name__\s*,\s*\{(.*?)\}\s*\)", re.S)
_TIMM_ALIAS = re.compile(r"['\"]([\w.\-]+)['\"]\s*:")
#: Fewer names than this in timm's source means its layout changed: ask timm itself.
MIN_TIMM_MODELS = 500


@functools.lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """timm's model names and deprecated aliases (what ``timm.is_model`` accepts), read from the
    source of ``timm/models`` in a few milliseconds (importing timm takes seconds); from timm itself
    when the source does not look as expected."""
    spec = importlib.util.find_spec("timm")
    names: set[str] = set()
    if spec and spec.submodule_search_locations:
        for path in (Path(spec.submodule_search_locations[0]) / "models").rglob("*.py"):
            text = path.read_text(encoding="utf-8", errors="replace")
            names.update(_TIMM_REGISTERED.findall(text))
            for block in _TIMM_DEPRECATIONS.findall(text):
                names.update(_TIMM_ALIAS.findall(block))
    if len(names) >= MIN_TIMM_MODELS:
        return frozenset(names)
    import timm

    return frozenset(timm.list_models())


def timm_model_problem(name: Any) -> str | None:
    """Why ``name`` is not a timm model (with the closest names), or ``None`` when timm knows it
    (a pretrained tag, ``resnet18.a1_in1k``, names the model before the dot)."""
    known = timm_model_names()
    if isinstance(name, str) and (name in known or name.split(".")[0] in known):
        return None
    close = difflib.get_close_matches(str(name), sorted(known), n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"timm has no model {name!r} (see timm.list_models()){hint}"


#: Method arguments checked when the suite loads: registered method name -> argument -> check
#: (returns what is wrong, or ``None``).
ARGUMENT_CHECKS: dict[str, dict[str, Callable[[Any], str | None]]] = {"timm": {"backbone": timm_model_problem}}


def check_method_arguments(methods: dict[str, Any], source: str, overrides: dict[str, Any] | None = None) -> None:
    """:data:`ARGUMENT_CHECKS` on every method's ``args`` and ``grid`` values."""
    for mk, mv in methods.items():
        for arg, check in ARGUMENT_CHECKS.get(mv.get("method"), {}).items():
            places = [(f"methods.{mk}.args.{arg}", (mv.get("args") or {})[arg])] if arg in (mv.get("args") or {}) else []
            places += [(f"methods.{mk}.grid.{arg}", v) for v in (mv.get("grid") or {}).get(arg) or []]
            for where, value in places:
                problem = check(value)
                if problem:
                    raise _error(f"{source}: {where}{_set_by(where, overrides)}: {problem}")


def load_plugins(plugins: Any, source: str) -> list[str]:
    """Import the suite's plugin modules; the list of their names."""
    from facebench.core.plugins import PluginError, import_plugins

    if plugins is None:
        return []
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise _error(f"{source}: plugins must be a list of module names (e.g. [mymethods]), got {plugins!r}")
    try:
        import_plugins(plugins)
    except PluginError as exc:
        raise _error(f"{source}: plugins: {exc}") from None
    return list(plugins)
