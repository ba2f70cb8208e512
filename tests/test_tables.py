"""results/paper_reported.csv against the papers' text, the comparison / agreement tables, and
``facebench report`` rebuilding tables and figures from result records alone."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from facebench.core.io import write_json, write_yaml
from facebench.benchmarks.records import write_records
from facebench.benchmarks.report import build_reports
from facebench.benchmarks.tables import (AVERAGE, REPORTED_PATH, canonical_attribute, comparison_table, html_page, load_reported,
                                         reported_text, write_reported)
from facebench.datamodules.table import SampleTable
from facebench.datamodules.celeba import CELEBA_ATTRIBUTES
from facebench.core.tasks import Target, TaskSpec
from facebench.lightning_modules.registry import create_method

PAPERS = Path(__file__).resolve().parents[1].parent / "shared" / "papers"
needs_papers = pytest.mark.skipif(not PAPERS.is_dir(), reason=f"paper texts not found at {PAPERS}")


@pytest.fixture(scope="module")
def reported() -> pd.DataFrame:
    return load_reported(REPORTED_PATH)


def reported_value(df: pd.DataFrame, paper: str, method: str, dataset: str, attribute: str, metric: str = "accuracy") -> float:
    sel = df[(df["paper"] == paper) & (df["method"] == method) & (df["dataset"] == dataset)
             & (df["attribute"] == attribute) & (df["metric"] == metric)]
    assert len(sel) == 1, (paper, method, dataset, attribute, metric, len(sel))
    return float(sel["value"].iloc[0])


# ------------------------------------------------------------------------------------------------
# the transcription, checked against the paper text
# ------------------------------------------------------------------------------------------------
def test_reported_covers_every_celeba_and_lfwa_attribute(reported):
    tables = {"lnets_anet_celeba_in_the_wild": ["FaceTracer", "PANDA-w", "PANDA-l", "LNets+ANet"],
              "mcnn_aux_multitask_attributes": ["Baseline", "Liu et al.", "Independent", "MCNN", "MCNN-AUX"]}
    for paper, methods in tables.items():
        for dataset in ("celeba", "lfwa"):
            for method in methods:
                sel = reported[(reported["paper"] == paper) & (reported["dataset"] == dataset) & (reported["method"] == method)
                               & (reported["metric"] == "accuracy")]
                assert set(sel["attribute"]) - {AVERAGE} == set(CELEBA_ATTRIBUTES), (paper, dataset, method)
                assert sel["value"].between(0.4, 1.0).all()


@needs_papers
def test_lnets_table1_against_paper_text(reported):
    text = (PAPERS / "lnets_anet_celeba_in_the_wild.txt").read_text()
    names = {"FaceTracer [11]": "FaceTracer", "PANDA-w [26]": "PANDA-w", "PANDA-I [26]": "PANDA-l", "LNets+ANet": "LNets+ANet"}
    headers = re.findall(r"^\t\t(5 Shadow.*|Mouth S\. O\..*)$", text, re.M)
    rows = re.findall(r"^(CelebA|LFWA)?\t(FaceTracer \[11\]|PANDA-w \[26\]|PANDA-I \[26\]|LNets\+ANet)\t([\d\t]+?)\s*$", text, re.M)
    assert len(headers) == 2 and len(rows) == 16
    checked, dataset = 0, None
    for i, (ds, method, numbers) in enumerate(rows):
        dataset = ds.lower() or dataset
        header = [h for h in headers[i // 8].split("\t") if h.strip()]
        values = numbers.split("\t")
        assert len(values) == len(header)
        for h, v in zip(header, values):
            attribute = AVERAGE if h == AVERAGE else canonical_attribute(h)
            assert reported_value(reported, "lnets_anet_celeba_in_the_wild", names[method], dataset, attribute) \
                == pytest.approx(int(v) / 100), (dataset, method, h)
            checked += 1
    assert checked == 2 * 4 * 41


@needs_papers
def test_mcnn_tables_against_paper_text(reported):
    lines = (PAPERS / "mcnn_aux_multitask_attributes.txt").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Attribute\tBaseline")]
    assert len(starts) == 2                     # Table 2 (CelebA) is printed first, Table 3 (LFWA) second
    for start, dataset in zip(starts, ("celeba", "lfwa")):
        methods = lines[start].split("\t")[1:]
        body = [line.split("\t") for line in lines[start + 1:start + 41]]
        assert all(len(r) == 6 for r in body)
        for r in body:
            for method, v in zip(methods, r[1:]):
                printed = float(v.rstrip("."))          # the paper prints "77.06." once (LFWA, Oval Face)
                assert reported_value(reported, "mcnn_aux_multitask_attributes", method, dataset,
                                      canonical_attribute(r[0])) == pytest.approx(printed / 100, abs=1e-9), (dataset, method, r[0])
    assert reported_value(reported, "mcnn_aux_multitask_attributes", "Independent", "lfwa", "Oval_Face") == pytest.approx(0.7706)


def test_mcnn_liu_column_equals_lnets_table_but_two_cells(reported):
    """The MCNN-AUX paper's "Liu et al." column re-prints LNets+ANet's Table 1; it differs in two
    CelebA cells (Earrings 82 vs 88, High Cheekbones 88 vs 87) -- kept as each paper printed them."""
    liu = reported[reported["method"] == "Liu et al."].set_index(["dataset", "attribute"])["value"]
    lnets = reported[(reported["method"] == "LNets+ANet") & (reported["attribute"] != AVERAGE)].set_index(["dataset", "attribute"])["value"]
    diff = (liu - lnets.reindex(liu.index)).abs()
    assert sorted(diff[diff > 1e-9].index) == [("celeba", "High_Cheekbones"), ("celeba", "Wearing_Earrings")]


@needs_papers
def test_fad_fer_vv_flickr_against_paper_text(reported):
    fad = (PAPERS / "lacnn_landmark_augmented_cnn_FAD.txt").read_text()
    accs = re.findall(r"^([A-Z][a-z]+(?: [A-Z][a-z]+)?) ([\d.]+)% ([\d.]+)%$", fad, re.M)
    kappas = re.findall(r"^([A-Z][a-z]+(?: [A-Z][a-z]+)?) (0\.\d+) \((?:APA|SA|MA|FA|SLA)\)$", fad, re.M)
    assert len(accs) == 9 and len(kappas) == 9
    paper = "lacnn_landmark_augmented_cnn_FAD"
    for trait, base, lacnn in accs:
        assert reported_value(reported, paper, "Baseline CNN", "fad", trait) == pytest.approx(float(base) / 100)
        assert reported_value(reported, paper, "LACNN", "fad", trait) == pytest.approx(float(lacnn) / 100)
    for trait, kappa in kappas:
        assert reported_value(reported, paper, "raters", "fad", trait, "fleiss_kappa") == pytest.approx(float(kappa))

    sem = re.sub(r"\s+", " ", (PAPERS / "semantic_facial_features_fer_vv.txt").read_text())
    paper, method = "semantic_facial_features_fer_vv", "deep CNN (Sec. 4.1.1)"
    fer = re.search(r"correctly classify ([\d.]+)% of the test samples, maintaining an average preci- sion per class of ([\d.]+)%", sem)
    assert reported_value(reported, paper, method, "fer2013", "emotion") == pytest.approx(float(fer.group(1)) / 100)
    assert reported_value(reported, paper, method, "fer2013", "emotion", "mean_class_precision") == pytest.approx(float(fer.group(2)) / 100)
    age = re.search(r"classification accuracy was ([\d.]+)%/([\d.]+)% for ±2.5 year/±5 year", sem)
    assert reported_value(reported, paper, method, "vv", "age") == pytest.approx(float(age.group(1)) / 100)
    assert reported_value(reported, paper, method, "vv", "age", "accuracy_within_1") == pytest.approx(float(age.group(2)) / 100)
    for attribute, pattern in {"gender": r"correctly classify ([\d.]+)% of the faces", "ethnicity": r"total classification accuracy of ([\d.]+)%, with",
                               "glasses": r"([\d.]+)% accuracy for the presence of glasses", "beard": r"([\d.]+)% for the amount of beard",
                               "mustache": r"([\d.]+)% for the amount of mustache"}.items():
        assert reported_value(reported, paper, method, "vv", attribute) == pytest.approx(float(re.search(pattern, sem).group(1)) / 100)

    flickr = (PAPERS / "branching_identity_network_flickr.txt").read_text()
    paper = "branching_identity_network_flickr"
    for task, acc in re.findall(r"^(emotion|age|ethnicity|gender)\t[\d.]+[kM]\t(\d+)%\t", flickr, re.M):
        assert reported_value(reported, paper, "branched identity ResNet", "flickr", task) == pytest.approx(int(acc) / 100)
    point = re.search(r"tpr\* of ([\d.]+)% and \*fpr\* of only ([\d.]+)%.*?only ([\d.]+)% do not", flickr.replace("\n", " "))
    op = reported[(reported["paper"] == paper) & (reported["attribute"] == "ethnicity (multi-target)")].set_index("metric")["value"]
    assert [op["tpr@fpr=0.01"], op["fpr"], op["unlabelled"]] == pytest.approx([float(x) / 100 for x in point.groups()])


def test_every_reported_value_is_written_exactly(tmp_path):
    """Each value in paper_reported.csv is the shortest decimal of its float (as the paper prints it:
    no exponent, no digits lost), and reading + writing the file gives its bytes."""
    raw = pd.read_csv(REPORTED_PATH, dtype=str, keep_default_na=False)
    inexact = [(i + 2, v) for i, v in enumerate(raw["value"]) if reported_text(float(v)) != v]
    assert not inexact, f"values not written exactly (line, text): {inexact[:5]}"
    assert reported_text(1.01806e06) == "1018060" and reported_text(1018055.0) == "1018055" and reported_text(0.7197) == "0.7197"
    out = write_reported(load_reported(REPORTED_PATH), tmp_path / "paper_reported.csv")
    assert out.read_bytes() == REPORTED_PATH.read_bytes()


@needs_papers
def test_branching_parameter_counts_against_paper_text(reported):
    text = (PAPERS / "branching_identity_network_flickr.txt").read_text()
    for task, params in re.findall(r"^(emotion|age|ethnicity|gender)\t[\d.]+[kM]\t\d+%\t\d+k?\t([\d,]+)$", text, re.M):
        value = reported_value(reported, "branching_identity_network_flickr", "branched identity ResNet", "flickr", task,
                               "trainable_params")
        assert value == int(params.replace(",", "")), task


# ------------------------------------------------------------------------------------------------
# tables from long metrics
# ------------------------------------------------------------------------------------------------
def long_metrics() -> pd.DataFrame:
    rows = []
    values = {("majority", 0): [0.8, 0.6, 0.97], ("netA", 0): [0.9, 0.7, 0.98], ("netA", 1): [0.92, 0.74, 0.96],
              ("netB", 0): [0.85, 0.8, 0.99]}
    for (method, seed), vals in values.items():
        for target, v in zip(["Smiling", "Male", "Bald"], vals):
            for metric, x in [("accuracy", v), ("ece", 1 - v)]:
                rows.append({"method": method, "method_name": "majority" if method == "majority" else "timm",
                             "dataset": "celeba_small", "datamodule": "celeba", "split": "test", "seed": seed,
                             "target": target, "class": "", "metric": metric, "value": x})
    return pd.DataFrame(rows)


def test_comparison_table_means_seeds_and_average():
    t = comparison_table(long_metrics(), "celeba_small", "accuracy")
    assert list(t.mean.columns) == ["majority", "netB", "netA"]          # baseline first, then best average first
    # CelebA attributes: the label-consistent average too (none of the three is here: the same rows)
    assert list(t.mean.index) == ["Smiling", "Male", "Bald", AVERAGE, "Average (label-consistent 3)"]
    assert t.mean.at["Smiling", "netA"] == pytest.approx(0.91)
    assert t.std.at["Smiling", "netA"] == pytest.approx(np.std([0.9, 0.92], ddof=1))
    # Average: per seed over rows (0.86, 0.873...), then mean and std over seeds
    per_seed = [np.mean([0.9, 0.7, 0.98]), np.mean([0.92, 0.74, 0.96])]
    assert t.mean.at[AVERAGE, "netA"] == pytest.approx(np.mean(per_seed))
    assert t.std.at[AVERAGE, "netA"] == pytest.approx(np.std(per_seed, ddof=1))
    assert np.isnan(t.std.at["Smiling", "netB"])                          # one seed: no spread
    md = t.to_markdown()
    assert "| Smiling | 0.8000 | 0.8500 | **0.9100 ± 0.0141** |" in md
    assert "| Male | 0.6000 | **0.8000** | 0.7200 ± 0.0283 |" in md
    assert f"| **{AVERAGE}** |" in md
    csv = t.to_frame()
    assert list(csv.columns) == ["attribute", "majority", "netB", "netA", "netA std"]
    ece = comparison_table(long_metrics(), "celeba_small", "ece")
    assert ece.best_mask().at["Bald", "netB"] and not ece.best_mask().at["Bald", "netA"]   # lower is better


def test_reported_columns_join_by_celeba_name():
    reported = pd.DataFrame([
        {"paper": "lnets_anet_celeba_in_the_wild", "method": "LNets+ANet", "dataset": "celeba", "split": "test",
         "attribute": a, "paper_attribute": a, "metric": "accuracy", "value": v, "source": "Table 1"}
        for a, v in [("Smiling", 0.92), ("Male", 0.98), ("Bald", 0.98), ("Young", 0.87), (AVERAGE, 0.87)]]
        + [{"paper": "x", "method": "partial", "dataset": "celeba", "split": "test", "attribute": "Smiling",
            "paper_attribute": "Smiling", "metric": "accuracy", "value": 0.5, "source": ""}])
    t = comparison_table(long_metrics(), "celeba_small", "accuracy", reported=reported)
    col = "LNets+ANet [Liu et al. 2015]"
    assert t.mean.at["Male", col] == 0.98 and t.mean.at[AVERAGE, col] == pytest.approx(np.mean([0.92, 0.98, 0.98]))
    assert np.isnan(t.mean.at[AVERAGE, "partial [x]"])                     # covers one row only: no average
    assert t.best_mask().at["Male", col]


def test_html_page_is_self_contained_and_sortable():
    t = comparison_table(long_metrics(), "celeba_small", "accuracy")
    page = html_page("facebench: celeba_small", [t])
    assert "<script>" in page and "function sortTable" in page and 'onclick="sortTable(' in page
    assert "<tfoot>" in page and "<b>0.9100 ± 0.0141</b>" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert page.count("<tr>") == 1 + 5                                   # header + 3 rows + 2 averages


# ------------------------------------------------------------------------------------------------
# facebench report: everything from result records alone
# ------------------------------------------------------------------------------------------------
def fake_run(results: Path, task: TaskSpec, method: str, method_name: str, dataset: str, seed: int, quality: float,
             votes: dict | None = None) -> None:
    """A finished run's records written by write_records (the majority model stands in for counts)."""
    rng = np.random.default_rng(seed * 7 + len(method))
    run_id = f"{method}--{dataset}--s{seed}"
    run_dir = results / "runs" / run_id
    cfg = {"suite": "fake", "run_id": run_id, "method_key": method, "method": {"name": method_name, "args": {}},
           "dataset_key": dataset, "dataset": {"datamodule": "fake", "args": {}}, "seed": seed, "evaluation": {}}
    collected, tables = {}, {}
    for split, n in (("val", 120), ("test", 150)):
        labels = np.zeros((n, task.n_label_slots), np.int64)
        probs = np.zeros((n, task.n_logits), np.float32)
        for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
            if t.kind == "binary":
                y = rng.integers(0, 2, n)
                probs[:, ls.start] = np.clip(quality * y + (1 - quality) * rng.random(n), 0, 1)
            else:
                y = rng.integers(0, t.n_classes, n)
                z = rng.normal(size=(n, t.n_classes))
                z[np.arange(n), y] += 3 * quality
                probs[:, ls] = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            labels[:, ys.start] = y
        parts = {"probs": probs, "labels": labels, "index": np.arange(n)}
        table = SampleTable(paths=[f"{split}/{i}.png" for i in range(n)], labels=labels)
        for name, p in (votes or {}).items():
            parts[f"votes/{name}"] = rng.multinomial(5, p, n)
        collected[split], tables[split] = parts, table
    run_dir.mkdir(parents=True)
    write_yaml(run_dir / "config.yaml", cfg)
    write_records(run_dir, cfg, create_method("majority", task), SimpleNamespace(tables=tables), collected,
                  timing={"train_time_s": 1.0})
    write_json(run_dir / "status.json", {"state": "done"})


