"""One adapter that makes every aggregator of the peer library ``torchjd`` (Quinton & Rey 2024,
"Jacobian Descent for Multi-Objective Optimization") a facebench gradient weighting; the list of
aggregators, their papers and scale conventions is :data:`~facebench.lightning_modules.weighting.peer_specs.PEER_SPECS`.

A torchjd aggregator maps the Jacobian ``G [K, N]`` (one row per task) to one update ``[N]``, which is
exactly what :meth:`GradientWeighting.combine` does, so the adapter only has to

* build the aggregator from the suite's options (``mtl: {weighting: upgrad, ...}``);
* put its output on the mean-loss scale (``scale: sum`` divides by ``K``);
* give the task-specific parameters' losses weights: the aggregator's own weights when it is a
  weighting of the rows (``s = w G``), else ``1/K`` each (a head's gradient involves its own task
  alone: nothing to aggregate, the weight of the average);
* make its random draws (PCGrad's and GradVac's task orders, GradDrop's thresholds) reproducible
  and the same on every DDP rank: torchjd draws from torch's global generator, so every call runs
  under ``torch.random.fork_rng`` seeded from the weighting's own generator (:func:`run_generator`);
  the global stream the rest of training uses is left untouched.

Everything else comes with facebench's pipeline, which torchjd lacks: the rows are the DDP-reduced
per-task gradients on the shared parameters or representation
(:mod:`facebench.lightning_modules.weighting.jacobian`), tasks absent from a batch (partial labels) sit
out the step, and the combination reaches the optimiser through Lightning's ordinary backward pass
(:mod:`facebench.lightning_modules.weighting.objective`). Stateful aggregators (GradVac's cosine
targets, ExcessMTL's risk estimates, CR-MOGM's and Nash-MTL's previous weights) see every task's row,
an absent task's as zeros, so that their per-task state stays aligned with the tasks. Their tensor
state is saved in checkpoints and loaded on resume; state torchjd keeps outside tensors (Nash-MTL's
solver warm start, GradVac's record of the matrix shape, which makes it restart its cosine targets)
starts afresh after a resume.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from facebench.lightning_modules.weighting.base import GradientWeighting, register_weighting, run_generator
from facebench.lightning_modules.weighting.peer_specs import PEER_SPECS, PeerSpec


def _torchjd_class(name: str) -> Any:
    import torchjd.aggregation as aggregation

    return getattr(aggregation, name)


class PeerAggregator(GradientWeighting):
    """A torchjd aggregator as a facebench gradient weighting (module docstring); one subclass per
    :class:`PeerSpec`, made by :func:`register_peers`.

    Args:
        seed: seed of the generator of the aggregator's random draws; ``None``: the run's seed.
        **options: the aggregator's constructor arguments (the spec's ``options``).
    """

    implementation = "torchjd"
    spec: ClassVar[PeerSpec]

    def __init__(self, n_tasks: int, seed: int | None = None, **options: Any):
        super().__init__(n_tasks)
        self.seed, self.generator = run_generator(seed)
        self.options = {**self.spec.options, **options}
        self.aggregator = self.build_aggregator(self.n_tasks, self.options)

    @classmethod
    def option_names(cls) -> set[str]:
        return {"seed", *cls.spec.options}

    @classmethod
    def build_aggregator(cls, n_tasks: int, options: dict[str, Any]) -> Any:
        """The torchjd aggregator for ``n_tasks`` tasks."""
        spec = cls.spec
        if spec.wraps:   # a modifier of another torchjd weighting (CR-MOGM around MGDA)
            from torchjd.aggregation import GramianWeightedAggregator

            return GramianWeightedAggregator(_torchjd_class(spec.aggregator)(_torchjd_class(spec.wraps)(), **options))
        cls_ = _torchjd_class(spec.aggregator)
        if "n_tasks" in inspect.signature(cls_.__init__).parameters:
            return cls_(n_tasks=n_tasks, **options)
        return cls_(**options)

    def _draw(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with torch's global generator seeded from this weighting's own."""
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return fn(*args)

    def combine(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = grads.shape[0]
        divisor = float(k) if self.spec.scale == "sum" else 1.0
        if self.spec.weighted:
            weights = self._draw(self.aggregator.weighting, grads).to(grads.dtype) / divisor
            return weights @ grads, weights
        shared = self._draw(self.aggregator, grads) / divisor
        return shared, torch.full((k,), 1.0 / k, dtype=grads.dtype, device=grads.device)

    def combine_tasks(self, grads: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.stateful:   # state per task: every row, an absent task's as zeros (module docstring)
            shared, weights = self.combine(grads, losses)
            absent = ~(grads != 0).any(dim=1)
            return shared, weights.masked_fill(absent, 0.0)
        return super().combine_tasks(grads, losses)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):   # noqa: ANN001 (torch's signature)
        """torchjd registers its aggregators' state buffers as ``None`` until their first step; give
        them the saved tensors' shapes first, so that a checkpoint (a resumed run) loads them."""
        for name, module in self.aggregator.named_modules():
            sub = f"{prefix}aggregator.{name + '.' if name else ''}"
            for key, buffer in module._buffers.items():
                if buffer is None and sub + key in state_dict:
                    module._buffers[key] = torch.empty_like(state_dict[sub + key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, aggregator={self.spec.aggregator}, options={self.options}"


def register_peers() -> None:
    """Register one :class:`PeerAggregator` subclass per :data:`PEER_SPECS` entry."""
    for spec in PEER_SPECS:
        doc = (f"{spec.summary} {spec.paper}. Computed by torchjd's {spec.aggregator} "
               f"(scale: {spec.scale}; options: {', '.join(spec.options) or 'none'}).")
        cls = type(f"Peer_{spec.name}", (PeerAggregator,), {"spec": spec, "paper": spec.paper, "__doc__": doc,
                                                              "__module__": __name__})
        register_weighting(spec.name)(cls)


register_peers()
