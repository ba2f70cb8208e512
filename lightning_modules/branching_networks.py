"""The base network of Baumgartner & Culpepper, "Deep Architectures for Face Attributes" (Flickr /
Yahoo, 2016): the residual identity network of Fig. 2 (sec. 3.1) as named steps, so that a branch
can start from any of its layers (Fig. 3). The methods that train it (``branching_identity``,
``branching``) are in :mod:`facebench.lightning_modules.branching`.

**The base network (Fig. 2, sec. 3.1).** The figure is not in the text; this is our reading of
the text, with the choices it leaves open marked *(choice)*:

====== ======================================================== ============ ==========
stage  layers (paper names)                                     output@224   1x1 -> 3x3
====== ======================================================== ============ ==========
(a)    conv1 7x7/2, 32 filters, BN, ReLU *(choice)*, max-pool 2x2/2 56x56x32   --
(b)    1 module: conv2 1x1, BN, ReLU, conv3 3x3, add             56x56x64     32 -> 64
(c)    2 modules, 3x3 at stride 2, 1x1/2 shortcut: conv4-conv7   28x28x128,   64 -> 128,
                                                                14x14x256    128 -> 256
(d)    6 modules: conv8-conv19                                   14x14x256    128 -> 256
(e)    1 module, 3x3 at stride 2, 1x1/2 shortcut: conv20-conv21  7x7x512      256 -> 512
(f)    1 module: conv22-conv23                                   7x7x512      256 -> 512
(g)    average pool, conv24 = "conv-bn320" (1x1 conv + BN, the   320, classes --
       320-d bottleneck), fc
====== ======================================================== ============ ==========

* every module is the paper's (b): a 1x1 convolution to half the module's output width, BN,
  ReLU, a 3x3 convolution to the output width, element-wise addition with the shortcut (identity,
  or a 1x1 convolution where the width or the resolution changes: stride 2 in (c) and (e),
  stride 1 where the stem's 32 channels meet (b)'s 64 *(choice)*); no BN / ReLU after the
  addition, as in the paper's description;
* "24 convolution layers, excluding the shortcut layers" = conv1 + 11 modules x 2 + conv24; the
  module counts per stage *(choice)* put the bulk of the FLOPs in (d) and give conv17 / conv19
  (3x3 of the last two (d) modules), conv21 (3x3 of the stride-2 (e) module) and conv22 (the 1x1
  of (f)): the branch points of Fig. 3;
* 8.48 M parameters with the paper's ~10 K identities (the text: "9M", Fig. 4: "10M") and 0.81 G
  multiply-adds at 224x224 (the text: "0.9 Gflops"; the paper counts a multiply-add as one flop:
  ``torch.utils.flop_counter`` counts two, i.e. 1.62 G). Fig. 4's fine-tuned parameter counts
  cannot all be reproduced from the text: "age, from conv22" (889,230) is exactly a 3x3 128 -> 512
  convolution, its 256 -> 512 shortcut, the 512 -> 320 bottleneck and a 14-way fc, but no module
  layout makes "emotion, from conv19" (1,018,055) consistent with the same network; here branching
  from conv22 trains 1.48 M parameters (+ the head).
* weights ~ N(0, 0.01) (sec. 4.1; ``init_std`` = 0.1, ``None`` for PyTorch's default), biases 0.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

#: (output width, modules, stride of the first module) per stage (b)-(f); see the module docstring.
DEFAULT_STAGES: tuple[tuple[int, int, int], ...] = ((64, 1, 1), (128, 1, 2), (256, 1, 2), (256, 6, 1), (512, 1, 2),
                                                    (512, 1, 1))
BOTTLENECK = "bottleneck320"
#: The depths of Fig. 3, shallow to deep.
PAPER_BRANCH_POINTS: tuple[str, ...] = ("conv17", "conv19", "conv21", "conv22", BOTTLENECK, "fc")


# ------------------------------------------------------------------------------------------------
# the network of Fig. 2, as an ordered list of named steps
# ------------------------------------------------------------------------------------------------
class StemStep(nn.Module):
    """Stage (a): conv1 7x7/2 with 32 filters, BN, ReLU, 2x2/2 max-pooling (224 -> 56)."""

    def __init__(self, in_chans: int, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, channels, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class ReduceStep(nn.Module):
    """First half of a module (Fig. 2 b): 1x1 convolution, BN, ReLU. Returns ``(input, hidden)``:
    the input travels on to the shortcut of the :class:`ExpandStep`."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.relu(self.bn(self.conv(x)))


