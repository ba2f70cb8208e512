"""Deterministic, stratified, optionally identity-disjoint train / val / test splits.

Datasets with an official split keep it (CelebA's partition file, FER2013's ``Usage``, FER+'s
folders, LFWA's split file). Everything else is split here, from the datamodule argument::

    split: {fractions: [0.8, 0.1, 0.1], by_identity: true, stratify: <target or [targets]>, seed: 0}

* ``by_identity``: whole identities go to one split when identities are known (the Flickr paper
  separates training and test persons, sec. 4.4; LFWA's protocol is identity-disjoint too);
* ``stratify``: keep each split's label distribution equal to the dataset's (the FAD paper's 80/20
  split "maintaining the same data distribution ... for all traits", LACNN sec. 4): a target name,
  a list of names (their joint label combination is the stratum) or ``all``;
* ``val_from_train``: when the official split has no validation part (LFWA: 6,263 train / 6,880
  test), this fraction of the training split becomes ``val`` (same identity / strata rules);
* ``override_official``: re-split the union of the official splits with ``fractions``;
* ``by_duplicates`` (default on): every group of duplicate images (the same bytes under several
  names, or near-duplicates with the datamodule's ``near_duplicates``, see
  :mod:`facebench.datamodules.duplicates`) goes to one split, like an identity: whole connected components of
  "same identity or duplicate image" are assigned. A dataset without duplicates is split exactly as
  without this option.

The same seed gives the same split on every machine: only ``numpy.random.Generator`` seeded with an
explicit integer sequence is used (no Python ``hash()``, no global RNG state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from facebench.core.config import config_from_value

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
#: Stream id mixed into every split seed, so that splits never share random numbers with sampling.
_SPLIT_STREAM = 7919


@dataclass
class SplitConfig:
    """What a user sets under ``split:`` (see the module docstring)."""

    fractions: Sequence[float] = (0.8, 0.1, 0.1)
    by_identity: bool = True
    stratify: str | Sequence[str] | None = None
    seed: int | None = None
    val_from_train: float = 0.1
    override_official: bool = False
    by_duplicates: bool = True

    @classmethod
    def from_value(cls, value: "SplitConfig | dict[str, Any] | None", defaults: "SplitConfig | None" = None) -> "SplitConfig":
        return config_from_value(cls, value, "split", defaults)

    def validate(self) -> None:
        fr = np.asarray(self.fractions, dtype=float)
        if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
            raise ValueError(f"split.fractions must be three non-negative numbers (train, val, test), got {list(self.fractions)}")
        if not 0.0 <= float(self.val_from_train) < 1.0:
            raise ValueError(f"split.val_from_train must be in [0, 1), got {self.val_from_train}")


def strata_of(labels: np.ndarray, min_count: int = 3) -> np.ndarray:
    """Stratum id per sample from label columns ``[N, K]`` (their joint value; ``-1`` is a value too).
    Combinations seen fewer than ``min_count`` times are pooled into one stratum so that every
    stratum can be spread over the splits."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    _, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    rare = counts[inverse] < min_count
    out = inverse.astype(np.int64)
    out[rare] = -1
    _, out = np.unique(out, return_inverse=True)
    return out.reshape(-1).astype(np.int64)


def _smooth_sequence(n: int, fractions: np.ndarray) -> np.ndarray:
    """Split code for positions ``0..n-1`` such that every prefix is as close as possible to
    ``fractions`` (smooth weighted round-robin): position ``p`` goes to the split furthest below
    its share of ``p + 1`` items."""
    share = fractions / fractions.sum()
    have = np.zeros(len(share))
    out = np.empty(n, dtype=np.int64)
    for p in range(n):
        k = int(np.argmax(share * (p + 1) - have))
        out[p] = k
        have[k] += 1
    return out


def assign_splits(n: int, fractions: Sequence[float], seed: int, *, strata: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> np.ndarray:
    """Split code per sample (0 train, 1 val, 2 test).

    Without ``groups``: samples are ordered by stratum (random order inside each) and dealt to the
    splits by a smooth weighted round-robin, so the overall sizes are exact and every stratum is
    spread in proportion. With ``groups`` (identities) whole groups are assigned, largest first (ties
    in a seeded random order), each to the split with the largest relative deficit on the group's
    strata (the greedy idea of scikit-learn's ``StratifiedGroupKFold``, for unequal fractions).
    """
    fr = np.asarray(fractions, dtype=float)
    rng = np.random.default_rng([_SPLIT_STREAM, int(seed)])
    strata = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata, dtype=np.int64)
    if groups is None:
        order = np.lexsort((rng.permutation(n), strata))
        out = np.empty(n, dtype=np.int64)
        out[order] = _smooth_sequence(n, fr)
        return out
    groups = np.asarray(groups)
    uniq, g_of = np.unique(groups, return_inverse=True)
    g_of = g_of.reshape(-1)
    n_strata = int(strata.max()) + 1 if n else 1
    per_group = np.zeros((len(uniq), n_strata), dtype=np.int64)
    np.add.at(per_group, (g_of, strata), 1)
    share = fr / fr.sum()
    target = share[:, None] * per_group.sum(0)[None, :]                 # [3, S] samples wanted
    have = np.zeros_like(target)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-per_group.sum(1)[order], kind="stable")]  # largest groups first
    split_of_group = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        c = per_group[g]
        relative = ((target - have) / np.maximum(target, 1e-9) * c[None, :]).sum(1) / max(c.sum(), 1)
        overall = (target.sum(1) - have.sum(1)) / np.maximum(target.sum(1), 1e-9)
        score = np.where(fr > 0, relative + overall, -np.inf)
        k = int(np.argmax(score))
        split_of_group[g] = k
        have[k] += c
    return split_of_group[g_of]


def split_indices(codes: np.ndarray) -> dict[str, np.ndarray]:
    """``{"train": idx, "val": idx, "test": idx}`` from split codes (empty splits omitted)."""
    return {name: np.flatnonzero(codes == k) for k, name in enumerate(SPLIT_NAMES) if (codes == k).any()}
