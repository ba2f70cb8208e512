"""Multi-task loss weightings and gradient methods, by name (a method's ``mtl: {weighting: NAME}``).

* :mod:`~facebench.lightning_modules.weighting.base`: the registry (:data:`WEIGHTINGS`, :func:`register_weighting`,
  :func:`create_weighting`, :func:`weighting_rows` for ``facebench list weightings``), the two kinds (loss and
  gradient weightings), the DDP average.
* :mod:`~facebench.lightning_modules.weighting.loss_based`: equal, uncertainty, dwa, rlw, famo, gradnorm, gls, stch.
* :mod:`~facebench.lightning_modules.weighting.conflict`: pcgrad, cagrad.
* :mod:`~facebench.lightning_modules.weighting.pareto`: mgda, nash_mtl.
* :mod:`~facebench.lightning_modules.weighting.balance`: imtl, aligned_mtl.
* :mod:`~facebench.lightning_modules.weighting.momentum`: db_mtl, moco.
* :mod:`~facebench.lightning_modules.weighting.peer` (with the data of
  :mod:`~facebench.lightning_modules.weighting.peer_specs`): the aggregators of the peer library torchjd
  (upgrad, dualproj, config, graddrop, gradvac, fairgrad, excess_mtl, cr_mogm and torchjd's versions of
  facebench's six gradient methods).
* :mod:`~facebench.lightning_modules.weighting.jacobian`: the per-task gradients (batched or one backward
  pass per task; on the shared parameters or the shared representation).
* :mod:`~facebench.lightning_modules.weighting.objective`: tasks from targets or groups, and the training loss
  that carries a weighting's combination through Lightning and DDP.

The names below are imported on first use (PEP 562), so that ``peer_specs`` (plain data) can be read
without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "WEIGHTINGS": "base", "GradientWeighting": "base", "LossWeighting": "base", "StepContext": "base", "Weighting": "base",
    "create_weighting": "base", "ddp_mean": "base", "register_weighting": "base", "weighting_names": "base",
    "weighting_rows": "base", "MultiTaskObjective": "objective", "build_multitask": "objective", "resolve_tasks": "objective",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