def test_report_rebuilds_tables_and_figures_from_records(tmp_path):
    binary = TaskSpec.binary_attributes(["Smiling", "Male", "Bald"], name="celeba")
    emotions = TaskSpec((Target("emotion", "multiclass", ("happy", "sad", "neutral"), has_votes=True),), name="fer")
    for seed in (0, 1):
        for method, name, q in (("majority", "majority", 0.0), ("netA", "timm", 0.6)):
            fake_run(tmp_path, binary, method, name, "celeba", seed, q)
    fake_run(tmp_path, emotions, "netA", "timm", "fer", 0, 0.7, votes={"emotion": [0.5, 0.3, 0.2]})
    fake_run(tmp_path, emotions, "netB", "timm", "fer", 0, 0.2, votes={"emotion": [0.5, 0.3, 0.2]})
    board = build_reports(tmp_path)
    assert not any(c.startswith("confusion:") for c in board.columns) and "accuracy@tuned" in board.columns
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    for stem in ("celeba_accuracy", "celeba_accuracy_at_tuned", "celeba_auroc", "celeba_ece", "fer_accuracy",
                 "fer_mean_class_precision", "fer_agreement"):
        for ext in (".csv", ".md"):
            assert (tables / f"{stem}{ext}").is_file(), stem + ext
    assert (tables / "celeba.html").is_file() and (tables / "fer.html").is_file()
    acc = pd.read_csv(tables / "celeba_accuracy.csv")
    assert list(acc.columns[:5]) == ["attribute", "test positives", "test negatives", "majority", "netA"]
    assert list(acc["attribute"].iloc[-3:]) == [AVERAGE, "Average (powered 3)", "Average (label-consistent 3)"]
    assert (acc["test positives"].iloc[:3] + acc["test negatives"].iloc[:3] == 150).all()
    agreement = pd.read_csv(tables / "fer_agreement.csv")
    assert {"raters: Fleiss' kappa", "human ceiling (rater vs others' majority)", "netA: vs others' majority"} <= set(agreement.columns)
    assert list(agreement["target"]) == ["emotion", "emotion/happy", "emotion/sad", "emotion/neutral"]
    confusion = pd.read_csv(tables / "fer_netA_emotion_confusion.csv")
    assert confusion.iloc[:, 1:].to_numpy().sum() == 150
    assert {p.name for p in figures.glob("*.png")} == {"roc_celeba_attributes.png", "reliability_celeba.png",
                                                      "roc_fer_emotion.png", "reliability_fer.png"}
    # records carry the thresholds tuned on val, applied to the test rows
    metrics = pd.read_csv(tmp_path / "runs" / "netA--celeba--s0" / "metrics.csv", keep_default_na=False)
    tuned = metrics[metrics["metric"] == "threshold@tuned"].pivot_table(index="target", columns="split", values="value")
    assert (tuned["val"] == tuned["test"]).all() and (metrics["thresholds_tuned_on"] == "val").all()


