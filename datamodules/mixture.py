"""The ``mixture`` datamodule: several face datasets with disjoint labels trained as ONE task with
partial labels (one network for CelebA's attributes, FER+'s emotion, an age target, ...).

Suite configuration::

    faces:
      datamodule: mixture
      args:
        members:                  # in this order: the task's targets are the members' targets in member order
          celeba: {datamodule: celeba, args: {root: ../shared/data/celeba_subset}}
          ferplus: {datamodule: ferplus, args: {root: ../shared/data/ferplus, label_mode: majority}}
          synth: {datamodule: synthfaces, args: {attributes: [Young]}, rename: {Young: synth_Young}}
        sampling: balanced        # | proportional | {celeba: 0.5, ferplus: 0.25, synth: 0.25}
        epoch_size: null          # training images per epoch (default: the members' training images)
        batch_size: 64

* **Members** are ordinary datamodules built with :func:`~facebench.datamodules.base.create_datamodule`
  from ``{datamodule, args, rename}``; their own ``Dataset`` reads every image. Options of the
  mixture that every datamodule takes (``seed``, ``max_samples``, ``transforms``,
  ``train_transforms``, ``image_cache``, ``cache_dir``, ...) are passed to each member whose
  ``args`` do not set them; the loader options (``batch_size``, ``num_workers``, ...) and the
  network input (``image_size``, ``channels``) belong to the mixture only.
* **Task** (:func:`union_task`): the union of the members' targets in member order. A name that
  two members share is one target when both define it alike (kind, classes, age bins, vote
  columns) and an error naming both members otherwise; nothing is prefixed automatically:
  ``rename`` gives a member's targets other names (e.g. to keep SynthFaces' ``Young`` apart from
  CelebA's). With distinct names every target belongs to one member, so the per-target metrics
  of the combined test split are the per-dataset metrics.
* **Partial labels**: a sample carries ``-1`` (:data:`~facebench.core.tasks.MISSING`) in every
  label column its member lacks (losses and metrics skip it); rater votes and soft labels stay
  with their own target (zeros elsewhere: fewer than two votes count as no rating). Caveat: a
  method's ``soft_targets`` loss (:func:`~facebench.lightning_modules.losses.target_losses`) averages over the
  whole batch, so the other members' zero rows shrink a soft-labelled target's loss by its share of
  the batch; hard labels (``-1`` skipped) are averaged over the rows that carry them.
* **Images**: :meth:`MixtureDataModule.configure_input` passes the network input to every member,
  so each member's ``Dataset`` produces it (FER+'s 48x48 grey is resized, and repeated to three
  channels when the network wants RGB). Landmarks and face boxes reach the batches only when
  every member has them (same number of points).
* **Sampling** (:class:`MixtureSampler`): each training epoch draws ``epoch_size`` images,
  member ``m`` getting its share ``w_m`` (largest remainders); within a member the images come
  from a stream of seeded permutations continued across epochs (every image once before any
  twice). The order depends on (seed, epoch) only and is sharded over DDP ranks by
  :class:`~facebench.datamodules.epoch_sampler.EpochShardSampler`'s own ``__iter__``.
* **Evaluation and tracing**: validation / test are the members' splits concatenated (the
  member order). The combined :class:`~facebench.datamodules.table.SampleTable` names each row
  ``<member>:<member path>`` (the records' ``ids``) and holds ``extra["member"]`` and
  ``extra["member_index"]`` (the row in the member's table); samples carry ``"member"`` (the
  member's position). Identities are offset per member so that two members never share one.
* The training warp runs in the DataLoader workers (``augment_on: batch`` is not offered).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facebench.datamodules.base import SPLITS, FaceDataModule, create_datamodule, get_datamodule_class, register_datamodule
from facebench.core.config import check_options, constructor_options
from facebench.core.tasks import MISSING, Target, TaskSpec
from facebench.datamodules.dataset import FaceDataset
from facebench.datamodules import epoch_sampler
from facebench.datamodules.epoch_sampler import EpochShardSampler
from facebench.datamodules.table import SampleTable
from facebench.datamodules.transforms import FaceTransform

MEMBER_KEYS = frozenset({"datamodule", "args", "rename"})
SAMPLING_MODES = ("balanced", "proportional")
#: Options of the mixture's own loaders and network input: set on the mixture, never on a member.
MIXTURE_ONLY = frozenset({"batch_size", "num_workers", "image_size", "channels", "pin_memory", "persistent_workers",
                          "drop_last", "augment_on"})
#: FaceDataModule options the mixture passes on to every member that does not set them itself.
SHARED_OPTIONS = frozenset(constructor_options(FaceDataModule, FaceDataModule) - MIXTURE_ONLY - {"root"})


class MixtureConfigError(ValueError):
    """A mixture's configuration or its members' tasks do not fit together (the message says how)."""


# ------------------------------------------------------------------------------------------------
# the task: union of the members' targets
# ------------------------------------------------------------------------------------------------
def _definition(t: Target) -> tuple:
    return (t.kind, t.classes, t.bin_edges)


def _describe_target(t: Target) -> str:
    bins = f", bin edges {list(t.bin_edges)}" if t.bin_edges is not None else ""
    return f"{t.kind} with classes {list(t.classes)}{bins}"


def union_task(member_tasks: Mapping[str, TaskSpec], name: str = "mixture") -> tuple[TaskSpec, dict[str, np.ndarray], list[str]]:
    """The union task of the members (targets in member order), each member's label columns in
    it, and the names shared by more than one member.

    A target name given by two members is one target when both define it alike (kind, classes and
    age bins; vote columns too when both have votes); otherwise a :class:`MixtureConfigError` names
    the target and both members."""
    targets: list[Target] = []
    owner: dict[str, str] = {}
    shared: list[str] = []
    for member, task in member_tasks.items():
        for t in task.targets:
            if t.name not in owner:
                owner[t.name] = member
                targets.append(t)
                continue
            k = [x.name for x in targets].index(t.name)
            prev = targets[k]
            if _definition(prev) != _definition(t):
                what = f"{_describe_target(prev)} vs {_describe_target(t)}"
            elif prev.has_votes and t.has_votes and prev.vote_columns != t.vote_columns:
                what = f"vote columns {list(prev.vote_columns)} vs {list(t.vote_columns)}"
            else:
                what = ""
            if what:
                raise MixtureConfigError(
                    f"mixture: target {t.name!r} of member {owner[t.name]!r} and target {t.name!r} of member {member!r} "
                    f"have different definitions ({what}); a name must mean one target: give one of them another name "
                    f"with members.{member}.rename: {{{t.name}: <new name>}}")
            targets[k] = dataclasses.replace(prev, has_votes=prev.has_votes or t.has_votes,
                                             vote_classes=prev.vote_classes or (t.vote_classes if t.has_votes else None),
                                             group=prev.group or t.group)
            if t.name not in shared:
                shared.append(t.name)
    union = TaskSpec(tuple(targets), name=name)
    slices = dict(zip(union.names, union.label_slices))
    columns = {m: np.concatenate([np.arange(slices[n].start, slices[n].stop) for n in task.names]).astype(np.int64)
               for m, task in member_tasks.items()}
    return union, columns, shared


def renamed_task(task: TaskSpec, rename: Mapping[str, str], member: str) -> TaskSpec:
    """``task`` with targets renamed per ``rename`` (``{old: new}``, every old name a target)."""
    unknown = [n for n in rename if n not in task.names]
    if unknown:
        raise MixtureConfigError(f"mixture: members.{member}.rename names {unknown}, not targets of that member "
                                 f"(its targets: {', '.join(task.names)})")
    return TaskSpec(tuple(dataclasses.replace(t, name=rename.get(t.name, t.name)) for t in task.targets), name=task.name)


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
def allocate(total: int, weights: Sequence[float]) -> np.ndarray:
    """``total`` draws split by ``weights`` (largest remainders, ties to the earlier member)."""
    w = np.asarray(weights, dtype=np.float64)
    share = total * w / w.sum()
    counts = np.floor(share).astype(np.int64)
    rest = total - int(counts.sum())
    if rest:
        counts[np.argsort(-(share - counts), kind="stable")[:rest]] += 1
    return counts


class MixtureSampler(EpochShardSampler):
    """Training order of a mixture: ``epoch_size`` draws per epoch, ``allocate(epoch_size,
    weights)`` of them from each member, shuffled together. Member ``m``'s draws continue a stream
    of permutations of its ``sizes[m]`` images seeded by (seed, m, cycle), so an epoch's draws
    depend only on (seed, epoch) and every image comes once before any comes twice. Sharding over
    DDP ranks and the epoch encoding are :class:`EpochShardSampler`'s; items are indices into the
    concatenation of the members (member ``m`` starts at ``sum(sizes[:m])``)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], epoch_size: int, *, seed: int = 0,
                 encode_epoch: bool = True):
        super().__init__(int(sum(sizes)), shuffle=True, seed=seed, encode_epoch=encode_epoch)
        self.sizes = [int(s) for s in sizes]
        w = [float(x) if s > 0 else 0.0 for x, s in zip(weights, self.sizes)]
        if sum(w) <= 0:
            raise MixtureConfigError("mixture: no member with a positive sampling weight has training images")
        self.weights = [x / sum(w) for x in w]
        self.epoch_size = int(epoch_size)
        self.counts = allocate(self.epoch_size, self.weights)

    def member_draws(self, m: int) -> np.ndarray:
        """This epoch's draws of member ``m`` (indices into that member's split)."""
        n, c = self.sizes[m], int(self.counts[m])
        pos = self.epoch * c + np.arange(c, dtype=np.int64)
        cycle, within = pos // max(n, 1), pos % max(n, 1)
        out = np.empty(c, dtype=np.int64)
        for k in np.unique(cycle):
            perm = np.random.default_rng([self.seed, m, int(k)]).permutation(n)
            sel = cycle == k
            out[sel] = perm[within[sel]]
        return out

    def order(self) -> list[int]:
        starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        picks = np.concatenate([starts[m] + self.member_draws(m) for m in range(len(self.sizes))])
        return np.random.default_rng([self.seed, self.epoch, 1_000_003]).permutation(picks).tolist()

    def __len__(self) -> int:
        _, world = epoch_sampler._rank_world()   # as EpochShardSampler shards (DDP)
        return -(-self.epoch_size // world)


# ------------------------------------------------------------------------------------------------
# the dataset: members' datasets, concatenated
# ------------------------------------------------------------------------------------------------
class MixtureDataset(Dataset):
    """The members' ``Dataset`` objects of one split, concatenated, with samples in the union task's
    label layout. ``key`` is a row of :attr:`table` or ``epoch * len(self) + row`` (the samplers'
    encoding); member ``m`` is asked for ``epoch * len(part) + local row``, so its augmentation
    is drawn from (seed, epoch, its own row). ``transform`` is the first member's (members share
    the network input; MCNN's training mean reads its normalisation)."""

    def __init__(self, parts: Sequence[FaceDataset], table: SampleTable, columns: Sequence[np.ndarray], n_slots: int,
                 names: Sequence[Mapping[str, str]], vote_widths: Mapping[str, int], soft_widths: Mapping[str, int],
                 keep: frozenset[str]):
        self.parts, self.table, self.n_slots, self.keep = list(parts), table, n_slots, keep
        self.columns = [torch.as_tensor(c) for c in columns]
        self.names = [dict(n) for n in names]
        self.vote_widths, self.soft_widths = dict(vote_widths), dict(soft_widths)
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)
        if int(self.offsets[-1]) != len(table):
            raise ValueError(f"mixture: the members' datasets hold {int(self.offsets[-1])} samples, the table {len(table)}")
        self.transform = self.parts[0].transform

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, row: int) -> tuple[int, int]:
        """(member position, row in the member's split) of a row of the concatenation."""
        m = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return m, row - int(self.offsets[m])

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, row = divmod(int(key), len(self))
        m, local = self.locate(row)
        part, rename = self.parts[m], self.names[m]
        s = part[epoch * len(part) + local]
        label = torch.full((self.n_slots,), MISSING, dtype=torch.long)
        label[self.columns[m]] = s["label"]
        ident = self.table.identities[row] if self.table.identities is not None else -1
        out = {"image": s["image"], "label": label, "index": torch.tensor(row, dtype=torch.long),
               "identity": torch.tensor(int(ident), dtype=torch.long), "member": torch.tensor(m, dtype=torch.long)}
        for key_name in ("landmarks", "box"):
            if key_name in self.keep and key_name in s:
                out[key_name] = s[key_name]
        for field, widths, dtype in (("votes", self.vote_widths, torch.long), ("soft_label", self.soft_widths, torch.float32)):
            if widths:
                own = {rename.get(k, k): v for k, v in (s.get(field) or {}).items()}
                out[field] = {k: own[k] if k in own else torch.zeros(w, dtype=dtype) for k, w in widths.items()}
        return out


