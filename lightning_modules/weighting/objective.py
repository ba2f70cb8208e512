"""The multi-task training objective a method gets from ``mtl: {...}``: which targets form each
task, and how a weighting's combination reaches the optimiser (DDP included).

``mtl: {weighting: NAME, tasks: targets | groups | {task: [target, ...]}, gradients: parameters |
representation, jacobian: auto | batched | loop, **weighting_kwargs}``:

* ``tasks: targets`` (default): one task per target; ``groups``: one task per attribute group (the
  method's ``task_groups()``: MCNN's Table 1 groups, else each ``Target.group``); a mapping names
  the targets of each task. Every target belongs to exactly one task; a task's loss is the mean of
  its targets' losses.
* ``weighting``: a name of :data:`~facebench.lightning_modules.weighting.base.WEIGHTINGS` (default ``equal``);
  the other keys are its constructor's arguments.
* ``gradients`` (gradient weightings only): ``parameters`` (default, the papers' definition) takes
  the per-task gradients on the shared parameters; ``representation`` on the shared representation
  (the method's ``shared_representation`` hook: its trunk's output and the heads that map it to the
  logits), MGDA-UB's approximation (Sener & Koltun 2018, sec. 3.3), far cheaper:
  :mod:`facebench.lightning_modules.weighting.jacobian`.
* ``jacobian``: how the per-task gradients are taken, ``batched`` (one vectorised backward pass),
  ``loop`` (one per task) or ``auto`` (default: batched on accelerators; on the CPU loop for the
  parameters, batched for the representation, the faster of the two there).

Gradient weightings and automatic optimisation. The per-task gradients (the rows ``G [K, N]``) are
taken in the training step on the graph of the step's forward pass, reduced over DDP ranks (DDP's
reducer does not see ``autograd.grad``), then combined into the shared gradient ``s [N]`` and head
weights ``w [K]``. The step returns

    loss = sum_k w_k L_k  +  < x - x.detach(), s - w G >,

``x`` the shared parameters or representation, whose value is exactly the weighted loss (the second
term is exactly zero) and whose backward gives every task-specific parameter the gradient of ``sum_k
w_k L_k`` and the shared part ``w G_local + (s - w G)``. DDP averages that over ranks to ``w G + s -
w G = s``, the combined gradient (for the representation, each rank's block: see
:class:`~facebench.lightning_modules.weighting.jacobian.RepresentationGradients`). We chose this over
overwriting ``.grad`` in ``on_after_backward`` or manual optimisation because it keeps Lightning's loop
as it is: gradient accumulation, the AMP loss scaler, gradient clipping, DDP's bucketed all-reduce,
and the base task's NaN check and ``train/loss`` logging all apply unchanged. For the weightings whose
update is a weighting of the task gradients (MGDA, IMTL, Nash-MTL, Aligned-MTL, UPGrad, ...: ``s = w
G``) the correction is zero up to rounding.

Tasks whose gradient is zero on every rank (none of their targets labelled in the batch) sit out
that step's combination (weight 0): :meth:`~facebench.lightning_modules.weighting.base.GradientWeighting.combine_tasks`.

Cost (benchmarks/perf/RESULTS.md): with ``gradients: parameters``, ``K`` backward passes to the shared
parameters (batched or not, the same arithmetic) and ``K x P`` floats per step (P: the shared
parameters' size), e.g. 40 tasks on a ResNet-18 trunk hold 1.8 GB: group the targets (``tasks:
groups``) or take the representation's gradients for large trunks. With ``gradients:
representation``, ``K`` backward passes through the heads and ``K x B x F`` floats (``F``: the
representation's size per sample).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.weighting.base import StepContext, Weighting, create_weighting, ddp_mean
from facebench.lightning_modules.weighting.jacobian import (JACOBIAN_MODES, ParameterGradients, RepresentationGradients,
                                                        task_jacobian)

#: ``mtl.gradients``: what the per-task gradients are taken on.
GRADIENT_SETTINGS = ("parameters", "representation")


def resolve_tasks(task: TaskSpec, tasks: Any, groups: Callable[[], dict[str, Sequence[str]]]) -> dict[str, list[int]]:
    """``{task name: [target indices]}`` for ``mtl.tasks``: ``"targets"``, ``"groups"`` (``groups()``
    gives ``{group: [target names]}``) or a mapping ``{task: [target names]}``. Every target must be
    in exactly one task."""
    names = list(task.names)
    if tasks == "targets":
        return {n: [i] for i, n in enumerate(names)}
    if tasks == "groups":
        mapping, where = groups(), "the method's attribute groups (task_groups())"
    elif isinstance(tasks, dict):
        mapping, where = tasks, "mtl.tasks"
    else:
        raise ValueError(f"mtl.tasks must be 'targets', 'groups' or a mapping {{task: [target, ...]}}, got {tasks!r}")
    out: dict[str, list[int]] = {}
    owner: dict[str, str] = {}
    for name, members in mapping.items():
        if isinstance(members, str) or not isinstance(members, (list, tuple)) or not members:
            raise ValueError(f"{where}: task {name!r} must list one or more target names, got {members!r}")
        for m in members:
            if m not in names:
                raise ValueError(f"{where}: task {name!r} names {m!r}, which is not a target of task {task.name!r} "
                                 f"(targets: {', '.join(names)})")
            if m in owner:
                raise ValueError(f"{where}: target {m!r} is in two tasks, {owner[m]!r} and {name!r}")
            owner[m] = str(name)
        out[str(name)] = sorted(names.index(m) for m in members)
    missing = [n for n in names if n not in owner]
    if missing:
        raise ValueError(f"{where}: target(s) {missing} are in no task; every target must be in exactly one")
    return out


def default_task_groups(task: TaskSpec) -> dict[str, list[str]]:
    """``{group: [target names]}`` from each target's ``Target.group`` (all must have one)."""
    ungrouped = [t.name for t in task.targets if t.group is None]
    if ungrouped:
        raise ValueError(f"mtl.tasks 'groups': target(s) {ungrouped} of task {task.name!r} have no group (Target.group); "
                         f"give the tasks as a mapping {{task: [target, ...]}} instead")
    out: dict[str, list[str]] = {}
    for t in task.targets:
        out.setdefault(str(t.group), []).append(t.name)
    return out


