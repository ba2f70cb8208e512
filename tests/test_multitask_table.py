"""Δm% and mean rank over tasks (benchmarks/multitask.py) against hand computations."""

from __future__ import annotations

import pandas as pd
import pytest

from facebench.benchmarks.multitask import delta_m, mean_rank, multitask_table


def board(rows):
    return pd.DataFrame([{"dataset": "d", "split": "test", "class": "", **r} for r in rows])


ROWS = [  # method, seed, attribute, accuracy, ece
    ("single", 0, "a", 0.80, 0.10), ("single", 0, "b", 0.50, 0.20),
    ("single", 1, "a", 0.80, 0.10), ("single", 1, "b", 0.50, 0.20),
    ("mtl", 0, "a", 0.88, 0.05), ("mtl", 0, "b", 0.45, 0.20),
    ("mtl", 1, "a", 0.84, 0.10), ("mtl", 1, "b", 0.50, 0.30),
]
B = board([dict(zip(["method", "seed", "attribute", "accuracy", "ece"], r)) for r in ROWS])


def test_delta_m_by_hand():
    dm = delta_m(B, "single").set_index("method")
    # seed 0: (+0.08/0.8 - 0.05/0.5) / 2 = 0; seed 1: (+0.04/0.8 + 0) / 2 = 0.025
    assert dm.loc["mtl", "delta_m_pct"] == pytest.approx(100 * (0.0 + 0.025) / 2)
    assert dm.loc["single", "delta_m_pct"] == 0.0
    assert dm.loc["mtl", "seeds"] == 2


def test_lower_is_better_metrics_count_with_their_sign():
    dm = delta_m(B, "single", metrics=("ece",)).set_index("method")
    # ece lower is better: seed 0: (+0.5 + 0) / 2 = 0.25; seed 1: (0 - 0.5) / 2 = -0.25
    assert dm.loc["mtl", "delta_m_pct"] == pytest.approx(0.0)
    both = delta_m(B, "single", metrics=("accuracy", "ece")).set_index("method")
    # seed 0: (0.1 - 0.1 + 0.5 + 0) / 4; seed 1: (0.05 + 0 + 0 - 0.5) / 4
    assert both.loc["mtl", "delta_m_pct"] == pytest.approx(100 * ((0.5 / 4) + (-0.45 / 4)) / 2)


def test_mean_rank_and_missing_baseline():
    mr = mean_rank(B).set_index("method")
    # a: mtl 0.86 > single 0.80; b: single 0.50 > mtl 0.475
    assert mr.loc["mtl", "mean_rank"] == 1.5 and mr.loc["single", "mean_rank"] == 1.5
    assert set(multitask_table(B, "single").columns) >= {"delta_m_pct", "mean_rank"}
    with pytest.raises(ValueError, match="baseline 'nope'"):
        delta_m(B, "nope")
