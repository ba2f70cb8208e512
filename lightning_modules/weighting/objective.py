"""The multi-task training objective a method gets from ``mtl: {...}``: which targets form each
task, and how a weighting's combination reaches the optimiser (DDP included).

``mtl: {weighting: NAME, tasks: targets | groups | {task: [target, ...]}, **weighting_kwargs}``:

* ``tasks: targets`` (default): one task per target; ``groups``: one task per attribute group (the
  method's ``task_groups()``: MCNN's Table 1 groups, else each ``Target.group``); a mapping names
  the targets of each task. Every target belongs to exactly one task; a task's loss is the mean of
  its targets' losses.
* ``weighting``: a name of :data:`~facebench.lightning_modules.weighting.base.WEIGHTINGS` (default ``equal``);
  the other keys are its constructor's arguments.

Gradient weightings and automatic optimisation. The per-task gradients on the shared parameters
are taken in the training step with ``torch.autograd.grad(..., retain_graph=True)`` and averaged
over DDP ranks (:func:`~facebench.lightning_modules.weighting.base.ddp_mean`; DDP's reducer does not see
``autograd.grad``), then combined into the shared gradient ``s [P]`` and head weights ``w [K]``. The
step returns

    loss = sum_k w_k L_k  +  sum_p < p - p.detach(), (s - w G)_p >,

whose value is exactly the weighted loss (the second term is exactly zero) and whose backward gives
every task-specific parameter the gradient of ``sum_k w_k L_k`` and every shared parameter ``w G_local
+ (s - w G)``. DDP averages that over ranks to ``w G + s - w G = s``, the combined gradient. We chose
this over overwriting ``.grad`` in ``on_after_backward`` or manual optimisation because it keeps
Lightning's loop as it is: gradient accumulation, the AMP loss scaler, gradient clipping, DDP's
bucketed all-reduce, and the base task's NaN check and ``train/loss`` logging all apply unchanged.
For the weightings whose update is a weighting of the task gradients (MGDA, IMTL, Nash-MTL,
Aligned-MTL: ``s = w G``) the correction is zero up to rounding.

Tasks whose gradient is zero on every rank (none of their targets labelled in the batch) sit out
that step's combination (weight 0): a zero gradient is an absent task, not a converged one (MGDA
would otherwise stop every task, Nash-MTL and IMTL would divide by zero).

Cost: ``K`` extra backward passes to the shared parameters and ``K x P`` floats per step (P: the
shared parameters' size), e.g. 40 tasks on a ResNet-18 trunk hold 1.8 GB: group the targets
(``tasks: groups``) for large trunks.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.weighting.base import StepContext, Weighting, create_weighting, ddp_mean


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
    """

    def __init__(self, weighting: Weighting, tasks: dict[str, list[int]], n_targets: int):
        super().__init__()
        if weighting.n_tasks != len(tasks):
            raise ValueError(f"weighting built for {weighting.n_tasks} tasks, {len(tasks)} given")
        self.weighting = weighting
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
        parameters, averaged over ranks, combined, and a loss whose backward gives the combination."""
        params = [p for p in ctx.shared() if p.requires_grad]
        rows = []
        for k in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[k], params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)]))
        g_all = ddp_mean(torch.stack(rows))
        reduced = ddp_mean(losses.detach())
        k = losses.shape[0]
        active = (g_all != 0).any(dim=1).nonzero().flatten()
        if len(active) == 0:
            return losses.mean(), torch.full((k,), 1.0 / k, dtype=losses.dtype, device=losses.device)
        shared, w_active = self.weighting.combine(g_all[active], reduced[active])
        weights = torch.zeros(k, dtype=g_all.dtype, device=g_all.device)
        weights[active] = w_active.detach().to(g_all.dtype)
        correction = shared.detach() - weights @ g_all
        surrogate = losses.new_zeros(())
        for p, c in zip(params, correction.split([p.numel() for p in params])):
            surrogate = surrogate + ((p - p.detach()) * c.view(p.shape).to(p.dtype)).sum()
        weights = weights.to(losses.dtype)
        return (weights * losses).sum() + surrogate, weights

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
                    shared: Callable[[], Sequence[nn.Parameter]]) -> MultiTaskObjective:
    """The objective for a method's ``mtl`` argument (module docstring); a gradient weighting (or
    GradNorm) needs the method to name its shared parameters (``shared()``), else a ``ValueError``."""
    if not isinstance(mtl, dict):
        raise ValueError(f"{method}: mtl must be a mapping {{weighting: NAME, tasks: ..., **options}}, got {mtl!r}")
    cfg = dict(mtl)
    name = cfg.pop("weighting", "equal")
    tasks = resolve_tasks(task, cfg.pop("tasks", "targets"), groups)
    weighting = create_weighting(name, len(tasks), **cfg)
    if weighting.gradient_based or weighting.needs_shared:
        if not [p for p in shared() if p.requires_grad]:
            raise ValueError(f"weighting {name!r} needs the trainable parameters that all tasks share, and method "
                             f"{method!r} names none (its shared_parameters() hook is empty or frozen); use a loss "
                             f"weighting (equal, uncertainty, dwa, rlw, famo) with this method")
    return MultiTaskObjective(weighting, tasks, len(task.targets))
