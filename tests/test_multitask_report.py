"""The multi-task report (benchmarks/multitask_report.py) from a small fake results folder written
through the run records: Δm% / mean rank files, the significance table against the baseline only
(oriented method vs baseline), the cross-suite columns, and the suite's ``multitask`` key (checked,
and in no run's config or config hash)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from facebench.benchmarks.leaderboard import build_cross_suite, to_markdown
from facebench.benchmarks.records import write_records
from facebench.benchmarks.report import build_reports
from facebench.benchmarks.suite import SuiteConfigError, load_suite
from facebench.benchmarks.run_folder import RunFolder
from facebench.core.io import write_text
from facebench.core.tasks import TaskSpec
from facebench.datamodules.table import SampleTable
from facebench.lightning_modules.registry import create_method

ATTRS = ["Smiling", "Male", "Young", "Eyeglasses"]
N = 240
#: method key -> probability that a prediction is right, per attribute (baseline: single_task)
SKILL = {"single_task": [0.75, 0.75, 0.75, 0.75], "equal": [0.95, 0.95, 0.75, 0.75], "uncertainty": [0.55, 0.75, 0.75, 0.75]}


def fake_results(root: Path, suite: str = "mtl_celeba") -> tuple[Path, dict]:
    """Finished runs of three methods x two seeds on one test split (records as the worker writes them)."""
    task = TaskSpec.binary_attributes(ATTRS, name="celeba")
    model = create_method("mtl_cnn", task, width=0.05)
    rng = np.random.default_rng(0)
    labels = (rng.random((N, len(ATTRS))) < 0.5).astype(np.int64)
    dm = SimpleNamespace(tables={"test": SampleTable(paths=[f"img{i:04d}.jpg" for i in range(N)], labels=labels)}, report={})
    correct: dict = {}
    results = root / suite
    for method, skill in SKILL.items():
        for seed in (0, 1):
            right = rng.random((N, len(ATTRS))) < np.array(skill)
            correct[(method, seed)] = right
            probs = np.where(right, labels, 1 - labels) * 0.6 + 0.2      # 0.8 on the predicted side
            run_id = f"{method}--celeba--s{seed}"
            run_dir = results / "runs" / run_id
            cfg = {"suite": suite, "run_id": run_id, "method_key": method, "dataset_key": "celeba", "seed": seed,
                   "method": {"name": "mtl_cnn", "args": {}}, "dataset": {"datamodule": "celeba", "args": {}},
                   "evaluation": {"tune_thresholds_on": None}}
            run_dir.mkdir(parents=True)
            write_text(run_dir / "config.yaml", json.dumps(cfg))     # JSON is YAML
            write_records(run_dir, cfg, model, dm, {"test": {"probs": probs.astype(np.float32), "labels": labels,
                                                             "index": np.arange(N)}}, timing={})
            RunFolder(run_dir).set_status("done")
    return results, correct


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    results, correct = fake_results(tmp_path_factory.mktemp("mtl"))
    board = build_reports(results, suite_name="mtl_celeba", tables=False, figures=False)
    return results, board, correct


def test_multitask_files_and_delta_m_by_hand(report):
    results, board, _ = report
    table = pd.read_csv(results / "multitask.csv").set_index("method")
    assert set(table.index) == set(SKILL)
    test = board[board["split"] == "test"].set_index(["method", "seed", "attribute"])
    for method in ("equal", "uncertainty"):
        per_seed = []
        for seed in (0, 1):
            changes = [(test.loc[(method, seed, a), m] - test.loc[("single_task", seed, a), m]) / test.loc[("single_task", seed, a), m]
                       for m in ("f1", "accuracy") for a in ATTRS]
            per_seed.append(100 * np.mean(changes))
        assert table.at[method, "delta_m_pct"] == pytest.approx(np.mean(per_seed), rel=1e-5)
        accuracy_only = [100 * np.mean([(test.loc[(method, seed, a), "accuracy"] - test.loc[("single_task", seed, a), "accuracy"])
                                        / test.loc[("single_task", seed, a), "accuracy"] for a in ATTRS]) for seed in (0, 1)]
        assert table.at[method, "delta_m_pct[accuracy]"] == pytest.approx(np.mean(accuracy_only), rel=1e-5)
        assert table.at[method, "seeds"] == 2 and table.at[method, "delta_m_ci95"] > 0
    assert table.at["single_task", "delta_m_pct"] == 0.0
    assert table.at["equal", "delta_m_pct"] > 0 > table.at["uncertainty", "delta_m_pct"]
    assert table.at["equal", "mean_rank"] < table.at["uncertainty", "mean_rank"]
    assert table.at["equal", "f1"] == pytest.approx(test.loc["equal", "f1"].groupby("seed").mean().mean(), rel=1e-5)
    md = (results / "multitask.md").read_text()
    assert "against the single-task baseline `single_task`" in md
    assert "| method | Δm% | Δm% f1 | Δm% accuracy | mean rank (f1) |" in md
    assert "| `single_task` (baseline) | +0.00 ± 0.00 | +0.00 | +0.00 |" in md and "| `equal` | +" in md


def test_significance_only_against_the_baseline_and_oriented(report):
    results, _, correct = report
    sig = pd.read_csv(results / "multitask_significance.csv")
    assert set(sig["baseline"]) == {"single_task"} and set(sig["method"]) == {"equal", "uncertainty"}
    mc = sig[sig["test"] == "mcnemar"].set_index(["method", "attribute"])
    for method in ("equal", "uncertainty"):     # 'uncertainty' sorts after the baseline: its pair is flipped
        for j, a in enumerate(ATTRS):
            m_only = sum(int((correct[(method, s)][:, j] & ~correct[("single_task", s)][:, j]).sum()) for s in (0, 1))
            b_only = sum(int((~correct[(method, s)][:, j] & correct[("single_task", s)][:, j]).sum()) for s in (0, 1))
            assert (mc.loc[(method, a), "method_only_correct"], mc.loc[(method, a), "baseline_only_correct"]) == (m_only, b_only)
    assert mc.loc[("equal", "Smiling"), "significant"] and mc.loc[("equal", "Smiling"), "winner"] == "equal"
    assert mc.loc[("uncertainty", "Smiling"), "winner"] == "single_task"
    boot = sig[sig["test"] == "paired_bootstrap"].set_index("method")
    for method in ("equal", "uncertainty"):
        diff = np.mean([correct[(method, s)].mean(0).mean() - correct[("single_task", s)].mean(0).mean() for s in (0, 1)])
        assert boot.at[method, "difference"] == pytest.approx(diff, rel=1e-5)
        assert boot.at[method, "ci95_low"] <= diff <= boot.at[method, "ci95_high"]
    assert boot.at["equal", "difference"] > 0 > boot.at["uncertainty", "difference"]


def test_cross_suite_leaderboard_carries_delta_m(report, tmp_path):
    results, _, _ = report
    suite_dir = tmp_path / "mtl_celeba"
    suite_dir.mkdir()
    for name in ("leaderboard.csv", "leaderboard_info.json", "multitask.csv"):
        (suite_dir / name).write_bytes((results / name).read_bytes())
    df = build_cross_suite(tmp_path).set_index("method")
    table = pd.read_csv(results / "multitask.csv").set_index("method")
    for col in ("delta_m_pct", "delta_m_ci95", "mean_rank"):
        assert df.at["equal", col] == pytest.approx(table.at["equal", col])
    md = to_markdown(build_cross_suite(tmp_path))
    assert "| Δm% vs single-task | mean rank |" in md
    assert f"| {table.at['equal', 'delta_m_pct']:+.2f} ± {table.at['equal', 'delta_m_ci95']:.2f} | " in md
    (suite_dir / "multitask.csv").unlink()
    assert "delta_m_pct" not in build_cross_suite(tmp_path).columns


def test_multitask_key_is_checked_and_outside_every_run_config(tmp_path):
    suite = load_suite("mtl_celeba", results_root=tmp_path)
    hashes = {r.run_id: r.config_hash for r in suite.runs}
    assert all("multitask" not in json.dumps(r.config) for r in suite.runs)
    other = load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.baseline": "equal",
                                                                      "multitask.metrics": ["accuracy"]})
    assert {r.run_id: r.config_hash for r in other.runs} == hashes
    with pytest.raises(SuiteConfigError, match="multitask.baseline is 'nope'"):
        load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.baseline": "nope"})
    with pytest.raises(SuiteConfigError, match="unknown key"):
        load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.split": "val"})
