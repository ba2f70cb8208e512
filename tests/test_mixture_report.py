"""The mixture-against-each-dataset-alone report (benchmarks/mixture_report.py) by hand."""

from __future__ import annotations

import pandas as pd
import pytest

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
    assert celeba["balanced_accuracy_difference"] == pytest.approx(0.0)
    # Δm% per seed, mean over 2 targets x 2 metrics: seed 0 (0.1/0.8 + 0 + 0 + 0) / 4, seed 1 (0.12/0.8 + 0.02/0.8) / 4
    assert celeba["delta_m_pct"] == pytest.approx(100 * ((0.125 / 4) + (0.175 / 4)) / 2)
    # FER+: seed 0 +0.10 / -0.10, seed 1 +0.06 / 0.0 (only target-level rows count)
    assert fer["accuracy_difference"] == pytest.approx(0.08)
    assert fer["accuracy_difference_ci95"] > 0
    assert fer["delta_m_pct"] == pytest.approx(100 * ((0.1 / 0.5 - 0.1 / 0.5) / 2 + (0.06 / 0.6) / 2) / 2)


def test_written_files(tmp_path):
    paths = write_mixture(BOARD, tmp_path, DATASETS)
    assert [p.name for p in paths] == ["mixture.csv", "mixture.md"]
    md = (tmp_path / "mixture.md").read_text()
    assert "| `net` | celeba (alone: `celeba_alone`) | 2 | 86.00 / 80.00 / +6.00 ±" in md
    assert write_mixture(BOARD, tmp_path / "none", {"other": DATASETS["other"]}) == []
