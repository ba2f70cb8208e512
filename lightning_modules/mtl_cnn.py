"""The small multi-task CNN of the CelebA-40 protocol that multi-task optimisation papers share
(FAMO, Liu et al. NeurIPS 2023, sec. 5 "CelebA"; the protocol goes back to Sener & Koltun 2018), and
its single-task counterpart (one network per task group).

The protocol's network, written here from its description (our own code): 64x64 RGB input; a shared
trunk of seven 3x3 convolutions (stride 1, padding 1, no bias), each followed by batch norm and ReLU,
with widths 64 | 128, 128 | 256, 256 | 512, 512 and a 2x2 max-pool after the first, third and fifth
(``|``), then global average pooling; two fully connected layers of 512 units (no bias, batch norm,
ReLU); one linear unit per attribute (40 heads) with a sigmoid cross-entropy loss. The protocol trains
it with Adam (lr 3e-4), batches of 256, 15 epochs, and reports the F1 score of each attribute at the
epoch with the best mean validation F1.

* ``mtl_cnn``: that network; any ``mtl: {weighting: ...}`` of the base task weighs its per-attribute
  (or per-group) losses, and its shared parameters are the trunk (everything but the heads); its
  shared representation (``mtl: {gradients: representation}``) is the trunk's output.
* ``per_group_networks: true``: the single-task baseline of a multi-task comparison (Δm%): one
  separate network of the same shape per task group (MCNN's nine attribute groups of Table 1 by
  default, or ``groups``), each with the heads of its group only, trained as separate networks
  (sum of the group losses, one gradient scale each) and each selected on its own validation score
  (:mod:`facebench.lightning_modules.selection`).

CPU scale: ``width`` multiplies every layer's width (1.0 is the protocol's; the ``mtl_celeba`` suite
says what it uses). Checkpoint selection monitors ``val/mean_f1`` as the protocol does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.mcnn import resolve_groups
from facebench.lightning_modules.registry import register_method

#: Widths of the seven convolutions and the two FC layers at ``width: 1``; a pool follows the
#: convolutions whose index is in :data:`POOL_AFTER`.
CONV_WIDTHS: tuple[int, ...] = (64, 128, 128, 256, 256, 512, 512)
POOL_AFTER: frozenset[int] = frozenset({0, 2, 4})
FC_WIDTH = 512


class SmallMultiTaskCNN(nn.Module):
    """Trunk (7 conv-BN-ReLU, 3 max-pools, global average pool, 2 FC-BN-ReLU) and a linear head
    with ``n_outputs`` units (one per attribute)."""

    def __init__(self, in_chans: int, n_outputs: int, width: float = 1.0):
        super().__init__()
        widths = [max(4, int(round(w * width))) for w in CONV_WIDTHS]
        fc = max(8, int(round(FC_WIDTH * width)))
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(c_in, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(inplace=True),
                   nn.Linear(fc, fc, bias=False), nn.BatchNorm1d(fc), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(fc, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


@register_method("mtl_cnn")
class MultiTaskCNN(FaceAttributeTask):
    """The CelebA-40 multi-task protocol's CNN (see the module docstring).

    Args:
        width: width multiplier of every layer (protocol: 1.0).
        per_group_networks: one separate network per task group (the single-task baseline).
        groups: ``{group: [target, ...]}`` for ``per_group_networks`` (default: MCNN's Table 1
            groups for CelebA, else each ``Target.group``).
    """

    paper = ("the CelebA-40 multi-task protocol of Sener & Koltun (NeurIPS 2018) as FAMO runs it (Liu et "
             "al., NeurIPS 2023)")
    task_kinds = frozenset({"binary", "multiclass", "multilabel", "ordinal"})
    input_size = 64
    default_optimizer = {"name": "Adam", "lr": 3e-4}
    default_scheduler = None
    monitor = ("val/mean_f1", "max")

    def __init__(self, task: Any, *, width: float = 1.0, per_group_networks: bool = False,
                 groups: dict[str, Sequence[str]] | None = None, **kwargs: Any):
        self.width, self.per_group_networks, self.groups_arg = float(width), per_group_networks, groups
        super().__init__(task, **kwargs)

    def network_groups(self) -> list[list[int]]:
        """Target indices of each network: one list of all targets, or one per group."""
        if not self.per_group_networks:
            return [list(range(len(self.task.targets)))]
        return [[self.task.names.index(n) for n in names] for names in self.task_groups().values()]

    def configure_models(self) -> None:
        self.target_networks = self.network_groups()
        slices = self.task.logit_slices
        self.networks = nn.ModuleList(
            SmallMultiTaskCNN(self.in_chans, sum(slices[i].stop - slices[i].start for i in idx), self.width)
            for idx in self.target_networks)
        order = [c for idx in self.target_networks for i in idx for c in range(slices[i].start, slices[i].stop)]
        self.register_buffer("logit_order", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = torch.cat([net(image) for net in self.networks], dim=1)
        return out[:, self.logit_order]

    def independent_networks(self) -> list[tuple[nn.Module, list[int]]]:
        return list(zip(self.networks, self.target_networks)) if self.per_group_networks else []

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trunk (every layer but the per-attribute output units) of the multi-task network."""
        if self.per_group_networks:
            return []
        return [p for p in self.networks[0].trunk.parameters() if p.requires_grad]

    def shared_representation(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """The trunk's output (the second FC layer's 512 units at width 1) and the per-attribute output
        units as the heads (``mtl: {gradients: representation}``)."""
        net = self.networks[0]
        return net.trunk(batch["image"]), lambda h: net.head(h)[:, self.logit_order]

    def task_groups(self) -> dict[str, list[str]]:
        return {g: list(names) for g, names in resolve_groups(self.task, self.groups_arg, unlisted_group="Other").items()}
