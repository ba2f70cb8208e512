"""The cross-suite leaderboard (`facebench report --all`): seed means with 95% intervals, settings
columns, the papers' values beside ours, byte-identical rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import yaml

from facebench.benchmarks.leaderboard import build_cross_suite, to_markdown, write_cross_suite
from facebench.benchmarks.run_folder import write_suite_snapshot
from facebench.benchmarks.suite import SUITES_DIR
from facebench.benchmarks.tables import load_reported
from facebench.datamodules.celeba import CELEBA_ATTRIBUTES


#: Test positives of a 660-image split: the first four attributes rare (Bald none), the rest common.
POSITIVES = {a: (0, 1, 4, 10)[i] if i < 4 else 100 + i for i, a in enumerate(CELEBA_ATTRIBUTES)}


def fake_suite(root, suite="celeba"):
    rng = np.random.default_rng(0)
    rows = []
    for method, name in (("mcnn", "mcnn"), ("majority", "majority")):
        for seed in (0, 1, 2):
            for a in CELEBA_ATTRIBUTES:
                acc = 0.8 + 0.01 * seed + (0.05 if method == "mcnn" else 0) + rng.normal(0, 0.01)
                rows.append({"method": method, "dataset": "celeba", "split": "test", "seed": seed, "attribute": a,
                             "class": "", "accuracy": acc, "balanced_accuracy": acc - 0.2, "auroc": acc,
                             "positive_rate": POSITIVES[a] / 660, "n_samples": 660,
                             "method_name": name, "datamodule": "celeba", "input_size": 64, "input_channels": 3,
                             "epochs": 12, "train_samples": 4560, "params": 7_400_000, "flops_per_image": 1.6e8,
                             "n_targets": 40})
    return write_suite(root, suite, rows)


def write_suite(root: Path, suite: str, rows: list[dict]) -> pd.DataFrame:
    """A committed suite folder as `facebench report --all` reads it: leaderboard.csv +
    leaderboard_info.json, and the suite snapshot (the shipped suite file of that name, if any)."""
    d = root / suite
    d.mkdir(parents=True)
    board = pd.DataFrame(rows)
    board.to_csv(d / "leaderboard.csv", index=False)
    (d / "leaderboard_info.json").write_text(json.dumps({"suite": suite}))
    shipped = SUITES_DIR / f"{suite}.yaml"
    if shipped.is_file():
        write_suite_snapshot(d, yaml.safe_load(shipped.read_text()), str(shipped), None)
    return board


def test_seed_interval_settings_and_paper_value(tmp_path):
    board = fake_suite(tmp_path)
    df = build_cross_suite(tmp_path).set_index("method")
    per_seed = board[board["method"] == "mcnn"].groupby("seed")["accuracy"].mean()
    half = stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3)
    assert df.at["mcnn", "accuracy"] == pytest.approx(per_seed.mean())
    assert df.at["mcnn", "accuracy_ci95"] == pytest.approx(half)
    assert df.at["mcnn", "seeds"] == 3 and df.at["mcnn", "input_size"] == 64 and df.at["mcnn", "train_samples"] == 4560
    reported = load_reported()
    mcnn = reported[(reported["method"] == "MCNN") & (reported["dataset"] == "celeba") & (reported["metric"] == "accuracy")]
    assert df.at["mcnn", "paper_accuracy"] == pytest.approx(mcnn["value"].mean())     # Table 2's 40 values
    assert "4,560 training images vs the paper's 162,770" in df.at["mcnn", "paper"]
    # ranked within the budget family the suite names (celeba.yaml: majority closed_form, mcnn rgb64_12ep)
    assert df.at["mcnn", "budget"] == "rgb64_12ep" and df.at["majority", "budget"] == "closed_form"
    assert list(df.index) == ["majority", "mcnn"]


def test_powered_and_label_consistent_averages(tmp_path):
    board = fake_suite(tmp_path)
    df = build_cross_suite(tmp_path).set_index("method")
    powered = [a for a in CELEBA_ATTRIBUTES if POSITIVES[a] >= 20]                # 36: Bald, Double_Chin, ... out
    consistent = [a for a in CELEBA_ATTRIBUTES if a not in ("High_Cheekbones", "Pointy_Nose", "Oval_Face")]
    mcnn = board[board["method"] == "mcnn"]
    for key, members in (("powered", powered), ("label_consistent", consistent)):
        per_seed = mcnn[mcnn["attribute"].isin(members)].groupby("seed")["accuracy"].mean()
        assert df.at["mcnn", f"accuracy_{key}"] == pytest.approx(per_seed.mean())
        assert df.at["mcnn", f"accuracy_{key}_ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / np.sqrt(3))
        assert df.at["mcnn", f"{key}_targets"] == len(members)
    assert "balanced_accuracy_powered" in df.columns
    md = to_markdown(build_cross_suite(tmp_path))
    assert "| method | accuracy | acc. (powered 36) | acc. (label-consistent 37) | balanced acc. |" in md
    assert "Wu et al., CVPRW 2023" in md


def test_rebuild_is_byte_identical(tmp_path):
    fake_suite(tmp_path)
    csv_path, md_path = write_cross_suite(tmp_path)
    first = (csv_path.read_bytes(), md_path.read_bytes())
    write_cross_suite(tmp_path)
    assert (csv_path.read_bytes(), md_path.read_bytes()) == first
    assert "| `mcnn` |" in md_path.read_text()


def test_small_gains_over_the_majority_are_flagged_and_stages_without_outputs_dropped(tmp_path):
    rows = []
    for method, bal in (("majority", 0.50), ("good", 0.62), ("weak", 0.53), ("anet_identity", np.nan)):
        for a in CELEBA_ATTRIBUTES[:4]:
            rows.append({"method": method, "dataset": "celeba", "split": "test", "seed": 0, "attribute": a, "class": "",
                         "accuracy": bal + 0.3, "balanced_accuracy": bal, "auroc": bal})
    write_suite(tmp_path, "celeba", rows)
    df = build_cross_suite(tmp_path).set_index("method")
    assert "anet_identity" not in df.index
    assert "+3.0 points over the majority" in df.at["weak", "note"]
    assert "majority baseline" not in df.at["good", "note"] and "majority baseline" not in df.at["majority", "note"]


def test_human_gap_is_over_the_targets_with_votes(tmp_path):
    """A mixture's targets without raters count in the accuracy column, not in the gap to humans."""
    rows = [{"method": "net", "dataset": "faces", "split": "test", "seed": 0, "attribute": a, "class": "",
             "accuracy": acc, "balanced_accuracy": acc, "auroc": acc, "rater_accuracy_loo": loo}
            for a, acc, loo in (("emotion", 0.60, 0.70), ("Smiling", 0.90, None), ("Male", 0.96, None))]
    write_suite(tmp_path, "mix", rows)
    row = build_cross_suite(tmp_path).iloc[0]
    assert row["accuracy"] == pytest.approx(0.82)
    assert row["human_ceiling"] == pytest.approx(0.70)
    assert row["gap_to_human"] == pytest.approx(-0.10)


