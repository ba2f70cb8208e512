"""The task description shared by every datamodule, method and metric.

A dataset describes its targets once, as a :class:`TaskSpec`; methods size their output layers from
it, losses and metrics read it, and nothing downstream switches on the dataset's name.

Layouts (fixed, everything relies on them):

* **labels** ``LongTensor [B, spec.n_label_slots]``: one slot per binary / multi-class / ordinal
  target (0/1 or the class index) and one slot per class of a multi-label target (0/1). ``-1``
  marks a missing label, ignored by losses and metrics.
* **logits / probabilities** ``[B, spec.n_logits]``: one column for a binary target (the positive
  class), one column per class for multi-class, ordinal and multi-label targets. Probabilities are
  sigmoid for binary / multi-label columns and a softmax inside each multi-class / ordinal slice.
  Code that depends on this split asks :attr:`Target.is_sigmoid` / :attr:`Target.is_softmax`, not
  the kind.
* **votes** (when ``target.has_votes``): ``LongTensor [B, len(target.vote_columns)]`` per target,
  rater counts per class (a binary target has 2 classes: negative, positive; ``vote_classes`` may
  add options the raters had beyond the classes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

import torch

TargetKind = Literal["binary", "multiclass", "multilabel", "ordinal"]
TARGET_KINDS: tuple[str, ...] = ("binary", "multiclass", "multilabel", "ordinal")
MISSING = -1


@dataclass(frozen=True)
class Target:
    """One prediction target.

    ``classes`` names the classes (binary: ``("no", "yes")`` by default); ``bin_edges`` are the
    lower edges in years of an ordinal age target's bins (so bin ``k`` covers
    ``[bin_edges[k], bin_edges[k+1])``); ``group`` is an optional attribute group (MCNN Table 1).
    ``vote_classes`` names the rater-vote columns when raters could choose more options than the
    target's classes (FER+: the 8 emotions, then ``unknown`` and ``NF``); it starts with ``classes``,
    and votes then have ``len(vote_classes)`` columns (default: one per class).
    """

    name: str
    kind: TargetKind = "binary"
    classes: tuple[str, ...] = ("no", "yes")
    has_votes: bool = False
    bin_edges: tuple[float, ...] | None = None
    group: str | None = None
    vote_classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"target {self.name!r}: kind {self.kind!r} is not one of {TARGET_KINDS}")
        if self.kind == "binary" and len(self.classes) != 2:
            raise ValueError(f"binary target {self.name!r} needs exactly 2 classes, got {self.classes}")
        if self.kind != "binary" and len(self.classes) < 2:
            raise ValueError(f"{self.kind} target {self.name!r} needs at least 2 classes")
        if self.bin_edges is not None and len(self.bin_edges) != len(self.classes):
            raise ValueError(f"ordinal target {self.name!r}: {len(self.bin_edges)} bin edges for {len(self.classes)} classes")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.bin_edges is not None:
            object.__setattr__(self, "bin_edges", tuple(float(e) for e in self.bin_edges))
        if self.vote_classes is not None:
            object.__setattr__(self, "vote_classes", tuple(self.vote_classes))
            if self.vote_classes[: len(self.classes)] != self.classes:
                raise ValueError(f"target {self.name!r}: vote_classes {self.vote_classes} must start with its classes {self.classes}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_logits(self) -> int:
        return 1 if self.kind == "binary" else self.n_classes

    @property
    def n_label_slots(self) -> int:
        return self.n_classes if self.kind == "multilabel" else 1

    @property
    def is_sigmoid(self) -> bool:
        """Binary and multi-label targets: independent 0/1 outputs, one label slot per logit column
        (0/1), a sigmoid per column, binary cross-entropy, predictions thresholded per column."""
        return self.kind in ("binary", "multilabel")

    @property
    def is_softmax(self) -> bool:
        """Multi-class and ordinal targets: mutually exclusive classes, one label slot holding the
        class index, a softmax over the target's logit slice, cross-entropy, argmax predictions.
        Exactly one of :attr:`is_sigmoid` and :attr:`is_softmax` is true."""
        return self.kind in ("multiclass", "ordinal")

    @property
    def vote_columns(self) -> tuple[str, ...]:
        """Names of the columns of this target's rater votes."""
        return self.vote_classes or self.classes


