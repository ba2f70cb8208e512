"""MCNN, MCNN-AUX and the independent CNNs of Hand & Chellappa, "Attributes for Improved Attributes:
A Multi-Task Network Utilizing Implicit and Explicit Relationships for Facial Attribute
Classification" (AAAI 2017).

* ``mcnn`` (section "Multi-Task CNN / Architecture", Figure 1): shared Conv1 (75 7x7) and Conv2
  (200 5x5), each ReLU -> 3x3 max-pool -> 5x5 local response normalisation; one Conv3 (300 3x3,
  ReLU, 5x5 max-pool, LRN) per Conv3 branch (Gender, Nose, Mouth, Eyes, Face and Other); one FC1
  (512, ReLU, dropout 0.5) and FC2 (512, ReLU, dropout 0.5) per attribute group (nine, Table 1),
  Conv3Other feeding AroundHead, FacialHair, Cheeks and Fat; one output unit per attribute of the
  group; sigmoid cross-entropy over all attributes.
* ``mcnn_aux`` (section "MCNN-AUX", Figure 2): the trained MCNN, frozen, with one fully connected
  layer from all attribute scores to all final scores trained on top (a second stage:
  ``init_from: <mcnn key>`` in a suite). Figure 3, its weights as a heatmap, is
  ``facebench analyze mcnn-aux-heatmap`` (:mod:`facebench.benchmarks.analyses.mcnn`).
* ``independent_cnns`` (sections "Multi-Task CNN" and "Experiments / Independent CNNs"): one path
  of MCNN (3 conv + 3 FC layers, ~1.6M parameters at 227x227) per attribute, all paths held and
  trained in one module with grouped convolutions and batched matrix products.

The attribute grouping of Table 1 is data (:data:`CELEBA_GROUPS`); another dataset passes its own
``groups`` (or sets ``Target.group``). The layers (``P`` parallel paths in one module) are in
:mod:`facebench.lightning_modules.mcnn_networks`; the Figure 3 heatmap is an analysis
(:mod:`facebench.benchmarks.analyses.mcnn`).

Choices the paper leaves open (each also noted where it is made):

* Strides and padding. The paper gives kernel sizes only. At its 227x227 input we use Conv1 stride
  4 (as in the Caffe networks it builds on), Caffe's ceil-mode pooling with stride 2 after Conv1
  and Conv2, no padding, and a 5x5 max-pool with stride 5 after Conv3: the Conv3 map is 10x10 and
  pools to exactly 2x2 (full coverage, no overlap), so FC1 sees 300x2x2 inputs. That makes one
  path 1.80M parameters and MCNN 11.5M, the only square FC1 grid consistent with both "over 1.6
  million" per independent CNN and "fewer than 16 million" for MCNN (1x1 gives 1.34M per path,
  3x3 gives 18.5M for MCNN).
* Reduced input (CPU runs). ``conv1_stride=None`` picks the stride that keeps Conv1's output near
  the 56x56 it has at 227 (``round((input - 7) / 55)``, at least 1): 2 at 96-128, 1 at 48-64; the
  rest of the network is unchanged and FC1 is sized from the resulting Conv3 grid.
* Local response normalisation: across 5 channels with Caffe's defaults (alpha 1e-4, beta 0.75,
  k 1), as in AlexNet.
* Pre-processing: the training mean per channel is subtracted (computed from the training split by
  :meth:`MCNNFamily.datamodule_kwargs`), pixels in Caffe's 0-255 scale; images are resized so that
  the crop is 227/256 of the shorter side (Caffe's 256 -> 227 convention) and cropped at random
  in training, at the centre in evaluation.
  A suite that sets the datamodule's ``preprocess: {subtract_mean: image}`` (Caffe's mean image)
  gets that instead: the datamodule's photometric preprocessing then takes precedence.
* Optimisation: the paper gives batch 100 and 22 epochs (set them in the suite; the datamodule owns
  the batch size, the trainer the epochs) but no solver settings; we use SGD with momentum 0.9 and
  weight decay 5e-4 (the Caffe AlexNet solver) with a cosine learning-rate decay. The task's loss
  averages the sigmoid cross-entropy over attributes where Caffe's SigmoidCrossEntropyLoss sums
  them, so the learning rate is 0.05 rather than Caffe's usual 0.01 (about 0.00125 in Caffe's
  units); on the CelebA subset 0.05 learnt faster than 0.01 (validation mean accuracy after 60
  steps at 96x96: 83.2% vs 82.0%). MCNN-AUX trains its one layer with SGD, lr 0.1 (chosen on the
  validation split: on cached MCNN scores lr 0.01 barely moves the layer in 10 epochs), no weight
  decay.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from facebench.datamodules.celeba import CELEBA_ATTRIBUTES
from facebench.core.tasks import TaskSpec
from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.mcnn_networks import GroupedLinear, ParallelConvStage, PathHeads, PathOutputs  # noqa: F401
from facebench.lightning_modules.registry import register_method

#: Table 1 of the paper: attribute groups over CelebA's attribute names (``list_attr_celeba.txt``).
CELEBA_GROUPS: dict[str, list[str]] = {
    "Gender": ["Male"],
    "Nose": ["Big_Nose", "Pointy_Nose"],
    "Mouth": ["Big_Lips", "Wearing_Lipstick", "Mouth_Slightly_Open", "Smiling"],
    "Eyes": ["Arched_Eyebrows", "Bags_Under_Eyes", "Bushy_Eyebrows", "Eyeglasses", "Narrow_Eyes"],
    "Face": ["Attractive", "Blurry", "Heavy_Makeup", "Oval_Face", "Pale_Skin", "Young"],
    "AroundHead": ["Bald", "Bangs", "Black_Hair", "Blond_Hair", "Brown_Hair", "Wearing_Earrings", "Gray_Hair",
                   "Wearing_Hat", "Wearing_Necklace", "Wearing_Necktie", "Receding_Hairline", "Straight_Hair",
                   "Wavy_Hair"],
    "FacialHair": ["5_o_Clock_Shadow", "Goatee", "Mustache", "No_Beard", "Sideburns"],
    "Cheeks": ["High_Cheekbones", "Rosy_Cheeks"],
    "Fat": ["Chubby", "Double_Chin"],
}
#: Conv3 branches shared by several groups ("Architecture": Conv3Other feeds four FC1s); every
#: other group has a Conv3 of its own.
PAPER_CONV3_SHARING: dict[str, list[str]] = {"Other": ["AroundHead", "FacialHair", "Cheeks", "Fat"]}

#: Caffe's ImageNet pre-processing: resize to 256, crop 227.
CAFFE_RESIZE_RATIO = 256 / 227
#: Caffe's LRN defaults (AlexNet): size 5, alpha 1e-4, beta 0.75, k 1.
CAFFE_LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
#: Conv1 output side at the paper's 227x227 input with stride 4.
PAPER_CONV1_OUTPUT = 56


class GroupingError(ValueError):
    """The attribute grouping does not cover the task, or is malformed (an attribute in two groups, ...)."""


def _key(name: str) -> str:
    """Attribute names compare without case, spaces, hyphens or underscores ("Big Nose" == "Big_Nose")."""
    return re.sub(r"[\s_\-']+", "", name).lower()


def resolve_groups(task: TaskSpec, groups: dict[str, Sequence[str]] | None = None,
                   unlisted_group: str | None = None) -> dict[str, list[str]]:
    """Assign every target of ``task`` to a group: ``{group: [target names in task order]}``.

    Where a target's group comes from, first match wins: the ``groups`` argument (``{group:
    [attribute, ...]}``), the target's own ``Target.group``, Table 1 (:data:`CELEBA_GROUPS`, only
    when ``groups`` is not given). Targets in none go to ``unlisted_group`` when it is set, else a
    :class:`GroupingError` names them. Groups without a target of the task are dropped (a task
    restricted to a few attributes keeps only their groups).
    """
    table = CELEBA_GROUPS if groups is None else groups
    if not isinstance(table, dict) or not all(isinstance(v, (list, tuple)) for v in table.values()):
        raise GroupingError(f"groups must map a group name to a list of attribute names, got {table!r}")
    lookup: dict[str, str] = {}
    for group, names in table.items():
        for n in names:
            other = lookup.setdefault(_key(n), group)
            if other != group:
                raise GroupingError(f"attribute {n!r} is listed in two groups: {other!r} and {group!r}")
    assigned: dict[str, list[str]] = {}
    unlisted: list[str] = []
    for t in task.targets:
        group = lookup.get(_key(t.name)) if groups is not None else None
        group = group or t.group or lookup.get(_key(t.name))
        if group is None:
            if unlisted_group is None:
                unlisted.append(t.name)
                continue
            group = unlisted_group
        assigned.setdefault(group, []).append(t.name)
    if unlisted:
        source = "the 'groups' argument" if groups is not None else "Table 1 (CELEBA_GROUPS) or Target.group"
        raise GroupingError(f"task {task.name!r}: attribute(s) {unlisted} are in no group of {source}; add them to "
                            f"'groups' ({{group: [attribute, ...]}}) or set unlisted_group (e.g. 'Other')")
    order = list(table) + [g for g in assigned if g not in table]
    return {g: assigned[g] for g in order if g in assigned}


def resolve_branches(groups: Sequence[str], conv3_sharing: dict[str, Sequence[str]]) -> dict[str, list[str]]:
    """Conv3 branches: ``{branch: [groups fed by it]}``. A group listed in ``conv3_sharing`` shares
    that branch; a group named like a sharing branch (``unlisted_group='Other'``) joins it; every
    other group gets a Conv3 of its own. Branches feeding no group of the task are dropped."""
    if not isinstance(conv3_sharing, dict) or not all(isinstance(v, (list, tuple)) for v in conv3_sharing.values()):
        raise GroupingError(f"conv3_sharing must map a branch name to a list of group names, got {conv3_sharing!r}")
    owner: dict[str, str] = {}
    for branch, members in conv3_sharing.items():
        for g in members:
            if g in owner:
                raise GroupingError(f"conv3_sharing lists group {g!r} under two branches: {owner[g]!r} and {branch!r}")
            owner[g] = branch
    branches: dict[str, list[str]] = {}
    for g in groups:
        branch = owner.get(g, g)
        branches.setdefault(branch, []).append(g)
    return branches


def auto_conv1_stride(input_size: int, kernel: int = 7) -> int:
    """Conv1 stride keeping its output near the paper's 56x56 (stride 4 at 227): 2 at 96-128, 1 at 64."""
    return max(1, round((input_size - kernel) / (PAPER_CONV1_OUTPUT - 1)))


