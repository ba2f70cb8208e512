"""Subgroup metrics (issue: evaluation you can trust): per-group accuracy, balanced accuracy and TPR,
worst-group accuracy, accuracy gap and equal-opportunity difference, against a hand computation and
under DDP (two gloo processes equal one)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from facebench.core.tasks import Target, TaskSpec
from facebench.lightning_modules.metrics.subgroups import SubgroupMetrics, subgroup_rows

from gloo import run_on_gloo

TASK = TaskSpec((Target("Male"), Target("Smiling"), Target("emotion", "multiclass", classes=("a", "b", "c"))), name="t")


def value(rows, target, group, metric):
    (v,) = [r["value"] for r in rows if r["target"] == target and r["group"] == group and r["metric"] == metric]
    return v


def test_hand_computation():
    #                   Male Smiling emotion       predicted Smiling / emotion
    labels = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 2], [1, 0, 0],     # men
                           [0, 1, 0], [0, 0, 1], [0, 0, 2], [0, 1, 2], [-1, 1, 0]])  # women; unknown sex
    preds = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 0, 1], [1, 1, 0],
                          [0, 1, 1], [0, 0, 1], [0, 1, 2], [0, 0, 2], [0, 0, 0]])
    m = SubgroupMetrics(TASK, "Male")
    m.update(preds[:5], labels[:5])
    m.update(preds[5:], labels[5:])
    rows = m.compute()
    # men (Male=yes), Smiling: y = 1 1 0 0, p = 1 0 0 1 -> TP 1, FN 1, TN 1, FP 1
    assert value(rows, "Smiling", "Male=yes", "accuracy") == pytest.approx(0.5)
    assert value(rows, "Smiling", "Male=yes", "tpr") == pytest.approx(0.5)
    assert value(rows, "Smiling", "Male=yes", "balanced_accuracy") == pytest.approx(0.5)
    # women (Male=no), Smiling: y = 1 0 0 1, p = 1 0 1 0 -> TP 1, FN 1, TN 1, FP 1; the unknown-sex row is left out
    assert value(rows, "Smiling", "Male=no", "support") == 4
    assert value(rows, "Smiling", "Male=no", "accuracy") == pytest.approx(0.5)
    # emotion: men y = 0 1 2 0, p = 0 1 1 0 -> 3/4, recalls a 2/2, b 1/1, c 0/1 -> balanced 2/3
    assert value(rows, "emotion", "Male=yes", "accuracy") == pytest.approx(0.75)
    assert value(rows, "emotion", "Male=yes", "balanced_accuracy") == pytest.approx(2 / 3)
    # women y = 0 1 2 2, p = 1 1 2 2 -> 3/4; worst group 0.75, gap 0
    assert value(rows, "emotion", "", "worst_group_accuracy") == pytest.approx(0.75)
    assert value(rows, "emotion", "", "accuracy_gap") == pytest.approx(0.0)
    assert not [r for r in rows if r["target"] == "Male"]     # the protected attribute itself is not scored


def test_gaps_and_equal_opportunity():
    labels = torch.tensor([[1, 1, 0]] * 4 + [[0, 1, 0]] * 4 + [[0, 0, 0]] * 2)
    preds = labels.clone()
    preds[4:6, 1] = 0          # two of the women's four positives missed
    rows = SubgroupMetrics(TASK, "Male")
    rows.update(preds, labels)
    rows = rows.compute()
    assert value(rows, "Smiling", "Male=yes", "tpr") == 1.0 and value(rows, "Smiling", "Male=no", "tpr") == 0.5
    assert value(rows, "Smiling", "", "equal_opportunity_difference") == pytest.approx(0.5)
    assert value(rows, "Smiling", "", "worst_group_accuracy") == pytest.approx(4 / 6)
    assert value(rows, "Smiling", "", "accuracy_gap") == pytest.approx(1 - 4 / 6)


def test_protected_attribute_must_be_binary_or_multiclass():
    task = TaskSpec((Target("tags", "multilabel", classes=("x", "y")), Target("Male")))
    with pytest.raises(ValueError, match="multilabel"):
        SubgroupMetrics(task, "tags")
    with pytest.raises(KeyError, match="nope"):
        SubgroupMetrics(task, "nope")


def random_data(n: int = 301, seed: int = 0):
    g = np.random.default_rng(seed)
    labels = np.stack([g.integers(-1, 2, n), g.integers(-1, 2, n), g.integers(-1, 3, n)], 1)
    probs = np.concatenate([g.random((n, 2)), g.dirichlet(np.ones(3), n)], 1).astype(np.float32)
    return probs, labels


def _subgroup_rows_on_rank(rank: int, world: int, probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    idx = np.array_split(np.arange(len(labels)), [101])[rank]           # unequal parts
    m = SubgroupMetrics(TASK, "Male")
    preds = TASK.predictions(torch.as_tensor(probs))
    for part in np.array_split(idx, 3):
        m.update(preds[part], torch.as_tensor(labels[part]))
    return m.compute()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    probs, labels = random_data()
    ddp = pd.DataFrame(run_on_gloo(_subgroup_rows_on_rank, probs, labels, tmp_path=tmp_path))
    single = pd.DataFrame(subgroup_rows(TASK, probs, labels, ["Male"])).drop(columns="protected_attribute")
    merged = single.merge(ddp, on=["target", "class", "group", "metric"], suffixes=("_one", "_ddp"))
    assert len(merged) == len(single) == len(ddp) > 0
    np.testing.assert_allclose(merged["value_ddp"], merged["value_one"], equal_nan=True)
