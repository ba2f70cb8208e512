"""The networks of Hand & Chellappa's MCNN family (AAAI 2017; :mod:`facebench.lightning_modules.mcnn` holds
the methods): ``P`` parallel paths of the paper's layers in one module, so that MCNN's per-group
branches and the independent CNNs' per-attribute networks run as a few batched operations.

* :class:`ParallelConvStage`: convolution -> ReLU -> max-pool -> LRN per path ("Architecture").
* :class:`GroupedLinear`: ``P`` fully connected layers as one batched matrix product.
* :class:`PathOutputs`: one output unit per attribute, reading its path's last hidden layer.
* :class:`PathHeads`: FC1 -> FC2 -> outputs per path (each with ReLU and dropout).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class ParallelConvStage(nn.Module):
    """``paths`` parallel conv stages: convolution -> ReLU -> max-pool -> LRN (the paper's Conv1/2/3).

    Input ``[B, in_paths * in_channels, H, W]``. With ``shared_input`` every path reads the same
    ``in_channels`` maps (one convolution with ``paths * out_channels`` filters, e.g. the six Conv3s
    on Conv2's output); otherwise path ``p`` reads its own slice (a grouped convolution, the
    independent CNNs). The LRN runs inside each path, never across two paths' channels.
    """

    def __init__(self, paths: int, in_channels: int, out_channels: int, kernel: int, *, stride: int = 1,
                 pool_kernel: int, pool_stride: int, lrn: dict[str, float], shared_input: bool = False):
        super().__init__()
        self.paths, self.out_channels = paths, out_channels
        groups = 1 if shared_input else paths
        self.conv = nn.Conv2d(in_channels * (1 if shared_input else paths), out_channels * paths, kernel, stride=stride,
                              groups=groups)
        self.pool = nn.MaxPool2d(pool_kernel, pool_stride, ceil_mode=True)   # Caffe rounds pooled sizes up
        self.norm = nn.LocalResponseNorm(int(lrn["size"]), alpha=lrn["alpha"], beta=lrn["beta"], k=lrn["k"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(x)))
        b, _, h, w = x.shape
        x = self.norm(x.reshape(b * self.paths, self.out_channels, h, w))
        return x.reshape(b, self.paths * self.out_channels, h, w)


class GroupedLinear(nn.Module):
    """``paths`` independent fully connected layers applied at once: ``[B, P, in] -> [B, P, out]``
    (a batched matrix product; each path initialised like ``nn.Linear``)."""

    def __init__(self, paths: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(paths, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(paths, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)   # = nn.Linear's kaiming_uniform(a=sqrt(5)) bound
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bpi,pio->bpo", x, self.weight) + self.bias


class PathOutputs(nn.Module):
    """The output units: logit column ``j`` is one unit fully connected to its path's last hidden
    layer (``path_of_column[j]``), so each group's FC2 feeds only its own attributes' outputs."""

    def __init__(self, path_of_column: Sequence[int], in_features: int):
        super().__init__()
        self.register_buffer("path_of_column", torch.as_tensor(list(path_of_column), dtype=torch.long), persistent=False)
        n = len(path_of_column)
        self.weight = nn.Parameter(torch.empty(n, in_features))
        self.bias = nn.Parameter(torch.empty(n))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [B, P, F]`` -> logits ``[B, n_columns]``."""
        return torch.einsum("bjf,jf->bj", hidden[:, self.path_of_column], self.weight) + self.bias


class PathHeads(nn.Module):
    """FC1 -> ReLU -> dropout -> FC2 -> ReLU -> dropout -> outputs, for ``paths`` parallel paths."""

    def __init__(self, paths: int, in_features: int, hidden: int, dropout: float, path_of_column: Sequence[int]):
        super().__init__()
        self.fc1 = GroupedLinear(paths, in_features, hidden)
        self.fc2 = GroupedLinear(paths, hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.out = PathOutputs(path_of_column, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.fc1(x)))
        x = self.drop(torch.relu(self.fc2(x)))
        return self.out(x)
