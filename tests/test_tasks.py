"""The task spec's target-kind properties (facebench/core/tasks.py): ``Target.is_sigmoid`` and
``Target.is_softmax`` split the kinds in two and agree with the label / logit layout."""

from __future__ import annotations

import torch

from facebench.core.tasks import TARGET_KINDS, Target, TaskSpec


def test_sigmoid_and_softmax_partition_the_kinds_and_match_the_layout():
    targets = tuple(Target(kind, kind, classes=("x", "y") if kind == "binary" else ("x", "y", "z")) for kind in TARGET_KINDS)
    assert {t.kind for t in targets if t.is_sigmoid} == {"binary", "multilabel"}
    assert {t.kind for t in targets if t.is_softmax} == {"multiclass", "ordinal"}
    assert all(t.is_sigmoid != t.is_softmax for t in targets)
    task = TaskSpec(targets)
    probs = task.probabilities(torch.randn(5, task.n_logits))
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        if t.is_sigmoid:      # one 0/1 label slot per logit column
            assert ls.stop - ls.start == ys.stop - ys.start
        else:                 # one label slot (the class index), a softmax over the slice
            assert ys.stop - ys.start == 1 and ls.stop - ls.start == t.n_classes
            torch.testing.assert_close(probs[:, ls].sum(1), torch.ones(5))
    logit_cols, label_cols = task.binary_columns()
    assert len(logit_cols) == len(label_cols) == sum(t.n_logits for t in task.targets if t.is_sigmoid)
