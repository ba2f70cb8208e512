"""Locally shared convolution (Liu et al., ICCV 2015, "Deep Learning Face Attributes in the Wild",
section 3.2, eq. 4) and its interweaved dense evaluation (section 3.2, Fig. 5).

A locally shared layer divides its output map into a grid of non-overlapping cells; every cell
``(p, q)`` has its own filters ``k_(p,q)`` and biases ``b_(p,q)``, applied only at the positions of
that cell (the input regions of neighbouring cells overlap by the kernel extent, as the paper notes
for Fig. 5 (a)). DeepFace [24] and DeepID2 [23] use such layers for aligned faces.

Two evaluations, both vectorised (no Python loop over cells or windows):

* :meth:`LocallySharedConv2d.forward` (aligned input, eq. 4): ``unfold`` the input into patches,
  group the output positions by cell and multiply each group by its cell's filters in one batched
  matrix product (``einsum``), then put the positions back in place.
* :meth:`LocallySharedConv2d.interweaved` (input of any size): every cell's filters are convolved
  with the *whole* map in one convolution (Fig. 5 (b): ``h_1^(3) ... h_4^(3)``), then, for every
  window offset, each output position takes the response of the filter of its cell (Fig. 5 (c):
  the interweaved map), one ``gather``. The result equals :meth:`forward` applied to every window
  of the input, computed without cropping the windows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cell_index(height: int, width: int, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """``LongTensor [height, width]``: the grid cell (row-major, ``p * grid[1] + q``) of every position.

    Cells split the map into ``grid`` balanced, non-overlapping blocks (sizes differ by at most one
    when the map size is not a multiple of the grid)."""
    gh, gw = grid
    if height < gh or width < gw:
        raise ValueError(f"a {height}x{width} map cannot be divided into a {gh}x{gw} grid of cells")
    rows = torch.div(torch.arange(height, device=device) * gh, height, rounding_mode="floor")
    cols = torch.div(torch.arange(width, device=device) * gw, width, rounding_mode="floor")
    return rows[:, None] * gw + cols[None, :]


class LocallySharedConv2d(nn.Module):
    """Convolution whose filters are shared inside each cell of a ``grid`` over the output map (eq. 4).

    Args:
        in_channels, out_channels, kernel_size: as ``nn.Conv2d`` (square kernels, stride 1).
        grid: ``(rows, cols)`` of cells.
        padding: zero padding of the aligned evaluation; :meth:`interweaved` needs ``padding=0``
            (with padding a window's border would see zeros in one evaluation and neighbouring
            pixels in the other).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, grid: tuple[int, int] = (2, 2),
                 padding: int = 0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, int(kernel_size)
        self.grid, self.padding = (int(grid[0]), int(grid[1])), int(padding)
        if min(self.grid) < 1:
            raise ValueError(f"grid must be two positive integers, got {grid}")
        n_cells = self.grid[0] * self.grid[1]
        self.weight = nn.Parameter(torch.empty(n_cells, out_channels, in_channels, self.kernel_size, self.kernel_size))
        self.bias = nn.Parameter(torch.empty(n_cells, out_channels)) if bias else None
        self._groupings: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.reset_parameters()

    @property
    def n_cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def reset_parameters(self) -> None:
        """Each cell initialised like an ``nn.Conv2d`` of the same shape (Kaiming uniform)."""
        fan_in = self.in_channels * self.kernel_size ** 2
        bound = 1.0 / math.sqrt(fan_in)
        # viewed as G*C_out filters: the fan-in (C_in * k * k) is that of one cell's nn.Conv2d
        nn.init.kaiming_uniform_(self.weight.data.view(-1, self.in_channels, self.kernel_size, self.kernel_size),
                                 a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, grid={self.grid}, "
                f"padding={self.padding}, bias={self.bias is not None}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        k, p = self.kernel_size, self.padding
        return height + 2 * p - k + 1, width + 2 * p - k + 1

    def _grouping(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(``members [G, n_max]``: output positions of each cell, padded with the dummy position
        ``height * width``; ``slot [height * width]``: where each position sits in ``members``)."""
        key = (height, width, str(device))
        if key not in self._groupings:
            cells = cell_index(height, width, self.grid, device).flatten()
            counts = torch.bincount(cells, minlength=self.n_cells)
            n_max = int(counts.max())
            order = torch.argsort(cells, stable=True)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.arange(len(cells), device=device) - starts[cells[order]]
            members = torch.full((self.n_cells, n_max), len(cells), dtype=torch.long, device=device)
            members[cells[order], rank] = order
            slot = torch.empty_like(cells)
            slot[order] = cells[order] * n_max + rank
            self._groupings[key] = (members, slot)
        return self._groupings[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aligned evaluation (eq. 4): ``[B, C_in, H, W] -> [B, C_out, H', W']``."""
        b = x.shape[0]
        ho, wo = self.output_size(x.shape[2], x.shape[3])
        patches = F.unfold(x, self.kernel_size, padding=self.padding)            # [B, K, P]
        patches = F.pad(patches, (0, 1))                                          # dummy zero position
        members, slot = self._grouping(ho, wo, x.device)
        grouped = patches[:, :, members]                                          # [B, K, G, n_max]
        w = self.weight.reshape(self.n_cells, self.out_channels, -1)              # [G, C_out, K]
        out = torch.einsum("bkgn,gok->bogn", grouped, w)                          # [B, C_out, G, n_max]
        if self.bias is not None:
            out = out + self.bias.t()[None, :, :, None]
        out = out.reshape(b, self.out_channels, -1)[:, :, slot]                   # back to positions
        return out.reshape(b, self.out_channels, ho, wo)

    def interweaved(self, x: torch.Tensor, window: tuple[int, int], stride: int = 1) -> torch.Tensor:
        """Dense evaluation over every ``window``-sized input window of ``x`` (section 3.2, Fig. 5).

        Returns ``[B, n_y, n_x, C_out, h', w']`` where entry ``(i, j)`` equals
        ``forward(x[:, :, i*stride : i*stride + window[0], j*stride : j*stride + window[1]])``.
        """
        if self.padding:
            raise ValueError("interweaved evaluation needs a locally shared layer without padding (padding=0)")
        b, _, height, width = x.shape
        wh, ww = window
        if height < wh or width < ww:
            raise ValueError(f"input map {height}x{width} is smaller than the window {wh}x{ww}")
        k, g, co = self.kernel_size, self.n_cells, self.out_channels
        # every cell's filters over the whole map, one convolution (Fig. 5 (b))
        flat_w = self.weight.reshape(g * co, self.in_channels, k, k)
        flat_b = self.bias.reshape(-1) if self.bias is not None else None
        responses = F.conv2d(x, flat_w, flat_b)                                   # [B, G*C_out, HR, WR]
        hr, wr = responses.shape[2], responses.shape[3]
        responses = responses.reshape(b, g, co, hr * wr).transpose(1, 2).reshape(b, co, g * hr * wr)
        ho, wo = wh - k + 1, ww - k + 1
        ny, nx = (height - wh) // stride + 1, (width - ww) // stride + 1
        dev = x.device
        cells = cell_index(ho, wo, self.grid, dev)                                # [ho, wo]
        ry = torch.arange(ho, device=dev)[:, None].expand(ho, wo)
        rx = torch.arange(wo, device=dev)[None, :].expand(ho, wo)
        oy = torch.arange(ny, device=dev) * stride
        ox = torch.arange(nx, device=dev) * stride
        # interweaved map (Fig. 5 (c)): position r of window (i, j) reads cell(r)'s response at (i, j) + r
        flat = (cells[None, None] * (hr * wr) + (oy[:, None, None, None] + ry[None, None]) * wr
                + (ox[None, :, None, None] + rx[None, None]))                     # [ny, nx, ho, wo]
        out = responses[:, :, flat.flatten()]                                     # [B, C_out, ny*nx*ho*wo]
        return out.reshape(b, co, ny, nx, ho, wo).permute(0, 2, 3, 1, 4, 5)
