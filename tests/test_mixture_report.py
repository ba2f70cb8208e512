"""The mixture-against-each-dataset-alone report (benchmarks/mixture_report.py) by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from facebench.benchmarks.mixture_report import mixture_pairs, mixture_table, write_mixture

DATASETS = {
    "faces": {"datamodule": "mixture", "args": {"members": {"celeba": {}, "ferplus": {}, "synth_age": {}}}},
    "celeba_alone": {"datamodule": "mixture", "args": {"members": {"celeba": {}}}},
    "ferplus_alone": {"datamodule": "mixture", "args": {"members": {"ferplus": {}}}},
    "other": {"datamodule": "celeba", "args": {}},
}

ROWS = [  # dataset, method, seed, attribute, class, accuracy, balanced_accuracy
    ("faces", "net", 0, "Smiling", "", 0.90, 0.80), ("faces", "net", 0, "Male", "", 0.80, 0.70),
    ("faces", "net", 0, "emotion", "", 0.60, 0.40), ("faces", "net", 0, "emotion", "happiness", None, None),
    ("faces", "net", 0, "synth_Young", "", 0.99, 0.99),
    ("faces", "net", 1, "Smiling", "", 0.92, 0.80), ("faces", "net", 1, "Male", "", 0.82, 0.70),
    ("faces", "net", 1, "emotion", "", 0.66, 0.40),
    ("celeba_alone", "net", 0, "Smiling", "", 0.80, 0.80), ("celeba_alone", "net", 0, "Male", "", 0.80, 0.70),
    ("celeba_alone", "net", 1, "Smiling", "", 0.80, 0.80), ("celeba_alone", "net", 1, "Male", "", 0.80, 0.70),
    ("ferplus_alone", "net", 0, "emotion", "", 0.50, 0.50), ("ferplus_alone", "net", 1, "emotion", "", 0.60, 0.40),
    ("ferplus_alone", "alone_only", 0, "emotion", "", 0.10, 0.10),
]
BOARD = pd.DataFrame([dict(zip(["dataset", "method", "seed", "attribute", "class", "accuracy", "balanced_accuracy"], r),
                           split="test") for r in ROWS])


def test_pairs_come_from_the_suite_datasets():
    assert mixture_pairs(DATASETS) == [("faces", "celeba", "celeba_alone"), ("faces", "ferplus", "ferplus_alone")]
    assert mixture_pairs({"other": DATASETS["other"]}) == []


def test_member_means_differences_and_delta_m_by_hand():
    t = mixture_table(BOARD, mixture_pairs(DATASETS), metrics=("accuracy", "balanced_accuracy")).set_index("member")
    assert list(t["method"]) == ["net", "net"]          # "alone_only" has no mixture run: left out
    celeba, fer = t.loc["celeba"], t.loc["ferplus"]
    assert celeba["targets"] == 2 and celeba["seeds"] == 2
    assert celeba["accuracy_mixture"] == pytest.approx((0.85 + 0.87) / 2)   # synth_Young and emotion excluded
    assert celeba["accuracy_alone"] == pytest.approx(0.80)
    assert celeba["accuracy_difference"] == pytest.approx(0.06)
    assert celeba["accuracy_per_seed"] == "+5.00 / +7.00"
    # two seeds: Student t with 1 degree of freedom on the per-seed differences
    assert celeba["accuracy_p_value"] == pytest.approx(sps.ttest_1samp([0.05, 0.07], 0).pvalue)
    assert celeba["accuracy_difference_ci95"] == pytest.approx(sps.t.ppf(0.975, 1) * np.std([0.05, 0.07], ddof=1) / np.sqrt(2))
    assert celeba["balanced_accuracy_difference"] == pytest.approx(0.0)
    # Δm% in FAMO's sign (a drop), per seed over 2 targets x 2 metrics:
    # seed 0 -(0.1/0.8 + 0 + 0 + 0) / 4, seed 1 -(0.12/0.8 + 0.02/0.8) / 4
    assert celeba["delta_m_drop_pct"] == pytest.approx(-100 * ((0.125 / 4) + (0.175 / 4)) / 2)
    assert [float(x) for x in celeba["delta_m_per_seed"].split(" / ")] == pytest.approx([-100 * 0.125 / 4, -100 * 0.175 / 4], abs=0.006)
    # FER+: seed 0 +0.10 / -0.10, seed 1 +0.06 / 0.0 (only target-level rows count)
    assert fer["accuracy_difference"] == pytest.approx(0.08)
    assert fer["accuracy_difference_ci95"] > 0
    assert fer["delta_m_drop_pct"] == pytest.approx(-100 * ((0.1 / 0.5 - 0.1 / 0.5) / 2 + (0.06 / 0.6) / 2) / 2)


def test_one_seed_is_reported_but_not_tested():
    one = mixture_table(BOARD[BOARD["seed"] == 0], mixture_pairs(DATASETS), metrics=("accuracy",)).set_index("member")
    assert one.loc["celeba", "accuracy_test"] == "untested: 1 seed" and np.isnan(one.loc["celeba", "accuracy_p_value"])
    assert one.loc["celeba", "delta_m_test"] == "untested: 1 seed"


def test_written_files(tmp_path):
    paths = write_mixture(BOARD, tmp_path, DATASETS, runs=[])
    assert [p.name for p in paths] == ["mixture.csv", "mixture.md"]
    md = (tmp_path / "mixture.md").read_text()
    assert "| `net` | celeba (alone: `celeba_alone`) | 2 | 86.00 / 80.00 / +6.00 ±" in md
    assert "Δm% is a drop (FAMO's sign)" in md
    assert write_mixture(BOARD, tmp_path / "none", {"other": DATASETS["other"]}) == []


def test_a_mixture_only_method_is_set_against_the_alone_runs_of_its_network():
    """``net_balanced`` (the same registered network, another loss weighting) has no member-alone
    runs: it is compared with those of ``net``, the one method of its registered name."""
    balanced = BOARD[BOARD["dataset"] == "faces"].assign(method="net_balanced")
    board = pd.concat([BOARD, balanced]).assign(method_name=lambda b: b["method"].map(
        {"net": "netcls", "net_balanced": "netcls", "alone_only": "other"}))
    t = mixture_table(board, mixture_pairs(DATASETS), metrics=("accuracy",))
    row = t[(t["method"] == "net_balanced") & (t["member"] == "celeba")].iloc[0]
    assert row["alone_method"] == "net" and row["accuracy_alone"] == pytest.approx(0.80)
    assert row["accuracy_difference"] == pytest.approx(0.06)
    assert set(t.loc[t["method"] == "net", "alone_method"]) == {"net"}


def test_a_member_without_an_estimable_target_gets_no_delta_m_and_says_why():
    """No target of a member has a value on both sides (here the mixture's evaluated images carry none of
    its labels): its row stays, Δm% is blank with the reason."""
    rows = [("faces", "net", 0, "Smiling", "", None, None), ("celeba_alone", "net", 0, "Smiling", "", 0.8, 0.8)]
    board = pd.DataFrame([dict(zip(["dataset", "method", "seed", "attribute", "class", "accuracy", "balanced_accuracy"], r),
                               split="test", positive_rate=0.01, n_samples=100) for r in rows])
    t = mixture_table(board, [("faces", "celeba", "celeba_alone")], metrics=("accuracy",))
    assert t.iloc[0]["delta_m_test"] == "no estimable task" and np.isnan(t.iloc[0]["delta_m_drop_pct"])
    from facebench.benchmarks.mixture_report import mixture_markdown
    assert "| no estimable task |" in mixture_markdown(t) and "nan" not in mixture_markdown(t)