class MultiTaskObjective(nn.Module):
    """Task losses from target losses, and the training loss a weighting makes of them.

    Args:
        weighting: the weighting (a submodule: its parameters and buffers are the method's).
        tasks: ``{task name: [target indices]}`` (:func:`resolve_tasks`).
        n_targets: the task spec's number of targets.
        gradients: ``parameters`` or ``representation`` (gradient weightings: what the per-task
            gradients are taken on).
        jacobian: ``auto``, ``batched`` or ``loop`` (:func:`~facebench.lightning_modules.weighting.jacobian.task_jacobian`).
    """

    def __init__(self, weighting: Weighting, tasks: dict[str, list[int]], n_targets: int, gradients: str = "parameters",
                 jacobian: str = "auto"):
        super().__init__()
        if weighting.n_tasks != len(tasks):
            raise ValueError(f"weighting built for {weighting.n_tasks} tasks, {len(tasks)} given")
        if gradients not in GRADIENT_SETTINGS:
            raise ValueError(f"mtl.gradients must be one of {', '.join(GRADIENT_SETTINGS)}, got {gradients!r}")
        if jacobian not in JACOBIAN_MODES:
            raise ValueError(f"mtl.jacobian must be one of {', '.join(JACOBIAN_MODES)}, got {jacobian!r}")
        self.weighting = weighting
        self.gradients, self.jacobian = gradients, jacobian
        self.task_names = list(tasks)
        identity = [idx for idx in tasks.values()] == [[i] for i in range(n_targets)]
        if identity:
            self.task_matrix = None
        else:   # row k averages task k's targets
            matrix = torch.zeros(len(tasks), n_targets)
            for k, idx in enumerate(tasks.values()):
                matrix[k, idx] = 1.0 / len(idx)
            self.register_buffer("task_matrix", matrix, persistent=False)

    @property
    def uses_representation(self) -> bool:
        """The training step must give the shared representation (``StepContext.representation``)."""
        return bool(self.weighting.gradient_based) and self.gradients == "representation"

    @property
    def wants_losses_after_step(self) -> bool:
        return bool(self.weighting.wants_losses_after_step)

    def task_losses(self, target_losses: torch.Tensor) -> torch.Tensor:
        """``[K]``: each task's mean target loss (the target losses themselves for ``tasks: targets``)."""
        if self.task_matrix is None:
            return target_losses
        return self.task_matrix.to(target_losses.dtype) @ target_losses

    def forward(self, target_losses: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss and the parts to log (the unweighted mean task loss, each task's weight)."""
        losses = self.task_losses(target_losses)
        if self.weighting.gradient_based:
            loss, weights = self.gradient_loss(losses, ctx)
        else:
            loss, weights = self.weighting(losses, ctx)
        parts = {"mtl_mean_loss": losses.detach().mean()}
        parts.update({f"mtl_weight/{name}": w for name, w in zip(self.task_names, weights.detach().float())})
        return loss, parts

    def gradient_loss(self, losses: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a gradient weighting (module docstring): per-task gradients on the shared
        parameters or representation, reduced over ranks, combined, and a loss whose backward gives
        the combination."""
        if self.uses_representation:
            if ctx.representation is None:
                raise ValueError("mtl gradients: representation needs the step's shared representation "
                                 "(StepContext.representation); the method's training step gave none")
            space = RepresentationGradients(ctx.representation)
        else:
            space = ParameterGradients(ctx.shared())
        g_all = space.reduce(task_jacobian(losses, space.inputs, self.jacobian, space.cpu_choice))
        shared, weights = self.weighting.combine_tasks(g_all, ddp_mean(losses.detach()))
        weights = weights.detach().to(g_all.dtype)
        correction = shared.detach().to(g_all.dtype) - weights @ g_all
        weights = weights.to(losses.dtype)
        return (weights * losses).sum() + space.surrogate(correction), weights

    @torch.no_grad()
    def after_step(self, method: Any, batch: dict[str, Any]) -> None:
        """Give the weighting the task losses of ``batch`` after the optimiser step (FAMO): one forward
        pass without gradients in the method's current mode, its buffers (batch-norm statistics)
        restored afterwards so that the measurement leaves no trace."""
        saved = {name: buf.clone() for name, buf in method.named_buffers()}
        try:
            losses = self.task_losses(method.target_losses(method.logits(batch), batch))
        finally:
            buffers = dict(method.named_buffers())
            for name, value in saved.items():
                buffers[name].copy_(value)
        self.weighting.after_step(ddp_mean(losses.detach()))


def build_multitask(mtl: dict, task: TaskSpec, method: str, groups: Callable[[], dict[str, Sequence[str]]],
                    shared: Callable[[], Sequence[nn.Parameter]], has_representation: bool = False) -> MultiTaskObjective:
    """The objective for a method's ``mtl`` argument (module docstring); a gradient weighting (or
    GradNorm) needs the method to name its shared parameters (``shared()``), and ``gradients:
    representation`` its shared representation (``has_representation``), else a ``ValueError``."""
    if not isinstance(mtl, dict):
        raise ValueError(f"{method}: mtl must be a mapping {{weighting: NAME, tasks: ..., **options}}, got {mtl!r}")
    cfg = dict(mtl)
    name = cfg.pop("weighting", "equal")
    tasks = resolve_tasks(task, cfg.pop("tasks", "targets"), groups)
    gradients, jacobian = cfg.pop("gradients", "parameters"), cfg.pop("jacobian", "auto")
    weighting = create_weighting(name, len(tasks), **cfg)
    if weighting.gradient_based or weighting.needs_shared:
        if not [p for p in shared() if p.requires_grad]:
            raise ValueError(f"weighting {name!r} needs the trainable parameters that all tasks share, and method "
                             f"{method!r} names none (its shared_parameters() hook is empty or frozen); use a loss "
                             f"weighting (equal, uncertainty, dwa, rlw, famo) with this method")
    if gradients == "representation":
        if not weighting.gradient_based:
            raise ValueError(f"mtl.gradients: representation applies to gradient weightings; {name!r} weighs the "
                             f"losses (drop the key)")
        if getattr(weighting, "state_in_gradient_space", False):
            raise ValueError(f"weighting {name!r} keeps per-task gradients across steps, which exist in the parameter "
                             f"space only (the representation is another batch's at every step); use gradients: parameters")
        if not has_representation:
            raise ValueError(f"mtl.gradients: representation needs method {method!r} to give its shared representation "
                             f"(the shared_representation() hook: trunk output and heads); it has none")
    return MultiTaskObjective(weighting, tasks, len(task.targets), gradients=gradients, jacobian=jacobian)
