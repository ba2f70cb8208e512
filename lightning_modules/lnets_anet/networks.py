"""LNets+ANet networks (Liu et al., ICCV 2015, sec. 3, Fig. 3): LNet_o / LNet_s (sec. 3.1) with
their LNet+ initialisation (sec. 4), ANet with locally shared convolutions (sec. 3.2, eq. 4) and
its dense multi-view evaluation, and the config dataclasses of their structure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from facebench.lightning_modules.local_conv import LocallySharedConv2d


@dataclass
class LNetConfig:
    """LNet_o / LNet_s structure (Fig. 3 (a, b), sec. 3.1) and input sizes.

    ``channels``: C1-C5 widths; ``fc_dim``: the hidden FC layer of the two added FC layers (sec. 4);
    ``o_size``: LNet_o's input (the whole image, resized; ``None``: the loader's image size);
    ``s_size``: LNet_s's input (the head-shoulder crop); ``local_response_norm``: AlexNet's LRN after
    C1 and C2 [10]; ``batch_norm``: batch normalisation after every convolution (not in the paper:
    a substitute for the ImageNet initialisation that makes training from scratch converge within
    CPU budgets).

    Not in the paper either (both default to the paper's choices):
    ``padding_mode``: padding of the convolutions (``zeros`` as AlexNet; ``reflect`` keeps the C5
    maps from lighting up along the image border, an artefact of zero padding with batch norm);
    ``pooling``: what feeds the two FC layers, ``pool5`` (AlexNet's 3x3/2 max-pooling of C5, sec. 4)
    or ``global_max`` (the maximum of every C5 channel over the map: the FC layers cannot learn
    position-specific responses, so a face anywhere must light the same C5 filters, and the head
    works at any input size); ``face_logit``: one more output after the attributes, "a face is in
    the image", trained against clutter-only images (``clutter_negatives`` of the LNet stages).
    """

    channels: tuple[int, ...] = (96, 256, 384, 384, 256)
    fc_dim: int = 4096
    dropout: float = 0.5
    local_response_norm: bool = True
    batch_norm: bool = False
    o_size: int | None = None
    s_size: int = 227
    padding_mode: str = "zeros"
    pooling: str = "pool5"
    face_logit: bool = False

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.validate()

    def validate(self) -> None:
        if len(self.channels) != 5 or min(self.channels) < 1:
            raise ValueError(f"lnet.channels must be five positive widths (C1..C5), got {self.channels}")
        if self.padding_mode not in ("zeros", "reflect", "replicate"):
            raise ValueError(f"lnet.padding_mode must be zeros, reflect or replicate, got {self.padding_mode!r}")
        if self.pooling not in ("pool5", "global_max"):
            raise ValueError(f"lnet.pooling must be pool5 or global_max, got {self.pooling!r}")


@dataclass
class ANetConfig:
    """ANet structure (Fig. 3 (c), sec. 3.2): ``channels``/``kernels`` of C1-C4, ``grids`` of the
    locally shared C3 and C4 (rows, cols of cells), the FC width and the input size."""

    input_size: int = 64
    channels: tuple[int, ...] = (64, 128, 160, 192)
    kernels: tuple[int, ...] = (5, 3, 3, 3)
    grids: tuple[tuple[int, int], ...] = ((2, 2), (2, 2))
    fc_dim: int = 256
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.kernels = tuple(int(k) for k in self.kernels)
        self.grids = tuple((int(g[0]), int(g[1])) for g in self.grids)
        self.validate()

    def validate(self) -> None:
        if len(self.channels) != 4 or len(self.kernels) != 4 or len(self.grids) != 2:
            raise ValueError("anet needs 4 channels, 4 kernels (C1..C4) and 2 grids (C3, C4)")
        if self.kernels[0] % 2 == 0 or self.kernels[1] % 2 == 0:
            raise ValueError(f"anet.kernels of C1 and C2 must be odd ('same' padding), got {self.kernels[:2]}")
        if self.input_size % 4:
            raise ValueError(f"anet.input_size must be a multiple of 4 (two 2x2 poolings), got {self.input_size}")


class LNet(nn.Module):
    """LNet_o / LNet_s (sec. 3.1, eq. 1-2): five convolutions with globally shared filters, max-pooling
    after C1 and C2, then the two FC layers added for attribute fine-tuning (sec. 4)."""

    #: (kernel, stride, padding) of every layer up to C5, for the receptive-field geometry.
    LAYERS: ClassVar[tuple[tuple[int, int, int], ...]] = ((11, 4, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1),
                                                          (3, 1, 1), (3, 1, 1))

    def __init__(self, n_outputs: int, input_size: int, cfg: LNetConfig, in_chans: int = 3):
        super().__init__()
        c = cfg.channels
        pm = cfg.padding_mode
        self.convs = nn.ModuleList([
            nn.Conv2d(in_chans, c[0], 11, stride=4, padding=2, padding_mode=pm), nn.Conv2d(c[0], c[1], 5, padding=2, padding_mode=pm),
            nn.Conv2d(c[1], c[2], 3, padding=1, padding_mode=pm), nn.Conv2d(c[2], c[3], 3, padding=1, padding_mode=pm),
            nn.Conv2d(c[3], c[4], 3, padding=1, padding_mode=pm)])
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0) if cfg.local_response_norm else nn.Identity()
        self.bns = nn.ModuleList([nn.BatchNorm2d(w) if cfg.batch_norm else nn.Identity() for w in c])
        self.pool = nn.MaxPool2d(3, 2)
        if cfg.pooling == "global_max":
            pooled, n_in = nn.AdaptiveMaxPool2d(1), c[4]
        else:
            side = (self.map_size(input_size) - 3) // 2 + 1
            if side < 1:
                raise ValueError(f"LNet input {input_size}px gives a {self.map_size(input_size)}-cell C5 map, too small for the "
                                 f"3x3 pooling of the FC head (use at least 63px)")
            # AlexNet's pool5 [10] feeds the FC layers; the response maps (C5) keep the two max-poolings
            pooled, n_in = nn.MaxPool2d(3, 2), c[4] * side * side
        self.head = nn.Sequential(pooled, nn.Flatten(), nn.Dropout(cfg.dropout),
                                  nn.Linear(n_in, cfg.fc_dim), nn.ReLU(inplace=True),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.fc_dim, n_outputs + int(cfg.face_logit)))

    @classmethod
    def map_size(cls, size: int) -> int:
        for k, s, p in cls.LAYERS:
            size = (size + 2 * p - k) // s + 1
        return size

    @classmethod
    def cell_geometry(cls) -> tuple[float, float]:
        """(offset, stride): the centre of C5 cell ``j`` is at ``offset + stride * j`` input pixels
        (continuous coordinates, pixel ``i`` covering ``[i, i + 1)``)."""
        offset, stride = 0.0, 1.0
        for k, s, p in reversed(cls.LAYERS):
            offset, stride = s * offset - p + (k - 1) / 2.0, s * stride
        return offset + 0.5, stride

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """C5 response maps ``h^(5)`` ``[B, 256, h, w]`` for an image of any size."""
        x = self.pool(self.norm(F.relu(self.bns[0](self.convs[0](x)))))
        x = self.pool(self.norm(F.relu(self.bns[1](self.convs[1](x)))))
        for conv, bn in zip(self.convs[2:], self.bns[2:]):
            x = F.relu(bn(conv(x)))
        return x

    def response_map(self, x: torch.Tensor) -> torch.Tensor:
        """The averaged C5 response (Fig. 3 (a, b)) ``[B, h, w]``."""
        return self.features(x).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The FC outputs: the attribute logits, then the face logit when ``face_logit``."""
        return self.head(self.features(x))


#: torchvision AlexNet ``features`` indices of C1..C5.
TORCHVISION_ALEXNET_CONVS = (0, 3, 6, 8, 10)


def load_pretrained_convs(lnet: LNet, source: str) -> None:
    """Initialise C1-C5 from a pre-trained network (LNet+, sec. 4): ``"torchvision"`` (ImageNet
    AlexNet, needs the network once; its widths are 64/192/384/256/256) or a local weights file (a
    torchvision AlexNet state dict, an LNet state dict or a facebench checkpoint)."""
    if source == "torchvision":
        try:
            from torchvision.models import AlexNet_Weights

            state = AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001  (URL / hub errors come in many types)
            raise RuntimeError(f"could not fetch torchvision's ImageNet AlexNet weights ({type(exc).__name__}); this "
                               f"machine may be offline: give 'pretrained: <local weights file>' or leave it unset "
                               f"for random initialisation") from None
        where = "torchvision AlexNet"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: pre-trained LNet weights file is missing")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        where = str(path)
    own = lnet.state_dict()
    loaded = {}
    for i, tv in enumerate(TORCHVISION_ALEXNET_CONVS):
        for part in ("weight", "bias"):
            names = [f"features.{tv}.{part}", f"convs.{i}.{part}", f"lnet_o.convs.{i}.{part}", f"lnet_s.convs.{i}.{part}"]
            key = next((n for n in names if n in state), None)
            if key is None:
                raise ValueError(f"{where}: no weights for C{i + 1} (looked for {', '.join(names)})")
            if state[key].shape != own[f"convs.{i}.{part}"].shape:
                raise ValueError(f"{where}: {key} has shape {tuple(state[key].shape)}, LNet C{i + 1} needs "
                                 f"{tuple(own[f'convs.{i}.{part}'].shape)} (set lnet.channels to the network's widths, "
                                 f"torchvision AlexNet: [64, 192, 384, 256, 256])")
            loaded[f"convs.{i}.{part}"] = state[key]
    lnet.load_state_dict(loaded, strict=False)


class ANet(nn.Module):
    """ANet (sec. 3.2, Fig. 3 (c)): C1-C2 globally shared, C3-C4 locally shared (eq. 4), three
    max-poolings (after C1, C2, C4) and one FC layer whose ReLU units are the face representation."""

    def __init__(self, cfg: ANetConfig, in_chans: int = 3):
        super().__init__()
        c, k = cfg.channels, cfg.kernels
        self.cfg = cfg
        self.c1 = nn.Conv2d(in_chans, c[0], k[0], padding=k[0] // 2)
        self.c2 = nn.Conv2d(c[0], c[1], k[1], padding=k[1] // 2)
        self.c3 = LocallySharedConv2d(c[1], c[2], k[2], grid=cfg.grids[0])
        self.c4 = LocallySharedConv2d(c[2], c[3], k[3], grid=cfg.grids[1])
        self.pool = nn.MaxPool2d(2)
        self.window = cfg.input_size // 4                      # C2 map of one input window
        side = (self.window - k[2] + 1 - k[3] + 1) // 2
        if side < 1:
            raise ValueError(f"anet.input_size {cfg.input_size} is too small for the C3/C4 kernels {k[2:]}")
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c[3] * side * side, cfg.fc_dim),
                                nn.ReLU(inplace=True))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Globally shared C1-C2 (with their max-pooling) for an image of any size."""
        return self.pool(F.relu(self.c2(self.pool(F.relu(self.c1(x))))))

    def local(self, c2: torch.Tensor) -> torch.Tensor:
        """Locally shared C3-C4 on aligned C2 windows -> C4 maps ``h^(4)``."""
        return F.relu(self.c4(F.relu(self.c3(c2))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """FC features ``[B, fc_dim]`` of aligned faces at the input size."""
        return self.fc(self.pool(self.local(self.trunk(x))))

    def dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate ANet at every window of an image of any size (>= the input size) in one pass
        (sec. 3.2): C1-C2 once over the image, C3 by the interweaved operation (Fig. 5), C4 and FC
        per window. Windows step by one C2 cell (4 pixels). Returns FC features
        ``[B, n_y, n_x, fc_dim]`` and the mean C4 response of each window ``[B, n_y, n_x]``
        (searched for its maximum as in eq. 5). Equals :meth:`forward` on C2-map windows."""
        c2 = self.trunk(x)
        c3 = F.relu(self.c3.interweaved(c2, (self.window, self.window)))       # [B, ny, nx, C, h, w]
        b, ny, nx = c3.shape[:3]
        c4 = F.relu(self.c4(c3.reshape(b * ny * nx, *c3.shape[3:])))
        feats = self.fc(self.pool(c4))
        return feats.reshape(b, ny, nx, -1), c4.mean(dim=(1, 2, 3)).reshape(b, ny, nx)