def test_subset_average_rows():
    """A named target subset (e.g. label-consistent attributes) gets its own average row, per seed
    then over seeds, over the subset's rows only; names missing from the table are ignored."""
    t = comparison_table(long_metrics(), "celeba_small", "accuracy", subsets={"consistent": ["Male", "Bald", "Nope"]})
    label = "Average (consistent 2)"
    assert list(t.mean.index) == ["Smiling", "Male", "Bald", AVERAGE, "Average (label-consistent 3)", label]
    per_seed = [np.mean([0.7, 0.98]), np.mean([0.74, 0.96])]
    assert t.mean.at[label, "netA"] == pytest.approx(np.mean(per_seed))
    assert t.std.at[label, "netA"] == pytest.approx(np.std(per_seed, ddof=1))
    assert t.mean.at[label, "majority"] == pytest.approx(np.mean([0.6, 0.97]))
    assert f"| **{label}** |" in t.to_markdown()


def counted_metrics(n_samples: int = 200) -> pd.DataFrame:
    """:func:`long_metrics` plus High_Cheekbones and each row's label prevalence on ``n_samples`` test images."""
    rows = long_metrics()
    extra = rows[rows["target"] == "Male"].assign(target="High_Cheekbones")
    rows = pd.concat([rows, extra], ignore_index=True)
    prevalence = {"Smiling": 0.5, "Male": 0.3, "Bald": 0.02, "High_Cheekbones": 0.4}
    rate = rows[rows["metric"] == "accuracy"].assign(metric="positive_rate")
    rate["value"] = rate["target"].map(prevalence)
    return pd.concat([rows, rate], ignore_index=True).assign(n_samples=n_samples)