class ExpandStep(nn.Module):
    """Second half of a module: 3x3 convolution (stride 2 in stages c and e) added to the shortcut
    (identity, or a 1x1 convolution at the same stride when the shape changes)."""

    def __init__(self, width: int, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(width, out_channels, 3, stride=stride, padding=1, bias=False)
        self.shortcut: nn.Module = (nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
                                    if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, h = state
        return self.conv(h) + self.shortcut(x)


class BottleneckStep(nn.Module):
    """Stage (g) up to the classifier: global average pooling, then "conv-bn320", a 1x1
    convolution to the 320-d bottleneck with BN. Its output is the face descriptor of sec. 4.2."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x.mean(dim=(2, 3), keepdim=True))).flatten(1)


def normalize_stages(stages: Sequence[Sequence[int]] | None) -> tuple[tuple[int, int, int], ...]:
    """``stages`` as ``((width, modules, stride), ...)`` (:data:`DEFAULT_STAGES` for None), checked."""
    out = tuple(tuple(int(v) for v in s) for s in (stages if stages is not None else DEFAULT_STAGES))
    for s in out:
        if len(s) != 3 or s[0] < 2 or s[1] < 1 or s[2] not in (1, 2):
            raise ValueError(f"stages: each stage is [output width >= 2, modules >= 1, stride 1 or 2], got {list(s)}")
    return out  # type: ignore[return-value]


class FaceIdentityNetwork(nn.Module):
    """The base network of Fig. 2 as named steps ``conv1, conv2, ..., conv23, bottleneck320, fc``.

    ``steps[name]`` is the layer the paper calls ``name`` (a module's 1x1 step owns its BN, its 3x3
    step owns the shortcut). :meth:`run` executes a range of steps, which is how branches start
    from a frozen trunk's intermediate state.
    """

    ALIASES: ClassVar[dict[str, str]] = {"conv-bn320": BOTTLENECK}

    def __init__(self, num_classes: int, *, in_chans: int = 3, stem_channels: int = 32,
                 stages: Sequence[Sequence[int]] | None = None, bottleneck_dim: int = 320,
                 init_std: float | None = 0.1):
        super().__init__()
        self.stages, self.init_std = normalize_stages(stages), init_std
        steps: dict[str, nn.Module] = {"conv1": StemStep(in_chans, stem_channels)}
        channels, k = stem_channels, 2
        for width, count, stride in self.stages:
            for i in range(count):
                s = stride if i == 0 else 1
                steps[f"conv{k}"] = ReduceStep(channels, width // 2)
                steps[f"conv{k + 1}"] = ExpandStep(width // 2, channels, width, s)
                channels, k = width, k + 2
        self.aliases = {**self.ALIASES, f"conv{k}": BOTTLENECK}
        steps[BOTTLENECK] = BottleneckStep(channels, bottleneck_dim)
        steps["fc"] = nn.Linear(bottleneck_dim, num_classes)
        self.steps = nn.ModuleDict(steps)
        self.step_names: list[str] = list(steps)
        self.bottleneck_dim = bottleneck_dim
        self.reset_steps(0)

    # -- structure ---------------------------------------------------------------------------------
    def step_index(self, name: str) -> int:
        """Position of a branch point (``convK``, ``bottleneck320`` / ``conv-bn320`` / ``conv24``, ``fc``)."""
        key = self.aliases.get(name, name)
        if key not in self.step_names:
            raise ValueError(f"unknown layer {name!r}; branch points: {', '.join(self.step_names)} "
                             f"(aliases: {', '.join(self.aliases)})")
        return self.step_names.index(key)

    def named_convolutions(self) -> dict[str, nn.Conv2d]:
        """The 24 numbered convolutions of the paper (shortcuts excluded), by name."""
        out = {name: step.conv for name, step in self.steps.items() if hasattr(step, "conv")}
        bottleneck = out.pop(BOTTLENECK)
        out[f"conv{len(out) + 1}"] = bottleneck
        return out

    def step_modules(self, start: int = 0, stop: int | None = None) -> list[nn.Module]:
        return [self.steps[n] for n in self.step_names[start:stop] if n in self.steps]

    def reset_steps(self, start: int, stop: int | None = None) -> None:
        """Fresh weights for steps ``[start, stop)``: N(0, init_std) (sec. 4.1) or PyTorch's default."""
        for step in self.step_modules(start, stop):
            for m in step.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    if self.init_std is None:
                        m.reset_parameters()
                    else:
                        nn.init.normal_(m.weight, 0.0, self.init_std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    m.reset_parameters()

    def keep_steps(self, start: int, stop: int | None = None) -> None:
        """Delete every step outside ``[start, stop)`` (a trunk or a branch of an assembled model)."""
        keep = set(self.step_names[start:stop])
        for name in list(self.steps):
            if name not in keep:
                del self.steps[name]

    # -- forward -----------------------------------------------------------------------------------
    def run(self, state: Any, start: int = 0, stop: int | None = None) -> Any:
        for name in self.step_names[start:stop]:
            state = self.steps[name](state)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 320-d descriptor (output of conv-bn320, the input of the final fc; sec. 4.2)."""
        return self.run(x, 0, self.step_index(BOTTLENECK) + 1)