def _fill(parts: Sequence[np.ndarray | None], ns: Sequence[int]) -> np.ndarray | None:
    """Concatenate per-member arrays; a member without one gets NaN rows (float) when the others
    agree on the trailing shape, else the whole field is dropped (``None``)."""
    shapes = {p.shape[1:] for p in parts if p is not None}
    if len(shapes) != 1:
        return None
    if all(p is not None for p in parts):
        return np.concatenate(parts)
    tail = next(iter(shapes))
    return np.concatenate([np.asarray(p, dtype=np.float64) if p is not None else np.full((n, *tail), np.nan)
                           for p, n in zip(parts, ns)])


# ------------------------------------------------------------------------------------------------
# the datamodule
# ------------------------------------------------------------------------------------------------
@register_datamodule("mixture")
class MixtureDataModule(FaceDataModule):
    """Several datasets as one task with partial labels: union of the members' targets, ``-1`` where a member lacks one.

    Args:
        members: ``{name: {datamodule, args, rename}}`` (see the module docstring).
        sampling: ``balanced`` (each member equally often per epoch), ``proportional`` (as many
            draws as training images) or ``{member: weight}`` naming every member.
        epoch_size: training images drawn per epoch (default: the members' training images).
        Other options: the mixture's loaders and network input, and options passed to every
        member that does not set them (:data:`SHARED_OPTIONS`).
    """

    expected_files = {
        "(the members' files)": ("each member dataset reads its own files (see its entry); members: {name: "
                                 "{datamodule: ..., args: {...}, rename: {...}}}"),
    }

    def __init__(self, root: str | None = None, *, members: Mapping[str, Mapping[str, Any]] | None = None,
                 sampling: str | Mapping[str, float] = "balanced", epoch_size: int | None = None, batch_size: int = 64,
                 num_workers: int | None = None, image_size: int = 64, channels: int = 3, seed: int = 0,
                 pin_memory: bool | None = None, persistent_workers: bool = True, drop_last: bool = False,
                 transforms: dict | None = None, train_transforms: dict | None = None, **shared: Any):
        if root is not None:
            raise MixtureConfigError("mixture: each member has its own 'root' (members.<name>.args.root); the mixture takes none")
        if members is None:
            raise MixtureConfigError("mixture: 'members' is required ({name: {datamodule, args, rename}})")
        type(self).check_config({"members": members, "sampling": sampling, "epoch_size": epoch_size, **shared})
        super().__init__(None, batch_size=batch_size, num_workers=num_workers, image_size=image_size, channels=channels,
                         seed=seed, pin_memory=pin_memory, persistent_workers=persistent_workers, drop_last=drop_last,
                         transforms=transforms, train_transforms=train_transforms)
        self.sampling, self.epoch_size = sampling, epoch_size
        passed = {"seed": seed, **shared, **({"transforms": transforms} if transforms else {}),
                  **({"train_transforms": train_transforms} if train_transforms else {})}
        self.members: dict[str, FaceDataModule] = {}
        self.renames: dict[str, dict[str, str]] = {}
        for name, spec in members.items():
            args = dict(spec.get("args") or {})
            self.members[name] = create_datamodule(spec["datamodule"], **{**passed, **args}, image_size=image_size,
                                                   channels=channels, num_workers=0)
            self.renames[name] = {str(k): str(v) for k, v in (spec.get("rename") or {}).items()}
        self.member_names: list[str] = list(self.members)
        self._columns: dict[str, np.ndarray] = {}
        self._keep: frozenset[str] = frozenset()
        self._vote_widths: dict[str, int] = {}
        self._soft_widths: dict[str, int] = {}

    # -- configuration ---------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """Unknown keys, the members' specs (each member's ``args`` checked by its own class), the
        sampling weights and the epoch size; a partial config (a method's ``datamodule_args``) is
        checked for what it holds."""
        own = {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "shared")}
        check_options(f"dataset {cls.registered_name!r}", cfg, own | SHARED_OPTIONS)
        members = cfg.get("members")
        if "members" in cfg:
            cls._check_members(members)
        sampling = cfg.get("sampling", "balanced")
        if isinstance(sampling, Mapping):
            names = set(members) if isinstance(members, Mapping) else set(sampling)
            if set(sampling) != names or any(not isinstance(v, (int, float)) or v < 0 for v in sampling.values()) \
                    or sum(sampling.values()) <= 0:
                raise MixtureConfigError(f"mixture: sampling weights must give every member ({', '.join(names)}) a "
                                         f"weight >= 0, not all zero; got {dict(sampling)}")
        elif sampling not in SAMPLING_MODES:
            raise MixtureConfigError(f"mixture: sampling must be one of {', '.join(SAMPLING_MODES)} or "
                                     f"{{member: weight}}, got {sampling!r}")
        if cfg.get("epoch_size") is not None and (not isinstance(cfg["epoch_size"], int) or cfg["epoch_size"] < 1):
            raise MixtureConfigError(f"mixture: epoch_size must be a positive number of images, got {cfg['epoch_size']!r}")

    @staticmethod
    def _check_members(members: Any) -> None:
        if not isinstance(members, Mapping) or not members:
            raise MixtureConfigError("mixture: 'members' must map member names to {datamodule, args, rename}")
        for name, spec in members.items():
            where = f"mixture: members.{name}"
            if not isinstance(spec, Mapping) or "datamodule" not in spec:
                raise MixtureConfigError(f"{where} must be a mapping with 'datamodule' (and 'args', 'rename'), got {spec!r}")
            check_options(where, dict(spec), set(MEMBER_KEYS))
            member_cls = get_datamodule_class(spec["datamodule"])
            if issubclass(member_cls, MixtureDataModule):
                raise MixtureConfigError(f"{where}: a member cannot be a mixture (list its members here instead)")
            args = dict(spec.get("args") or {})
            misplaced = sorted(set(args) & MIXTURE_ONLY)
            if misplaced:
                raise MixtureConfigError(f"{where}.args sets {misplaced}: the mixture's loaders and network input "
                                         f"serve every member; set them on the mixture")
            member_cls.check_config(args)
            rename = spec.get("rename") or {}
            if not isinstance(rename, Mapping) or len(set(rename.values())) != len(rename):
                raise MixtureConfigError(f"{where}.rename must map target names to distinct new names, got {rename!r}")

    # -- setup -------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        for dm in self.members.values():
            dm.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        tasks = {}
        for name, dm in self.members.items():
            dm.setup(stage)
            tasks[name] = renamed_task(dm.task, self.renames[name], name)
        task, self._columns, shared = union_task(tasks, name=self.registered_name)
        splits = [s for s in SPLITS if any(s in dm.tables for dm in self.members.values())]
        splits += [s for dm in self.members.values() for s in dm.tables if s not in splits]
        tables = {s: [dm.tables.get(s) for dm in self.members.values()] for s in splits}
        present = [t for ts in tables.values() for t in ts if t is not None and len(t)]
        lm_shapes = {t.landmarks.shape[1:] if t.landmarks is not None else None for t in present}
        self._keep = frozenset(["landmarks"] * (len(lm_shapes) == 1 and None not in lm_shapes)
                               + ["box"] * all(t.boxes is not None for t in present))
        for name, dm in self.members.items():   # vote / soft-label widths by the union's target names
            for t in dm.tables.values():
                for field, widths in (("votes", self._vote_widths), ("soft_labels", self._soft_widths)):
                    for k, v in getattr(t, field).items():
                        widths.setdefault(self.renames[name].get(k, k), int(v.shape[1]))
        offsets = self._identity_offsets()
        self._task = task
        self.tables = {s: self._combine(s, ts, task, offsets) for s, ts in tables.items()}
        self.report["skipped"] = [f"{m}: {s}" for m, dm in self.members.items() for s in dm.report.get("skipped", [])]
        self.report["split"] = {"kind": "the members' own splits, concatenated",
                                **{m: {s: len(t) for s, t in dm.tables.items()} for m, dm in self.members.items()}}
        self.report["mixture"] = {"members": {m: dm.registered_name for m, dm in self.members.items()},
                                  "sampling": dict(zip(self.member_names, self.sampling_weights())),
                                  "epoch_size": self.resolved_epoch_size(), "shared_targets": shared,
                                  "renamed": {m: r for m, r in self.renames.items() if r},
                                  "kept_fields": sorted(self._keep)}

    def _identity_offsets(self) -> list[int]:
        """Per member, what is added to its identity numbers so that members never share one."""
        out, start = [], 0
        for dm in self.members.values():
            out.append(start)
            ids = [t.identities for t in dm.tables.values() if t.identities is not None and len(t)]
            start += int(max((int(i.max()) for i in ids), default=-1)) + 1
        return out

    def _combine(self, split: str, parts: Sequence[SampleTable | None], task: TaskSpec, offsets: Sequence[int]) -> SampleTable:
        """One split's members' tables in the union's layout (see the module docstring)."""
        names = self.member_names
        tabs = [t if t is not None else SampleTable(paths=[], labels=np.zeros((0, len(self._columns[m])), np.int64))
                for t, m in zip(parts, names)]
        ns = [len(t) for t in tabs]
        labels = np.full((sum(ns), task.n_label_slots), MISSING, dtype=np.int64)
        row = 0
        for t, m in zip(tabs, names):
            labels[row:row + len(t)][:, self._columns[m]] = t.labels
            row += len(t)
        ids = [np.where(np.asarray(t.identities) >= 0, np.asarray(t.identities) + off, -1) if t.identities is not None
               else np.full(len(t), -1) for t, off in zip(tabs, offsets)]

        def renamed(t: SampleTable, m: str, field: str) -> dict[str, np.ndarray]:
            return {self.renames[m].get(k, k): v for k, v in getattr(t, field).items()}

        votes = {k: np.concatenate([renamed(t, m, "votes").get(k, np.zeros((len(t), w), np.int64)) for t, m in zip(tabs, names)])
                 for k, w in self._vote_widths.items()}
        soft = {k: np.concatenate([renamed(t, m, "soft_labels").get(k, np.zeros((len(t), w), np.float32))
                                   for t, m in zip(tabs, names)]) for k, w in self._soft_widths.items()}
        extra: dict[str, np.ndarray] = {"member": np.concatenate([np.full(n, m, dtype=object) for n, m in zip(ns, names)]).astype(str),
                                        "member_index": np.concatenate([np.arange(n, dtype=np.int64) for n in ns])}
        keys = {self.renames[m].get(k, k) for t, m in zip(tabs, names) for k in t.extra}
        for k in sorted(keys - set(extra)):
            per = [renamed(t, m, "extra").get(k) for t, m in zip(tabs, names)]
            value = _fill([None if p is None else np.asarray(p) for p in per], ns)
            if value is not None and value.dtype.kind in "biuf":
                extra[k] = value
        return SampleTable(
            paths=[f"{m}:{p}" for t, m in zip(tabs, names) for p in t.paths], labels=labels,
            identities=np.concatenate(ids).astype(np.int64),
            landmarks=np.concatenate([t.landmarks for t in tabs if t.landmarks is not None]) if "landmarks" in self._keep else None,
            boxes=np.concatenate([t.boxes for t in tabs if t.boxes is not None]) if "box" in self._keep else None,
            votes=votes, soft_labels=soft, extra=extra)

    # -- sampling -----------------------------------------------------------------------------------------
    def train_sizes(self) -> list[int]:
        self.setup()
        return [len(dm.tables["train"]) if "train" in dm.tables else 0 for dm in self.members.values()]

    def sampling_weights(self) -> list[float]:
        """Each member's share of the training draws, in member order (sums to 1)."""
        sizes = self.train_sizes()
        if isinstance(self.sampling, Mapping):
            raw = [float(self.sampling[m]) for m in self.member_names]
        elif self.sampling == "proportional":
            raw = [float(n) for n in sizes]
        else:
            raw = [1.0] * len(sizes)
        raw = [w if n > 0 else 0.0 for w, n in zip(raw, sizes)]
        total = sum(raw)
        if total <= 0:
            raise MixtureConfigError("mixture: no member with a positive sampling weight has training images")
        return [w / total for w in raw]

    def resolved_epoch_size(self) -> int:
        return int(self.epoch_size) if self.epoch_size is not None else int(sum(self.train_sizes()))

    # -- datasets and loaders -----------------------------------------------------------------------------
    def dataset(self, split: str, train: bool | None = None, output: str = "tensor") -> MixtureDataset:
        self.setup()
        if split not in self.tables:
            raise ValueError(f"mixture has no {split!r} split; splits: {', '.join(self.tables)}")
        if output != "tensor":
            raise ValueError("mixture: only output='tensor' (the training warp runs in the DataLoader workers)")
        train = (split == "train") if train is None else train
        parts = []
        for name, dm in self.members.items():
            dm.augment_seed = self.augment_seed
            if split in dm.tables:
                parts.append(dm.dataset(split, train))
            else:   # a member without this split: an empty dataset with the member's framing
                empty = next(iter(dm.tables.values())).take([])
                parts.append(FaceDataset(empty, dm.root or Path("."), FaceTransform(dm.train_cfg if train else dm.eval_cfg, train)))
        return MixtureDataset(parts, self.tables[split], [self._columns[m] for m in self.member_names], self.task.n_label_slots,
                              [self.renames[m] for m in self.member_names], self._vote_widths, self._soft_widths, self._keep)

    def _loader(self, split: str, shuffle: bool, train: bool | None = None, in_batches: bool = False) -> DataLoader:
        self.setup()
        train = (split == "train") if train is None else train
        for dm in self.members.values():   # each member builds its image cache first (when configured)
            if split in dm.tables:
                dm.stored_images(split, dm.stored_geometry(dm.train_cfg if train else dm.eval_cfg), build=True)
        ds = self.dataset(split, train)
        if shuffle:
            sizes = [len(p) for p in ds.parts]
            sampler: EpochShardSampler = MixtureSampler(sizes, self.sampling_weights(), self.resolved_epoch_size(),
                                                        seed=self.augment_seed, encode_epoch=True)
        else:
            sampler = EpochShardSampler(len(ds), shuffle=False, seed=self.augment_seed, encode_epoch=ds.transform.train)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=self.drop_last and shuffle,
                          persistent_workers=self.persistent_workers and self.num_workers > 0)

    def augment_in_batches(self) -> bool:
        return False

    def configure_input(self, image_size: int, channels: int, landmarks: bool | None = None,
                        train_defaults: dict[str, Any] | None = None) -> None:
        """The network input, for the mixture and every member (each member's ``Dataset`` makes it)."""
        super().configure_input(image_size, channels, landmarks, train_defaults)
        for dm in self.members.values():
            dm.configure_input(image_size, channels, landmarks, train_defaults)

    # -- description ----------------------------------------------------------------------------------------
    def describe(self, check_files: bool = True) -> dict[str, Any]:
        """``facebench inspect``: the combined splits (per-member counts under ``split``), the
        members' duplicate groups named ``<member>:<split>:<path>`` and each member's own description."""
        from facebench.datamodules import describe as describe_module

        out = describe_module.describe(self, check_files=False)
        ids = {s: set(np.unique(t.identities).tolist()) - {-1} for s, t in self.tables.items() if t.identities is not None}
        for s, known in ids.items():   # -1 (a member without identities) is no identity
            out["splits"][s]["identities"] = len(known)
        if len(ids) > 1:
            names = list(ids)
            out["identity_overlap"] = {f"{a}/{b}": len(ids[a] & ids[b]) for i, a in enumerate(names) for b in names[i + 1:]}
        out["members"] = {m: dm.describe(check_files) for m, dm in self.members.items()}
        if check_files:
            out["duplicates"] = [[f"{m}:{x}" for x in g] for m, info in out["members"].items() for g in info["duplicates"]]
            out["cross_split_duplicates"] = [[f"{m}:{x}" for x in g] for m, info in out["members"].items()
                                             for g in info["cross_split_duplicates"]]
        return out

    def data_checks(self) -> dict[str, int]:
        """The members' counts of doubts about their data, summed."""
        total: dict[str, int] = {}
        for dm in self.members.values():
            for k, v in dm.data_checks().items():
                total[k] = total.get(k, 0) + int(v)
        return total

    def duplicate_files(self) -> list[list[str]]:
        return [[f"{m}:{x}" for x in g] for m, dm in self.members.items() for g in dm.duplicate_files()]
