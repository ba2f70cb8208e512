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
from facebench.benchmarks.multitask import settings_of
from facebench.benchmarks.multitask_report import multitask_markdown, published_rows
from facebench.benchmarks.run_folder import RunFolder, write_suite_snapshot
from facebench.benchmarks.stats import image_variance, t_over_seeds
from facebench.core.io import write_text
from facebench.core.tasks import TaskSpec
from facebench.datamodules.table import SampleTable
from facebench.lightning_modules.registry import create_method

ATTRS = ["Smiling", "Male", "Young", "Eyeglasses"]
N = 240
SEEDS = (0, 1, 2)
#: method key -> probability that a prediction is right, per attribute (baseline: single_task)
SKILL = {"single_task": [0.75, 0.75, 0.75, 0.75], "equal": [0.95, 0.95, 0.75, 0.75], "uncertainty": [0.55, 0.75, 0.75, 0.75]}
MULTITASK = {"baseline": "single_task", "metrics": ["f1", "accuracy"]}


def fake_results(root: Path, suite: str = "mtl_celeba") -> tuple[Path, dict]:
    """Finished runs of three methods x three seeds on one test split (records as the worker writes
    them) and the suite snapshot the reports read."""
    task = TaskSpec.binary_attributes(ATTRS, name="celeba")
    model = create_method("mtl_cnn", task, width=0.05)
    rng = np.random.default_rng(0)
    labels = (rng.random((N, len(ATTRS))) < 0.5).astype(np.int64)
    dm = SimpleNamespace(tables={"test": SampleTable(paths=[f"img{i:04d}.jpg" for i in range(N)], labels=labels)}, report={})
    correct: dict = {}
    results = root / suite
    for method, skill in SKILL.items():
        for seed in SEEDS:
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
    write_suite_snapshot(results, {"name": suite, "multitask": MULTITASK, "methods": {m: {} for m in SKILL},
                                   "datasets": {"celeba": {"datamodule": "celeba"}}}, "test", None)
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
        for seed in SEEDS:   # FAMO's sign: minus the relative change
            changes = [-(test.loc[(method, seed, a), m] - test.loc[("single_task", seed, a), m]) / test.loc[("single_task", seed, a), m]
                       for m in ("f1", "accuracy") for a in ATTRS]
            per_seed.append(100 * np.mean(changes))
        assert table.at[method, "delta_m_drop_pct"] == pytest.approx(np.mean(per_seed), rel=1e-5)
        assert table.at[method, "per_seed"] == " / ".join(f"{x:+.2f}" for x in per_seed)
        accuracy_only = [-100 * np.mean([(test.loc[(method, seed, a), "accuracy"] - test.loc[("single_task", seed, a), "accuracy"])
                                         / test.loc[("single_task", seed, a), "accuracy"] for a in ATTRS]) for seed in SEEDS]
        assert table.at[method, "delta_m_drop_pct[accuracy]"] == pytest.approx(np.mean(accuracy_only), rel=1e-5)
        assert table.at[method, "seeds"] == 3 and table.at[method, "delta_m_ci95"] > 0
        assert table.at[method, "variance"] == "seeds + images"        # the run folders keep the predictions
    assert table.at["single_task", "delta_m_drop_pct"] == 0.0
    assert table.at["equal", "delta_m_drop_pct"] < 0 < table.at["uncertainty", "delta_m_drop_pct"]   # negative: better
    assert table.at["equal", "mean_rank"] < table.at["uncertainty", "mean_rank"]
    assert table.at["equal", "f1"] == pytest.approx(test.loc["equal", "f1"].groupby("seed").mean().mean(), rel=1e-5)
    assert "delta_m_drop_pct[balanced_accuracy]" in table.columns
    tasks = pd.read_csv(results / "multitask_tasks.csv")
    assert set(tasks["metric"]) == {"f1", "accuracy", "balanced_accuracy"} and tasks["included"].all()
    md = (results / "multitask.md").read_text()
    assert "against the single-task baseline `single_task`" in md and "FAMO's sign" in md
    assert "| method | Δm% drop [95% CI] | per seed | p | Δm% f1 | Δm% accuracy | Δm% balanced accuracy |" in md
    assert "| `single_task` (baseline) | 0 |" in md and "- f1: 4 of 4 tasks in; left out: none" in md
    # the header says what the intervals hold: these runs keep their predictions, so the images' term is in
    assert "the test images' nested in them" in md and "keep no per-image predictions" not in md


