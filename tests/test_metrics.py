"""TaskMetrics / evaluate / tune_thresholds against sklearn and hand computations, and DDP (two
gloo processes on CPU) against one process."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

from facebench.core.tasks import Target, TaskSpec, age_bins
from facebench.core.agreement import add_rater, loo_majority_agreement
from facebench.lightning_modules.metrics import TaskMetrics, bin_centres, evaluate, summarize, tune_thresholds

from gloo import run_on_gloo

AGE_EDGES = (0, 10, 20, 30, 40)


def mixed_task() -> TaskSpec:
    return TaskSpec((
        Target("Smiling"),
        Target("Male", has_votes=True),
        Target("emotion", "multiclass", ("happy", "sad", "angry", "neutral"), has_votes=True,
               vote_classes=("happy", "sad", "angry", "neutral", "unknown")),
        Target("age", "ordinal", age_bins(AGE_EDGES), bin_edges=AGE_EDGES),
        Target("ethnicity", "multilabel", ("a", "b", "c")),
    ), name="mixed")


def make_predictions(task: TaskSpec, n: int, seed: int = 0) -> dict[str, np.ndarray | dict]:
    """Scores correlated with random labels (some missing), rater votes and exact ages."""
    rng = np.random.default_rng(seed)
    probs = np.zeros((n, task.n_logits), np.float32)
    labels = np.zeros((n, task.n_label_slots), np.int64)
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        if t.kind in ("binary", "multilabel"):
            k = ls.stop - ls.start
            y = rng.integers(0, 2, (n, k))
            probs[:, ls] = np.clip(0.35 * y + 0.65 * rng.random((n, k)), 0, 1)
            y[rng.random((n, k)) < 0.05] = -1
            labels[:, ys] = y
        else:
            y = rng.integers(0, t.n_classes, n)
            z = rng.normal(size=(n, t.n_classes))
            z[np.arange(n), y] += 1.2
            probs[:, ls] = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            y[rng.random(n) < 0.05] = -1
            labels[:, ys.start] = y
    votes = {"Male": rng.multinomial(5, [0.4, 0.6], n), "emotion": rng.multinomial(10, [0.4, 0.25, 0.15, 0.15, 0.05], n)}
    ages = rng.uniform(0, 55, n)
    ages[rng.random(n) < 0.1] = np.nan
    return {"probs": probs, "labels": labels, "votes": votes, "ages": ages}


@pytest.fixture(scope="module")
def data():
    task = mixed_task()
    d = make_predictions(task, 400)
    table = evaluate(task, d["probs"], d["labels"], votes=d["votes"], ages=d["ages"])
    return task, d, table


def value(table: pd.DataFrame, target: str, metric: str, cls: str = "") -> float:
    sel = table[(table["target"] == target) & (table["metric"] == metric) & (table["class"] == cls)]
    assert len(sel) == 1, (target, metric, cls, len(sel))
    return float(sel["value"].iloc[0])


def test_binary_metrics_match_sklearn(data):
    task, d, table = data
    for name, lc, yc in [("Smiling", 0, 0), ("Male", 1, 1)]:
        keep = d["labels"][:, yc] >= 0
        y, p = d["labels"][keep, yc], d["probs"][keep, lc]
        hard = (p >= 0.5).astype(int)
        expected = {"accuracy": skm.accuracy_score(y, hard), "balanced_accuracy": skm.balanced_accuracy_score(y, hard),
                    "precision": skm.precision_score(y, hard), "recall": skm.recall_score(y, hard),
                    "f1": skm.f1_score(y, hard), "cohen_kappa": skm.cohen_kappa_score(y, hard),
                    "auroc": skm.roc_auc_score(y, p), "average_precision": skm.average_precision_score(y, p),
                    "positive_rate": y.mean()}
        for metric, want in expected.items():
            assert value(table, name, metric) == pytest.approx(want, abs=1e-6), (name, metric)


def test_multilabel_columns_are_binary_metrics(data):
    task, d, table = data
    ls, ys = task.logit_slices[4], task.label_slices[4]
    for k, cls in enumerate(("a", "b", "c")):
        keep = d["labels"][:, ys.start + k] >= 0
        y, p = d["labels"][keep, ys.start + k], d["probs"][keep, ls.start + k]
        assert value(table, "ethnicity", "auroc", cls) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
        assert value(table, "ethnicity", "f1", cls) == pytest.approx(skm.f1_score(y, p >= 0.5), abs=1e-6)


def hand_ece(y: np.ndarray, p: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error by hand: bins (k/n, (k+1)/n], |frequency - confidence| weighted by size."""
    total = 0.0
    for k in range(n_bins):
        sel = (p > k / n_bins) & (p <= (k + 1) / n_bins) if k else (p <= 1 / n_bins)
        if sel.any():
            total += sel.sum() / len(p) * abs(y[sel].mean() - p[sel].mean())
    return total