def test_human_gap_scores_the_model_like_the_raters(tmp_path):
    """The ceiling is each rater against the others' majority over every voted image (ties too); the
    gap compares it with the model scored the same way, not with its accuracy on the labelled subset."""
    rows = [{"method": "net", "dataset": "fer", "split": "test", "seed": 0, "attribute": "emotion", "class": "",
             "accuracy": 0.81, "balanced_accuracy": 0.6, "auroc": 0.9, "rater_accuracy_loo": 0.70,
             "model_accuracy_loo": 0.76}]
    write_suite(tmp_path, "fer", rows)
    row = build_cross_suite(tmp_path).iloc[0]
    assert row["accuracy"] == pytest.approx(0.81)
    assert row["gap_to_human"] == pytest.approx(0.06)


def test_rows_carry_compute_deduplicated_accuracy_and_mixed_code_versions(tmp_path):
    """The cross-suite row of a method: its training cost (mean over seeds), its accuracy without the
    test images that duplicate a training image (split test_dedup) with how many that drops, and a
    note when its seeds ran on different code; LEADERBOARD.md names the budget family."""
    rows = []
    for seed in (0, 1):
        for split, n, acc in (("test", 100, 0.80 + 0.02 * seed), ("test_dedup", 90, 0.78 + 0.02 * seed)):
            rows.append({"method": "net", "dataset": "ferplus", "split": split, "seed": seed, "attribute": "emotion",
                         "class": "", "accuracy": acc, "balanced_accuracy": acc, "n_samples": n, "method_name": "timm",
                         "train_cpu_s": 3600.0 * (1 + seed), "train_images": 1000, "train_forward_flops": 2e12})
    write_suite(tmp_path, "mine", rows)
    (tmp_path / "mine" / "leaderboard_info.json").write_text(json.dumps(
        {"suite": "mine", "mixed_code_versions": {"net on ferplus": ["aaa", "bbb"]}}))
    df = build_cross_suite(tmp_path).set_index("method")
    assert df.at["net", "accuracy"] == pytest.approx(0.81) and df.at["net", "accuracy_dedup"] == pytest.approx(0.79)
    assert df.at["net", "dedup_dropped"] == 10 and df.at["net", "train_cpu_s"] == pytest.approx(5400.0)
    assert "its seeds ran on 2 code versions" in df.at["net", "note"] and df.at["net", "budget"] == "unstated"
    md = to_markdown(build_cross_suite(tmp_path))
    assert "79.00 (10)" in md and "| 1.50 | 0.002 |" in md and "Budget family: not stated by the suite." in md