def test_test_positives_and_the_powered_and_label_consistent_averages():
    t = comparison_table(counted_metrics(), "celeba_small", "accuracy")
    assert list(t.mean.columns[:2]) == ["test positives", "test negatives"]
    assert t.mean.at["Bald", "test positives"] == 4 and t.mean.at["Bald", "test negatives"] == 196
    powered, consistent = "Average (powered 3)", "Average (label-consistent 3)"    # Bald: 4 positives < 20
    assert list(t.mean.index) == ["Smiling", "Male", "Bald", "High_Cheekbones", AVERAGE, powered, consistent]
    per_seed = [np.mean([0.9, 0.7, 0.7]), np.mean([0.92, 0.74, 0.74])]        # Smiling, Male, High_Cheekbones
    assert t.mean.at[powered, "netA"] == pytest.approx(np.mean(per_seed))
    assert t.mean.at[consistent, "netA"] == pytest.approx(np.mean([np.mean([0.9, 0.7, 0.98]), np.mean([0.92, 0.74, 0.96])]))
    md = t.to_markdown()
    assert "| Bald | 4 | 196 | 0.9700 |" in md                 # counts as integers, never bold
    assert not t.best_mask()["test negatives"].any()
    assert "Wu et al., CVPRW 2023" in " ".join(t.notes)
    # n_samples that is not the labelled count (a mixture: products are not whole): no counts, no powered row
    mixed = comparison_table(counted_metrics(n_samples=233), "celeba_small", "accuracy")
    assert "test positives" not in mixed.mean.columns and not any("powered" in str(r) for r in mixed.mean.index)


def test_a_run_found_twice_in_a_results_folder_is_an_error_naming_both(tmp_path, capsys):
    """An old copy of a finished run kept beside the new one (e.g. ``runs_old/``) must not be
    reported silently in its place: the report stops and names both folders."""
    import json

    from facebench.benchmarks.cli import main
    from facebench.benchmarks.records import finished_run_dirs

    for parent in ("runs", "runs_old"):
        run_dir = tmp_path / "suite" / parent / "resnet18--ferplus--s0"
        run_dir.mkdir(parents=True)
        (run_dir / "status.json").write_text(json.dumps({"state": "done"}))
    with pytest.raises(ValueError, match=r"resnet18--ferplus--s0 is there twice .*runs_old"):
        finished_run_dirs(tmp_path / "suite")
    assert main(["report", str(tmp_path / "suite")]) != 0
    err = capsys.readouterr().err
    assert "is there twice" in err and len(err.strip().splitlines()) == 1