def test_calibration_error(data):
    task, d, table = data
    keep = d["labels"][:, 0] >= 0
    assert value(table, "Smiling", "ece") == pytest.approx(hand_ece(d["labels"][keep, 0], d["probs"][keep, 0]), abs=1e-6)
    ls, ys = task.logit_slices[2], task.label_slices[2]
    keep = d["labels"][:, ys.start] >= 0
    p, y = d["probs"][keep, ls], d["labels"][keep, ys.start]
    assert value(table, "emotion", "ece") == pytest.approx(hand_ece((p.argmax(1) == y).astype(float), p.max(1)), abs=1e-6)


def test_multiclass_metrics_match_sklearn(data):
    task, d, table = data
    ls, ys = task.logit_slices[2], task.label_slices[2]
    keep = d["labels"][:, ys.start] >= 0
    y, p = d["labels"][keep, ys.start], d["probs"][keep, ls]
    hard = p.argmax(1)
    assert value(table, "emotion", "accuracy") == pytest.approx(skm.accuracy_score(y, hard))
    assert value(table, "emotion", "balanced_accuracy") == pytest.approx(skm.balanced_accuracy_score(y, hard))
    assert value(table, "emotion", "mean_class_precision") == pytest.approx(
        skm.precision_score(y, hard, average="macro", zero_division=0))
    assert value(table, "emotion", "cohen_kappa") == pytest.approx(skm.cohen_kappa_score(y, hard))
    assert value(table, "emotion", "auroc") == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-6)
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, hard, labels=range(4))
    cm = skm.confusion_matrix(y, hard, labels=range(4))
    for j, c in enumerate(task.targets[2].classes):
        assert value(table, "emotion", "precision", c) == pytest.approx(prec[j])
        assert value(table, "emotion", "recall", c) == pytest.approx(rec[j])
        assert value(table, "emotion", "f1", c) == pytest.approx(f1[j])
        assert value(table, "emotion", "support", c) == support[j]
        assert value(table, "emotion", "auroc", c) == pytest.approx(skm.roc_auc_score(y == j, p[:, j]), abs=1e-6)
        for k, pred_cls in enumerate(task.targets[2].classes):
            assert value(table, "emotion", f"confusion:{pred_cls}", c) == cm[j, k]


def test_never_predicted_class_counts_zero_precision():
    task = TaskSpec((Target("t", "multiclass", ("a", "b", "c")),))
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.eye(3, dtype=np.float32)[[0, 1, 1, 1, 1, 0]]       # class c is never predicted
    table = evaluate(task, probs, y[:, None])
    assert value(table, "t", "mean_class_precision") == pytest.approx(
        skm.precision_score(y, probs.argmax(1), average="macro", zero_division=0))
    assert np.isnan(value(table, "t", "precision", "c"))


def test_ordinal_age_metrics(data):
    task, d, table = data
    t = task.targets[3]
    ls, ys = task.logit_slices[3], task.label_slices[3]
    keep = d["labels"][:, ys.start] >= 0
    y, hard = d["labels"][keep, ys.start], d["probs"][keep, ls].argmax(1)
    assert value(table, "age", "accuracy_within_1") == pytest.approx(np.mean(np.abs(hard - y) <= 1))
    assert value(table, "age", "mae_bins") == pytest.approx(np.mean(np.abs(hard - y)))
    np.testing.assert_allclose(bin_centres(t), [5, 15, 25, 35, 45])      # open last bin: previous width
    # exact ages against the centre of the predicted bin, over every sample with a known age
    hard_all = d["probs"][:, ls].argmax(1)
    known = np.isfinite(d["ages"])
    assert value(table, "age", "mae_years") == pytest.approx(np.mean(np.abs(bin_centres(t)[hard_all] - d["ages"])[known]), rel=1e-5)