@dataclass(frozen=True)
class TaskSpec:
    """All targets of a dataset, in label/logit order (names unique, at least one target, else a
    ``ValueError``). ``extras`` is free-form and neither compared nor saved by :meth:`to_dict`."""

    targets: tuple[Target, ...]
    name: str = ""
    extras: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate target names in task {self.name!r}: {names}")
        if not names:
            raise ValueError(f"task {self.name!r} has no targets")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def binary_attributes(cls, names: Sequence[str], name: str = "", has_votes: bool = False,
                          groups: dict[str, str] | None = None) -> "TaskSpec":
        """A task of binary targets named ``names`` (``groups``: target name -> attribute group)."""
        groups = groups or {}
        return cls(tuple(Target(n, "binary", has_votes=has_votes, group=groups.get(n)) for n in names), name=name)

    def to_dict(self) -> dict:
        """``{"name", "targets": [Target fields]}``, the form checkpoints and records store (:meth:`from_dict`)."""
        return {"name": self.name, "targets": [asdict(t) for t in self.targets]}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        return cls(tuple(Target(**{**t, "classes": tuple(t["classes"]),
                                   "bin_edges": tuple(t["bin_edges"]) if t.get("bin_edges") else None})
                         for t in d["targets"]), name=d.get("name", ""))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    # -- layout ---------------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(t.kind for t in self.targets)

    @property
    def n_logits(self) -> int:
        return sum(t.n_logits for t in self.targets)

    @property
    def n_label_slots(self) -> int:
        return sum(t.n_label_slots for t in self.targets)

    @property
    def is_binary(self) -> bool:
        """Every target binary: the multi-label attribute setting of CelebA / LFWA."""
        return self.kinds == {"binary"}

    def _slices(self, attr: str) -> list[slice]:
        out, start = [], 0
        for t in self.targets:
            n = getattr(t, attr)
            out.append(slice(start, start + n))
            start += n
        return out

    @property
    def logit_slices(self) -> list[slice]:
        return self._slices("n_logits")

    @property
    def label_slices(self) -> list[slice]:
        return self._slices("n_label_slots")

    def target(self, name: str) -> Target:
        """The target called ``name``; a ``KeyError`` listing the targets otherwise."""
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"task {self.name!r} has no target {name!r}; targets: {', '.join(self.names)}")

    def subset(self, names: Sequence[str]) -> "TaskSpec":
        """A task of the targets ``names``, in the order given (``KeyError`` for an unknown one)."""
        return TaskSpec(tuple(self.target(n) for n in names), name=self.name)

    # -- tensors --------------------------------------------------------------------------------
    def binary_columns(self) -> tuple[list[int], list[int]]:
        """(logit columns, label columns) of all 0/1 outputs: binary targets and multi-label classes."""
        logit_cols, label_cols = [], []
        for t, ls, ys in zip(self.targets, self.logit_slices, self.label_slices):
            if t.is_sigmoid:
                logit_cols += list(range(ls.start, ls.stop))
                label_cols += list(range(ys.start, ys.stop))
        return logit_cols, label_cols

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Map logits ``[B, n_logits]`` to probabilities in the same layout."""
        out = torch.empty_like(logits, dtype=torch.float32)
        for t, s in zip(self.targets, self.logit_slices):
            if t.is_sigmoid:
                out[:, s] = torch.sigmoid(logits[:, s].float())
            else:
                out[:, s] = torch.softmax(logits[:, s].float(), dim=1)
        return out

    def predictions(self, probs: torch.Tensor, thresholds: torch.Tensor | float = 0.5) -> torch.Tensor:
        """Hard predictions in the label layout: 0/1 per binary column (probability >= ``thresholds``,
        a float or one value per column of :meth:`binary_columns`), argmax per class slice."""
        out = torch.empty(probs.shape[0], self.n_label_slots, dtype=torch.long, device=probs.device)
        bl, by = self.binary_columns()
        if bl:
            th = thresholds if isinstance(thresholds, float) else thresholds.to(probs.device)
            out[:, by] = (probs[:, bl] >= th).long()
        for t, ls, ys in zip(self.targets, self.logit_slices, self.label_slices):
            if t.is_softmax:
                out[:, ys.start] = probs[:, ls].argmax(dim=1)
        return out


def age_bins(edges: Sequence[float], unit: str = "") -> tuple[str, ...]:
    """Class names for ordinal age bins with the given lower edges (last bin open-ended)."""
    edges = list(edges)
    names = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        names.append(f"{lo:g}-{hi:g}{unit}" if hi is not None else f"{lo:g}+{unit}")
    return tuple(names)
