"""Face verification as in Baumgartner & Culpepper, sec. 4.2 (LFW's protocol): balanced same /
different image pairs in identity-disjoint folds (:func:`generate_pairs`), scored by the cosine
similarity of face descriptors with a threshold chosen on the other folds
(:func:`verification_accuracy`). The ``branching_identity`` method validates on it
(:mod:`facebench.lightning_modules.branching`); ``facebench analyze face-verification`` reads LFW's
``pairs.txt`` into the same :class:`VerificationPairs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from facebench.core.tasks import TaskSpec


@dataclass
class VerificationPairs:
    """Image pairs (row indices ``a``, ``b`` into a feature matrix), ``same`` identity or not, and
    the cross-validation ``fold`` of each pair."""

    a: np.ndarray
    b: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.a)


def generate_pairs(identities: np.ndarray, n_folds: int = 10, pairs_per_fold: int = 300, seed: int = 0) -> VerificationPairs:
    """Balanced same / different pairs in identity-disjoint folds, like LFW's 10 splits of 300 +
    300 pairs (sec. 4.2), generated deterministically from ``seed``.

    Identities (``>= 0``) are dealt to folds after a seeded shuffle; with fewer than ``2 * n_folds``
    identities the number of folds shrinks so that each fold has two. Each fold gets
    ``min(pairs_per_fold, possible same pairs, possible different pairs)`` of each kind.
    """
    ids = np.asarray(identities, dtype=np.int64)
    known = np.unique(ids[ids >= 0])
    folds = min(int(n_folds), len(known) // 2)
    if folds < 2:
        raise ValueError(f"face verification needs at least 4 identities with images (2 folds of 2), got {len(known)}")
    rng = np.random.default_rng([int(seed), 4_2])
    order = rng.permutation(known)
    fold_of_identity = {int(i): k % folds for k, i in enumerate(order)}
    a, b, same, fold = [], [], [], []
    for f in range(folds):
        members = [i for i, k in fold_of_identity.items() if k == f]
        rows = np.flatnonzero(np.isin(ids, members))
        pos = [(int(x), int(y)) for i in members for x, y in _combinations(np.flatnonzero(ids == i))]
        ident = ids[rows]
        n_neg_possible = (len(rows) ** 2 - sum(int((ident == i).sum()) ** 2 for i in members)) // 2
        n = min(pairs_per_fold, len(pos), n_neg_possible)
        if n == 0:
            continue
        pick = rng.choice(len(pos), size=n, replace=False)
        neg: set[tuple[int, int]] = set()
        while len(neg) < n:
            x, y = rng.choice(rows, size=2, replace=False)
            if ids[x] != ids[y]:
                neg.add((int(min(x, y)), int(max(x, y))))
        pairs = [pos[j] for j in pick] + sorted(neg)
        a += [p[0] for p in pairs]
        b += [p[1] for p in pairs]
        same += [True] * n + [False] * n
        fold += [f] * (2 * n)
    return VerificationPairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64), np.array(same, dtype=bool),
                             np.array(fold, dtype=np.int64))


def _combinations(rows: np.ndarray) -> list[tuple[int, int]]:
    return [(int(rows[i]), int(rows[j])) for i in range(len(rows)) for j in range(i + 1, len(rows))]


def verification_accuracy(features: np.ndarray | torch.Tensor, pairs: VerificationPairs) -> dict[str, Any]:
    """Cosine similarity of each pair; per fold, the threshold with the best accuracy on the other
    folds is applied to the fold (sec. 4.2: "select the threshold that provides the best
    verification on 9 splits, then evaluate it on the remaining one"). The threshold search is
    :func:`~facebench.lightning_modules.metrics.tune_thresholds` (criterion accuracy: the midpoint between
    the best ROC vertex and the next lower similarity). Returns the mean and the sample standard
    deviation over folds."""
    from facebench.lightning_modules.metrics import tune_thresholds

    feats = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features), dtype=torch.float64), dim=1).numpy()
    sim = np.einsum("ij,ij->i", feats[pairs.a], feats[pairs.b])
    folds = np.unique(pairs.fold)
    if len(folds) < 2:
        raise ValueError("verification needs at least two folds")
    column = TaskSpec.binary_attributes(["same"])
    accs, thresholds = [], []
    for f in folds:
        train, test = pairs.fold != f, pairs.fold == f
        # similarities mapped from [-1, 1] to [0, 1], the range tune_thresholds expects
        t = 2.0 * float(tune_thresholds(column, (sim[train, None] + 1) / 2, pairs.same[train, None].astype(int),
                                        "accuracy")[0]) - 1.0
        thresholds.append(t)
        accs.append(float(((sim[test] >= t) == pairs.same[test]).mean()))
    return {"accuracy": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)), "fold_accuracies": accs,
            "thresholds": thresholds, "folds": len(folds), "pairs": len(pairs)}