# ------------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------------
class MCNNFamily(FaceAttributeTask):
    """What MCNN, MCNN-AUX and the independent CNNs share: layer sizes, pre-processing, solver.

    Args:
        conv_filters: filters of Conv1, Conv2, Conv3 (paper: 75, 200, 300).
        conv_kernels: their kernel sizes (paper: 7, 5, 3).
        pool_kernels: max-pool sizes after each (paper: 3, 3, 5).
        pool_strides: max-pool strides (not in the paper: 2, 2, 5; see the module docstring).
        conv1_stride: Conv1 stride; ``None`` = :func:`auto_conv1_stride` (4 at 227, 2 at 96-128).
        fc_units: units of FC1 and FC2 (paper: 512); ``dropout`` after each (paper: 0.5).
        lrn: local response normalisation (size, alpha, beta, k); default Caffe's.
        pixel_mean: the training mean per channel in [0, 1] units, subtracted from every image
            (``None``: computed from the training split by :meth:`datamodule_kwargs` in a suite
            run; when constructed without data the datamodule's own normalisation stays).
        pixel_scale: multiplies the mean-subtracted pixels (255: Caffe's 0-255 scale).
        mean_images: training images averaged for ``pixel_mean`` (evenly spaced over the split).
        resize_ratio: the image is resized to ``input_size * resize_ratio`` before the
            ``input_size`` crop (Caffe's 256/227); ``random_crop``: random position in training.
    """

    paper = ('Hand & Chellappa, "Attributes for Improved Attributes: A Multi-Task Network Utilizing '
             'Implicit and Explicit Relationships for Facial Attribute Classification", AAAI 2017')
    task_kinds = frozenset({"binary", "multiclass", "multilabel", "ordinal"})
    input_size = 227
    default_optimizer = {"name": "SGD", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    default_scheduler = {"name": "CosineAnnealingLR", "T_max": "max_epochs", "interval": "epoch"}

    def __init__(self, task: Any, *, conv_filters: Sequence[int] = (75, 200, 300), conv_kernels: Sequence[int] = (7, 5, 3),
                 pool_kernels: Sequence[int] = (3, 3, 5), pool_strides: Sequence[int] = (2, 2, 5),
                 conv1_stride: int | None = None, fc_units: int = 512, dropout: float = 0.5,
                 lrn: dict[str, float] | None = None, pixel_mean: Sequence[float] | None = None,
                 pixel_scale: float = 255.0, mean_images: int = 1000, resize_ratio: float = CAFFE_RESIZE_RATIO,
                 random_crop: bool = True, **kwargs: Any):
        for name, value in (("conv_filters", conv_filters), ("conv_kernels", conv_kernels),
                            ("pool_kernels", pool_kernels), ("pool_strides", pool_strides)):
            if len(value) != 3:
                raise ValueError(f"{type(self).__name__}: {name} needs 3 values (Conv1, Conv2, Conv3), got {list(value)}")
        self.conv_filters, self.conv_kernels = [int(v) for v in conv_filters], [int(v) for v in conv_kernels]
        self.pool_kernels, self.pool_strides = [int(v) for v in pool_kernels], [int(v) for v in pool_strides]
        self.conv1_stride_arg, self.fc_units, self.dropout = conv1_stride, int(fc_units), float(dropout)
        self.lrn = {**CAFFE_LRN, **(lrn or {})}
        unknown_lrn = sorted(set(self.lrn) - set(CAFFE_LRN))
        if unknown_lrn:
            raise ValueError(f"{type(self).__name__}: unknown lrn option(s) {unknown_lrn}; allowed: {', '.join(CAFFE_LRN)}")
        self.pixel_mean = [float(v) for v in pixel_mean] if pixel_mean is not None else None
        self.pixel_scale, self.resize_ratio, self.random_crop = float(pixel_scale), float(resize_ratio), random_crop
        super().__init__(task, **kwargs)
        self.default_train_transforms = self.preprocessing()

    # -- pre-processing ------------------------------------------------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        """TransformConfig fields of the paper's pre-processing ("Architecture"): resize, 227-of-256
        crop (random in training), training-mean subtraction in Caffe's pixel scale."""
        out: dict[str, Any] = {"resize_to": int(round(self.image_size * self.resize_ratio)), "random_crop": self.random_crop}
        if self.pixel_mean is not None:
            mean = self.pixel_mean * self.in_chans if len(self.pixel_mean) == 1 else self.pixel_mean
            if len(mean) != self.in_chans:
                raise ValueError(f"{type(self).__name__}: pixel_mean has {len(self.pixel_mean)} values for "
                                 f"{self.in_chans} input channels")
            out["mean"] = tuple(mean)
            out["std"] = tuple([1.0 / self.pixel_scale] * self.in_chans)
        return out

    @classmethod
    def datamodule_kwargs(cls, dm: Any, args: dict[str, Any]) -> dict[str, Any]:
        """``pixel_mean``: the per-channel mean of up to ``mean_images`` training images (as the
        datamodule frames them, e.g. face boxes), unless the suite gives it."""
        if args.get("pixel_mean") is not None or "train" not in getattr(dm, "tables", {}):
            return {}
        if getattr(getattr(dm, "preprocess_cfg", None), "photometric", False):
            return {}   # the datamodule's own `preprocess` (e.g. subtract_mean: image) normalises instead
        return {"pixel_mean": training_mean(dm, int(args.get("mean_images", 1000)))}

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def conv1_stride(self) -> int:
        return self.conv1_stride_arg or auto_conv1_stride(self.image_size, self.conv_kernels[0])

    def conv_stage(self, index: int, paths: int, in_channels: int, shared_input: bool) -> ParallelConvStage:
        return ParallelConvStage(paths, in_channels, self.conv_filters[index], self.conv_kernels[index],
                                 stride=self.conv1_stride if index == 0 else 1, pool_kernel=self.pool_kernels[index],
                                 pool_stride=self.pool_strides[index], lrn=self.lrn, shared_input=shared_input)

    def conv3_grid(self) -> int:
        """Side of the Conv3 output map (FC1 sees ``conv_filters[2] * grid**2`` inputs per path)."""
        stages = [self.conv_stage(i, 1, c, True) for i, c in enumerate([self.in_chans] + self.conv_filters[:2])]
        x = torch.zeros(1, self.in_chans, self.image_size, self.image_size)
        sizes: list[tuple[int, ...]] = []
        with torch.no_grad():
            for i, stage in enumerate(stages):
                try:
                    x = stage.pool(stage.conv(x))
                except RuntimeError:
                    raise ValueError(f"{type(self).__name__}: input {self.image_size}x{self.image_size} is too small for "
                                     f"Conv{i + 1} and its pooling (maps so far: {sizes}); use a larger input_size or a "
                                     f"smaller conv1_stride (now {self.conv1_stride})") from None
                sizes.append(tuple(x.shape[-2:]))
        return int(x.shape[-1])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.attribute_scores(image)

    def attribute_scores(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@torch.no_grad()
def training_mean(dm: Any, max_images: int = 1000) -> list[float]:
    """Per-channel mean in [0, 1] of up to ``max_images`` evenly spaced training images, framed as
    the datamodule frames them for evaluation (the paper subtracts "the training mean")."""
    from facebench.datamodules.preprocess import pixel_statistics

    ds = dm.dataset("train", train=False)
    if len(ds) == 0:
        raise ValueError(f"{getattr(dm, 'registered_name', 'dataset')}: the training split is empty")
    idx = torch.linspace(0, len(ds) - 1, steps=min(len(ds), max(1, max_images))).round().long().unique().tolist()
    # undo the datamodule's normalisation: pixels back in [0, 1]
    stats = pixel_statistics(ds[i]["image"] * ds.transform.std + ds.transform.mean for i in idx)
    return [round(float(v), 6) for v in stats.mean.mean(dim=(1, 2))]


@register_method("mcnn")
class MCNN(MCNNFamily):
    """The multi-task CNN of the paper ("Multi-Task CNN", Figure 1, Table 1).

    Args:
        groups: ``{group: [attribute, ...]}``; default Table 1 (:data:`CELEBA_GROUPS`), else each
            target's ``Target.group``. One FC1/FC2/output head per group.
        conv3_sharing: ``{branch: [group, ...]}`` groups that share one Conv3 (paper: Conv3Other for
            AroundHead, FacialHair, Cheeks, Fat); every other group has its own Conv3.
        unlisted_group: put attributes that are in no group into this group (``"Other"`` joins
            Conv3Other); ``None`` (default) raises an error naming them.

    Multi-class / ordinal / multi-label targets (beyond the paper, which has binary attributes
    only) get one output unit per class in their group's output layer; the task's loss applies a
    softmax cross-entropy to multi-class / ordinal slices and sigmoid cross-entropy elsewhere.
    """

    def __init__(self, task: Any, *, groups: dict[str, list[str]] | None = None,
                 conv3_sharing: dict[str, list[str]] | None = None, unlisted_group: str | None = None, **kwargs: Any):
        self.groups_arg, self.unlisted_group = groups, unlisted_group
        self.conv3_sharing = PAPER_CONV3_SHARING if conv3_sharing is None else conv3_sharing
        super().__init__(task, **kwargs)

    @classmethod
    def reference_config(cls) -> dict[str, Any]:
        """Table 1 over the reference task's ``attr0..attr39`` (CelebA's attribute order)."""
        rename = {n: f"attr{i}" for i, n in enumerate(CELEBA_ATTRIBUTES)}
        return {"groups": {g: [rename[n] for n in names] for g, names in CELEBA_GROUPS.items()}}

    def configure_models(self) -> None:
        self.groups = resolve_groups(self.task, self.groups_arg, self.unlisted_group)
        self.branches = resolve_branches(list(self.groups), self.conv3_sharing)
        group_names = list(self.groups)
        branch_names = list(self.branches)
        branch_of_group = {g: branch_names.index(b) for b, gs in self.branches.items() for g in gs}
        self.register_buffer("branch_of_group", torch.tensor([branch_of_group[g] for g in group_names]), persistent=False)
        group_of_target = {n: group_names.index(g) for g, names in self.groups.items() for n in names}
        path_of_column = [group_of_target[t.name] for t in self.task.targets for _ in range(t.n_logits)]
        grid = self.conv3_grid()
        f1, f2, f3 = self.conv_filters
        self.conv1 = self.conv_stage(0, 1, self.in_chans, shared_input=True)
        self.conv2 = self.conv_stage(1, 1, f1, shared_input=True)
        self.conv3 = self.conv_stage(2, len(branch_names), f2, shared_input=True)   # the six Conv3s at once
        self.heads = PathHeads(len(group_names), f3 * grid * grid, self.fc_units, self.dropout, path_of_column)

    def attribute_scores(self, image: torch.Tensor) -> torch.Tensor:
        """MCNN's attribute scores (logits) ``[B, task.n_logits]`` in the task's column order."""
        return self.scores_from_conv2(self.conv2(self.conv1(image)))

    def shared_parameters(self) -> list[nn.Parameter]:
        """Conv1 and Conv2, the layers every attribute group shares (multi-task gradient methods)."""
        return [*self.conv1.parameters(), *self.conv2.parameters()]

    def shared_representation(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Conv2's output maps (after its pooling and LRN), what every Conv3 branch reads; the heads are
        the Conv3 branches and the groups' FC layers (``mtl: {gradients: representation}``)."""
        return self.conv2(self.conv1(batch["image"])), self.scores_from_conv2

    def scores_from_conv2(self, x: torch.Tensor) -> torch.Tensor:
        """The attribute scores from Conv2's output (every layer after the shared ones)."""
        x = self.conv3(x)
        per_branch = x.reshape(x.shape[0], len(self.branches), -1)   # [B, branches, 300 * grid^2]
        return self.heads(per_branch[:, self.branch_of_group])       # each group's FC1 reads its branch

    def task_groups(self) -> dict[str, list[str]]:
        """The attribute groups as resolved for the task (Table 1 by default), for ``mtl: {tasks: groups}``."""
        return self.groups


@register_method("mcnn_aux")
class MCNNAux(MCNN):
    """MCNN-AUX ("MCNN-AUX", Figure 2): the trained MCNN, frozen, then one fully connected layer from
    all attribute scores to all final scores (``n_logits x n_logits`` weights + biases).

    A second stage: give ``init_from: <mcnn key>`` in the suite; :meth:`load_init_checkpoint`
    requires every MCNN weight in that checkpoint. Only the AUX layer is optimised; the frozen MCNN
    runs in evaluation mode (no dropout on the scores AUX learns from: the standard choice for a
    frozen feature extractor, the paper does not say).

    Args:
        aux_init: initial AUX weights (the paper does not give them): ``"identity"`` (default; zero
            biases: stage 2 starts exactly at MCNN's scores and learns the off-diagonal
            relationships of Figure 3), ``"zeros"`` (Caffe's default filler) or ``"xavier"``.
    """

    default_optimizer = {"name": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
    AUX_INITS: ClassVar[tuple[str, ...]] = ("identity", "zeros", "xavier")

    def __init__(self, task: Any, *, aux_init: str = "identity", **kwargs: Any):
        if aux_init not in self.AUX_INITS:
            raise ValueError(f"mcnn_aux: aux_init {aux_init!r} is not one of {self.AUX_INITS}")
        self.aux_init = aux_init
        super().__init__(task, **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        for p in self.parameters():
            p.requires_grad_(False)
        n = self.task.n_logits
        self.aux = nn.Linear(n, n)
        with torch.no_grad():
            if self.aux_init == "identity":
                self.aux.weight.copy_(torch.eye(n))
                self.aux.bias.zero_()
            elif self.aux_init == "zeros":
                self.aux.weight.zero_()
                self.aux.bias.zero_()
            else:
                nn.init.xavier_uniform_(self.aux.weight)
                self.aux.bias.zero_()

    def mcnn_modules(self) -> list[nn.Module]:
        return [self.conv1, self.conv2, self.conv3, self.heads]

    def frozen_modules(self) -> list[nn.Module]:
        return self.mcnn_modules()

    def attribute_scores(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            scores = super().attribute_scores(image)
        return self.aux(scores)

    def load_init_checkpoint(self, path: str) -> None:
        """Load the trained MCNN of an earlier stage; every MCNN weight must be there, shapes equal."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("aux.")}
        missing = sorted(k for k in own if k not in state)
        wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
        if missing or wrong:
            raise ValueError(f"{path}: not a checkpoint of the same MCNN (missing {missing[:5]}, shape differs "
                             f"{[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:5]]}); "
                             f"init_from must name the mcnn stage trained with the same groups, input size and widths")
        self.load_state_dict({k: state[k] for k in own}, strict=False)


@register_method("independent_cnns")
class IndependentCNNs(MCNNFamily):
    """One independent CNN per target ("Experiments / Independent CNNs"): one path of MCNN, i.e.
    Conv1 -> Conv2 -> Conv3 -> FC1 -> FC2 -> output with the same sizes, nothing shared, all paths
    in one module (grouped convolutions, batched FC layers). Each path has 1.80M parameters at
    227x227 ("over 1.6 million"); the paper trains them one at a time, here one step trains all.
    The training loss is the *sum* of the per-attribute losses: paths share nothing, so each one
    gets exactly the gradient of its own attribute's loss at the full learning rate, as if trained
    alone (one scale per path; the mean would train each at ``lr / T``). The paths live in shared
    grouped layers, so they share one checkpoint selection (the epoch of the best mean
    ``val/loss``), unlike the per-network selection of the semantic CNN's and LACNN's
    separate networks."""

    @property
    def sums_target_losses(self) -> bool:
        return True

    def configure_models(self) -> None:
        paths = len(self.task.targets)
        grid = self.conv3_grid()
        f1, f2, f3 = self.conv_filters
        self.conv1 = self.conv_stage(0, paths, self.in_chans, shared_input=True)    # every path reads the image
        self.conv2 = self.conv_stage(1, paths, f1, shared_input=False)
        self.conv3 = self.conv_stage(2, paths, f2, shared_input=False)
        path_of_column = [p for p, t in enumerate(self.task.targets) for _ in range(t.n_logits)]
        self.heads = PathHeads(paths, f3 * grid * grid, self.fc_units, self.dropout, path_of_column)

    def attribute_scores(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv3(self.conv2(self.conv1(image)))
        return self.heads(x.reshape(x.shape[0], len(self.task.targets), -1))

    def path_parameter_count(self) -> int:
        """Parameters of one path (the paper's "each CNN would have over 1.6 million parameters")."""
        return self.parameter_count() // len(self.task.targets)