def test_significance_only_against_the_baseline_seed_aware_and_oriented(report):
    results, _, correct = report
    sig = pd.read_csv(results / "multitask_significance.csv", keep_default_na=False, na_values=[""])
    assert set(sig["baseline"]) == {"single_task"} and set(sig["method"]) == {"equal", "uncertainty"}
    rows = sig.set_index(["method", "attribute"])
    for method in ("equal", "uncertainty"):     # 'uncertainty' sorts after the baseline: still method minus baseline
        for j, a in enumerate(ATTRS):
            diffs = [correct[(method, s)][:, j].mean() - correct[("single_task", s)][:, j].mean() for s in SEEDS]
            r = rows.loc[(method, a)]
            assert r["difference"] == pytest.approx(np.mean(diffs), abs=1e-6)
            assert r["per_seed_differences"] == " / ".join(f"{100 * d:+.2f}" for d in diffs)
            delta = np.stack([correct[(method, s)][:, j].astype(float) - correct[("single_task", s)][:, j] for s in SEEDS], 1)
            expected = t_over_seeds(np.array(diffs), image_variance(delta[:, :, None])[0])
            assert r["p_value"] == pytest.approx(float(expected["p"]), rel=1e-4)
            assert r["variance"] == "seeds + images" and r["test"] == "paired t over seeds"
            assert r["positives"] + r["negatives"] == N
    assert rows.loc[("equal", "Smiling"), "significant"] and rows.loc[("equal", "Smiling"), "winner"] == "equal"
    assert rows.loc[("uncertainty", "Smiling"), "winner"] == "single_task"
    assert not rows.loc[("equal", "Young"), "significant"]
    avg = sig[sig["attribute"] == "Average"].set_index("method")
    for method in ("equal", "uncertainty"):
        diff = np.mean([correct[(method, s)].mean(0).mean() - correct[("single_task", s)].mean(0).mean() for s in SEEDS])
        assert avg.at[method, "difference"] == pytest.approx(diff, abs=1e-6)
        assert avg.at[method, "ci95_low"] <= diff <= avg.at[method, "ci95_high"]
    assert avg.at["equal", "difference"] > 0 > avg.at["uncertainty", "difference"]
    assert {"Average (powered 4)", "Average (label-consistent 4)"} <= set(sig["attribute"])


def test_cross_suite_leaderboard_carries_delta_m(report, tmp_path):
    results, _, _ = report
    suite_dir = tmp_path / "mtl_celeba"
    suite_dir.mkdir()
    for name in ("leaderboard.csv", "leaderboard_info.json", "multitask.csv", "suite.yaml"):
        (suite_dir / name).write_bytes((results / name).read_bytes())
    df = build_cross_suite(tmp_path).set_index("method")
    table = pd.read_csv(results / "multitask.csv").set_index("method")
    for col in ("delta_m_drop_pct", "delta_m_ci95", "mean_rank"):
        assert df.at["equal", col] == pytest.approx(table.at["equal", col])
    assert df.at["equal", "delta_m_p_value"] == pytest.approx(table.at["equal", "p_value"])
    md = to_markdown(build_cross_suite(tmp_path))
    assert "| Δm% drop vs single-task | p (Δm%) | mean rank |" in md
    assert f"| {table.at['equal', 'delta_m_drop_pct']:+.2f} ± {table.at['equal', 'delta_m_ci95']:.2f} | " in md
    assert "| 0 (baseline) |" in md
    (suite_dir / "multitask.csv").unlink()
    assert "delta_m_drop_pct" not in build_cross_suite(tmp_path).columns


def test_multitask_key_is_checked_and_outside_every_run_config(tmp_path):
    suite = load_suite("mtl_celeba", results_root=tmp_path)
    hashes = {r.run_id: r.config_hash for r in suite.runs}
    assert all("multitask" not in json.dumps(r.config) for r in suite.runs)
    other = load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.baseline": "equal",
                                                                      "multitask.metrics": ["accuracy"],
                                                                      "multitask.min_positives": 10,
                                                                      "multitask.baseline_floor": 0.2})
    assert {r.run_id: r.config_hash for r in other.runs} == hashes
    with pytest.raises(SuiteConfigError, match="multitask.baseline is 'nope'"):
        load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.baseline": "nope"})
    with pytest.raises(SuiteConfigError, match="unknown key"):
        load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.split": "val"})
    with pytest.raises(SuiteConfigError, match="min_positives must be a whole number"):
        load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.min_positives": 0})
    with pytest.raises(SuiteConfigError, match="baseline_floor must be a number"):
        load_suite("mtl_celeba", results_root=tmp_path, overrides={"multitask.baseline_floor": "high"})


def test_published_delta_m_rows_appear_beside_ours(report, tmp_path):
    """Rows of paper_reported.csv with metric delta_m_pct / mean_rank for the suite's dataset are shown
    as printed (a drop, as ours), under their paper and method."""
    results, board, _ = report
    reported = pd.DataFrame([
        {"paper": "famo", "method": m, "dataset": "celeba", "split": "test", "attribute": "all", "paper_attribute": "all",
         "metric": metric, "value": v, "source": "Table 3"}
        for m, metric, v in (("FAMO", "delta_m_pct", 1.21), ("FAMO", "mean_rank", 3.5), ("LS", "delta_m_pct", 4.15))])
    published = published_rows(reported, ["celeba"])
    assert list(published["method"]) == ["FAMO", "LS"]
    table = pd.read_csv(results / "multitask.csv")
    selection = pd.read_csv(results / "multitask_tasks.csv")
    sig = pd.read_csv(results / "multitask_significance.csv")
    md = multitask_markdown(table, sig, selection, "single_task", ("f1", "accuracy"), settings_of(MULTITASK), published)
    assert "| famo | FAMO | 1.21 | 3.5 | Table 3 |" in md and "| famo | LS | 4.15 |  | Table 3 |" in md
    assert published_rows(reported, ["ferplus"]).empty