def test_operating_point_matches_sklearn_roc(data):
    task, d, table = data
    ls, ys = task.logit_slices[2], task.label_slices[2]
    keep = d["labels"][:, ys.start] >= 0
    y, p = d["labels"][keep, ys.start], d["probs"][keep, ls]
    thresholds = []
    for j, c in enumerate(task.targets[2].classes):
        fpr, tpr, _ = skm.roc_curve(y == j, p[:, j])
        assert value(table, "emotion", "tpr@fpr=0.01", c) == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-6)
        th = value(table, "emotion", "threshold@fpr=0.01", c)
        positive = p[:, j] >= th
        assert value(table, "emotion", "tpr@fpr=0.01", c) == pytest.approx(positive[y == j].mean(), abs=1e-6)
        assert value(table, "emotion", "fpr@fpr=0.01", c) == pytest.approx(positive[y != j].mean(), abs=1e-6)
        assert positive[y != j].mean() <= 0.01
        thresholds.append(th)
    unlabelled = ~(p >= np.array(thresholds)[None, :]).any(1)
    assert value(table, "emotion", "unlabelled@fpr=0.01") == pytest.approx(unlabelled.mean())


def test_agreement_rows(data):
    task, d, table = data
    votes = d["votes"]["emotion"]
    pred = d["probs"][:, task.logit_slices[2]].argmax(1)
    assert value(table, "emotion", "fleiss_kappa") == pytest.approx(statsmodels_fleiss_kappa(votes), abs=1e-9)
    assert value(table, "emotion", "fleiss_kappa_with_model") == pytest.approx(
        statsmodels_fleiss_kappa(add_rater(votes, pred).numpy()), abs=1e-9)
    loo = loo_majority_agreement(votes, pred)
    assert value(table, "emotion", "rater_accuracy_loo") == pytest.approx(loo["rater_accuracy"])
    assert value(table, "emotion", "model_accuracy_loo") == pytest.approx(loo["model_accuracy"])
    assert value(table, "emotion", "rater_recall_loo", "unknown") == pytest.approx(loo["rater_recall"][4])
    # a binary target: votes [no, yes], the model's vote at threshold 0.5
    male_pred = (d["probs"][:, 1] >= 0.5).astype(int)
    assert value(table, "Male", "fleiss_kappa_with_model") == pytest.approx(
        statsmodels_fleiss_kappa(add_rater(d["votes"]["Male"], male_pred).numpy()), abs=1e-9)


