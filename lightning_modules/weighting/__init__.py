"""Multi-task loss weightings and gradient methods, by name (a method's ``mtl: {weighting: NAME}``).

* :mod:`~facebench.lightning_modules.weighting.base`: the registry (:data:`WEIGHTINGS`, :func:`register_weighting`,
  :func:`create_weighting`), the two kinds (loss and gradient weightings), the DDP average.
* :mod:`~facebench.lightning_modules.weighting.loss_based`: equal, uncertainty, dwa, rlw, famo, gradnorm.
* :mod:`~facebench.lightning_modules.weighting.conflict`: pcgrad, cagrad.
* :mod:`~facebench.lightning_modules.weighting.pareto`: mgda, nash_mtl.
* :mod:`~facebench.lightning_modules.weighting.balance`: imtl, aligned_mtl.
* :mod:`~facebench.lightning_modules.weighting.objective`: tasks from targets or groups, and the training loss
  that carries a weighting's combination through Lightning and DDP.
"""

from facebench.lightning_modules.weighting.base import (WEIGHTINGS, GradientWeighting, LossWeighting, StepContext, Weighting,
                                              create_weighting, ddp_mean, register_weighting, weighting_names)
from facebench.lightning_modules.weighting.objective import MultiTaskObjective, build_multitask, resolve_tasks

__all__ = ["WEIGHTINGS", "GradientWeighting", "LossWeighting", "MultiTaskObjective", "StepContext", "Weighting",
           "build_multitask", "create_weighting", "ddp_mean", "register_weighting", "resolve_tasks", "weighting_names"]