def scores_at(y: np.ndarray, p: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and balanced accuracy of ``p >= t`` for every t (by hand, vectorised)."""
    pred = p[None, :] >= thresholds[:, None]
    tpr, tnr = (pred & (y == 1)).sum(1) / (y == 1).sum(), (~pred & (y == 0)).sum(1) / (y == 0).sum()
    return {"accuracy": (pred == (y == 1)).mean(1), "balanced_accuracy": (tpr + tnr) / 2}


def test_tuned_thresholds_maximise_balanced_accuracy_on_val():
    task = mixed_task()
    val, test = make_predictions(task, 300, seed=1), make_predictions(task, 300, seed=2)
    cols, ycols = task.binary_columns()
    for criterion in ("balanced_accuracy", "accuracy"):
        tuned = tune_thresholds(task, val["probs"], val["labels"], criterion)
        for j, (lc, yc) in enumerate(zip(cols, ycols)):
            keep = val["labels"][:, yc] >= 0
            y, p = val["labels"][keep, yc], val["probs"][keep, lc]
            best = scores_at(y, p, np.append(np.unique(p), 1.1))[criterion].max()   # every distinct decision
            assert scores_at(y, p, np.array([tuned[j]]))[criterion][0] == pytest.approx(best), (criterion, j)
            assert scores_at(y, p, np.array([tuned[j]]))["balanced_accuracy"][0] == pytest.approx(
                skm.balanced_accuracy_score(y, p >= tuned[j]))
    tuned = tune_thresholds(task, val["probs"], val["labels"])
    table = evaluate(task, test["probs"], test["labels"], tuned_thresholds=tuned)
    keep = test["labels"][:, 0] >= 0
    y, p = test["labels"][keep, 0], test["probs"][keep, 0]
    assert value(table, "Smiling", "threshold@tuned") == pytest.approx(tuned[0], abs=1e-6)
    assert value(table, "Smiling", "accuracy@tuned") == pytest.approx(skm.accuracy_score(y, p >= np.float32(tuned[0])))
    assert value(table, "Smiling", "balanced_accuracy@tuned") == pytest.approx(skm.balanced_accuracy_score(y, p >= np.float32(tuned[0])))


def test_tune_thresholds_single_class_and_bad_criterion():
    task = TaskSpec.binary_attributes(["a"])
    assert tune_thresholds(task, np.array([[0.2], [0.9]]), np.array([[1], [1]]))[0] == 0.5
    with pytest.raises(ValueError, match="criterion"):
        tune_thresholds(task, np.array([[0.2]]), np.array([[1]]), criterion="f2")


def test_base_module_interface_and_summary(data):
    """What facebench.lightning_modules.base uses: TaskMetrics(task, auroc=True), update, compute, compute_summary, reset."""
    task, d, table = data
    m = TaskMetrics(task, auroc=True)
    m.update(torch.as_tensor(d["probs"]), torch.as_tensor(d["labels"]))
    rows = m.compute()
    assert rows and set(rows[0]) == {"target", "class", "metric", "value"}
    summary = m.compute_summary()
    assert summary["mean_accuracy"] == pytest.approx(summarize(table, task)["mean_accuracy"])
    level = table[(table["metric"] == "accuracy") & ((table["class"] == "") | (table["target"] == "ethnicity"))]
    assert summary["mean_accuracy"] == pytest.approx(level["value"].mean())
    assert not any(k.startswith("mean_confusion") or "@" in k for k in summary)
    m.reset()
    m.update(torch.as_tensor(d["probs"][:50]), torch.as_tensor(d["labels"][:50]))
    assert m.compute_summary()["mean_accuracy"] != pytest.approx(summary["mean_accuracy"])


# ------------------------------------------------------------------------------------------------
# DDP: two gloo processes on CPU, each updating on its part, give the single-process values
# ------------------------------------------------------------------------------------------------
def _task_rows_on_rank(rank: int, world: int, d: dict) -> list[dict]:
    task = mixed_task()
    idx = np.array_split(np.arange(len(d["probs"])), [130])[rank]          # unequal parts: 130 / 270
    metrics = TaskMetrics(task, extra_thresholds={"tuned": torch.as_tensor(d["tuned"])})
    for part in np.array_split(idx, 3):
        metrics.update(torch.as_tensor(d["probs"][part]), torch.as_tensor(d["labels"][part]),
                       votes={k: torch.as_tensor(v[part]) for k, v in d["votes"].items()},
                       ages=torch.as_tensor(d["ages"][part]))
    return metrics.compute()


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(data, tmp_path):
    task, d, _ = data
    tuned = tune_thresholds(task, d["probs"], d["labels"])
    ddp = pd.DataFrame(run_on_gloo(_task_rows_on_rank, {**d, "tuned": tuned}, tmp_path=tmp_path))
    single = evaluate(task, d["probs"], d["labels"], tuned_thresholds=tuned, votes=d["votes"], ages=d["ages"], chunk=64)
    merged = single.merge(ddp, on=["target", "class", "metric"], suffixes=("_one", "_ddp"), how="outer")
    assert len(merged) == len(single) == len(ddp)
    assert {"fleiss_kappa", "rater_accuracy_loo", "mae_years", "auroc", "ece", "accuracy@tuned", "tpr@fpr=0.01"} <= set(merged["metric"])
    np.testing.assert_allclose(merged["value_ddp"], merged["value_one"], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_records_carry_exact_ages_for_every_binned_target(tmp_path):
    """write_records saves ``age`` (extra["age"], UTKFace-style: two binnings of one age) and
    ``age/<target>`` (extra[<target>], folder-style); metrics.csv gets mae_years for each target."""
    from types import SimpleNamespace

    from facebench.benchmarks.records import load_predictions, write_records
    from facebench.datamodules.table import SampleTable
    from facebench.lightning_modules.registry import create_method

    coarse, fine = (0, 20, 40), (0, 10, 20, 30, 40)
    task = TaskSpec((Target("age_coarse", "ordinal", age_bins(coarse), bin_edges=coarse),
                     Target("age_fine", "ordinal", age_bins(fine), bin_edges=fine),
                     Target("beard", "ordinal", age_bins((0, 10, 20)), bin_edges=(0, 10, 20))), name="ages")
    rng = np.random.default_rng(5)
    n = 60
    age, beard = rng.uniform(0, 60, n), rng.uniform(0, 30, n)
    labels = np.stack([np.digitize(age, coarse) - 1, np.digitize(age, fine) - 1, np.digitize(beard, (0, 10, 20)) - 1], 1)
    probs = rng.dirichlet(np.ones(3 + 5 + 3), n).astype(np.float32)
    probs = np.concatenate([probs[:, :3] / probs[:, :3].sum(1, keepdims=True), probs[:, 3:8] / probs[:, 3:8].sum(1, keepdims=True),
                            probs[:, 8:] / probs[:, 8:].sum(1, keepdims=True)], 1)
    table = SampleTable(paths=[f"{i}.jpg" for i in range(n)], labels=labels, extra={"age": age, "beard": beard})
    index = rng.permutation(n)
    cfg = {"suite": "t", "run_id": "r", "method_key": "m", "method": {"name": "majority"}, "dataset_key": "d",
           "dataset": {"datamodule": "utk"}, "seed": 0}
    write_records(tmp_path, cfg, create_method("majority", task), SimpleNamespace(tables={"test": table}),
                  {"test": {"probs": probs[index], "labels": labels[index], "index": index}}, timing={})
    saved = load_predictions(tmp_path, "test")
    np.testing.assert_allclose(saved["age"], age[index])
    np.testing.assert_allclose(saved["age/beard"], beard[index])
    metrics = pd.read_csv(tmp_path / "metrics.csv", keep_default_na=False)
    mae = metrics[metrics["metric"] == "mae_years"].set_index("target")["value"]
    for name, exact, sl in (("age_coarse", age, slice(0, 3)), ("age_fine", age, slice(3, 8)), ("beard", beard, slice(8, 11))):
        centres = bin_centres(task.target(name))
        assert mae[name] == pytest.approx(np.mean(np.abs(centres[probs[:, sl].argmax(1)] - exact)), rel=1e-5), name


def test_single_binary_target_and_ties_at_the_threshold():
    """One binary target (torchmetrics' multilabel classes refuse num_labels=1 by default), and a
    score equal to the threshold counts as positive (p >= t, as TaskSpec.predictions)."""
    task = TaskSpec.binary_attributes(["same"])
    probs, labels = np.array([[0.5], [0.5], [0.2], [0.9]], np.float32), np.array([[1], [0], [0], [-1]])
    table = evaluate(task, probs, labels)
    keep = labels[:, 0] >= 0
    assert value(table, "same", "recall") == 1.0 and value(table, "same", "accuracy") == pytest.approx(2 / 3)
    assert value(table, "same", "auroc") == pytest.approx(skm.roc_auc_score(labels[keep, 0], probs[keep, 0]))
    assert task.predictions(torch.as_tensor(probs))[:, 0].tolist() == [1, 1, 0, 1]


def test_a_binary_target_without_any_label_in_the_split_is_nan_not_a_crash():
    """A partial-label split (a mixture's validation batches) where no image carries one target's
    label: its AUROC and average precision are NaN, the others' are what sklearn gives."""
    task = TaskSpec.binary_attributes(["a", "b", "c"])
    rng = np.random.default_rng(0)
    probs = torch.as_tensor(rng.random((40, 3)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 2, (40, 3)))
    labels[:, 1] = -1                                          # no image has b's label
    labels[:20, 2] = -1                                        # c: half of them
    m = TaskMetrics(task)
    m.update(probs[:25], labels[:25])
    m.update(probs[25:], labels[25:])
    rows = pd.DataFrame(m.compute()).set_index(["target", "metric"])["value"]
    assert np.isnan(rows[("b", "auroc")]) and np.isnan(rows[("b", "average_precision")])
    for j, name in ((0, "a"), (2, "c")):
        keep = labels[:, j].numpy() >= 0
        y, p = labels[keep, j].numpy(), probs[keep, j].numpy()
        assert rows[(name, "auroc")] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)
        assert rows[(name, "average_precision")] == pytest.approx(skm.average_precision_score(y, p), abs=1e-6)


def test_a_multiclass_target_without_any_label_in_the_split_has_no_rows_and_no_crash():
    """The operating point (and every other metric) of a multi-class target that no image of the
    split is labelled with: no rows, where a binary target beside it is still scored."""
    task = TaskSpec([Target("emotion", "multiclass", ("a", "b", "c")), Target("Smiling", "binary")])
    m = TaskMetrics(task, operating_fpr=0.1)
    probs = torch.cat([torch.softmax(torch.randn(16, 3), 1), torch.rand(16, 1)], 1)
    labels = torch.stack([torch.full((16,), -1), torch.randint(0, 2, (16,))], 1)
    m.update(probs, labels)
    rows = pd.DataFrame(m.compute())
    assert not rows[(rows["target"] == "emotion") & rows["metric"].str.contains("fpr")].shape[0]
    assert rows.set_index(["target", "metric"])["value"][("Smiling", "accuracy")] == pytest.approx(
        float(((probs[:, 3] >= 0.5).long() == labels[:, 1]).float().mean()))
