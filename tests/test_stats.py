"""The seed-aware test of benchmarks/stats.py against scipy / statsmodels oracles and hand
computations: t over seeds, the image term (two-way random-effects variance of a grand mean), the
influence functions (against a reweighted metric), Holm, and the comparison table built from a
leaderboard with and without per-image predictions."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from facebench.benchmarks.stats import (TESTED, UNTESTED_NO_VARIATION, UNTESTED_ONE_SEED, RunPredictions, holm,
                                        image_variance, influence_arrays, method_comparisons, paired_comparisons,
                                        rank_table, seed_interval, seed_summary, t_over_seeds)


def test_holm_matches_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005])
    assert np.allclose(holm(p), multipletests(p, method="holm")[1])
    with_nan = holm(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(with_nan[1]) and np.allclose(with_nan[[0, 2]], multipletests([0.01, 0.02], method="holm")[1])


def test_t_over_seeds_is_the_paired_t_test_without_an_image_term():
    d = np.array([[0.070, 0.077, -0.020], [0.01, 0.02, 0.015]])
    r = t_over_seeds(d)
    for row, p in zip(d, r["p"]):
        assert p == pytest.approx(sps.ttest_1samp(row, 0.0).pvalue)
    assert r["df"].tolist() == [2.0, 2.0]
    half = sps.t.ppf(0.975, 2) * d[1].std(ddof=1) / np.sqrt(3)
    assert r["half"][1] == pytest.approx(half)
    # the image term adds to the seed term
    with_images = t_over_seeds(d, np.array([1e-4, 1e-4]))
    assert with_images["se"][1] == pytest.approx(np.sqrt(d[1].var(ddof=1) / 3 + 1e-4))
    assert with_images["p"][1] > r["p"][1] and with_images["image"].all()


def test_one_seed_and_no_variation_are_untested():
    one = t_over_seeds(np.array([0.05]))
    assert not one["tested"] and np.isnan(one["p"])
    flat = t_over_seeds(np.array([0.01, 0.01 + 1e-9, 0.01]), tolerance=1e-6)
    assert not flat["tested"] and np.isnan(flat["p"])
    same = t_over_seeds(np.array([0.0, 0.0, 0.0]))
    assert same["tested"] and same["p"] == 1.0


def test_seed_interval_is_student_t():
    v = pd.Series([0.80, 0.82, 0.81, 0.85])
    s = seed_summary(v)
    half = sps.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert s["mean"] == pytest.approx(v.mean())
    assert s["ci95_high"] - s["mean"] == pytest.approx(half)
    assert s["seeds"] == 4
    assert np.isnan(seed_summary(pd.Series([0.8]))["std"])
    assert seed_interval([0.5, 0.5, 0.5])["half"] == 0.0        # a deterministic method: the seeds agree


def test_image_variance_is_the_two_way_random_effects_estimate():
    rng = np.random.default_rng(0)
    n, s = 50, 3
    d = rng.normal(size=(n, s)) + rng.normal(size=(n, 1)) + rng.normal(size=(1, s))
    # ANOVA of the images x seeds table: Var(grand mean) = (MS_seeds + MS_images - MS_E) / (N S)
    grand = d.mean()
    ms_seeds = n * ((d.mean(0) - grand) ** 2).sum() / (s - 1)
    ms_images = s * ((d.mean(1) - grand) ** 2).sum() / (n - 1)
    resid = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + grand
    ms_e = (resid ** 2).sum() / ((n - 1) * (s - 1))
    seed_term = d.mean(0).var(ddof=1) / s
    assert seed_term + float(image_variance(d[:, :, None])[0]) == pytest.approx((ms_seeds + ms_images - ms_e) / (n * s))
    # averaged over seeds first (S = 1): the plain variance of a mean
    assert float(image_variance(d.mean(1)[:, None, None])[0]) == pytest.approx(d.mean(1).var(ddof=1) / n)


def _metric(name, c, y, yhat, w):
    tp, fp = (w * y * yhat).sum(), (w * (1 - y) * yhat).sum()
    fn, tn = (w * y * (1 - yhat)).sum(), (w * (1 - y) * (1 - yhat)).sum()
    return {"accuracy": (tp + tn) / w.sum(), "recall": tp / (tp + fn), "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn), "balanced_accuracy": (tp / (tp + fn) + tn / (tn + fp)) / 2}[name]


@pytest.mark.parametrize("metric", ["accuracy", "recall", "precision", "f1", "balanced_accuracy"])
def test_influence_is_the_derivative_of_the_reweighted_metric(metric):
    rng = np.random.default_rng(1)
    n = 80
    y = (rng.random(n) < 0.3).astype(float)
    yhat = np.where(rng.random(n) < 0.8, y, 1 - y)
    c = (y == yhat)
    psi = influence_arrays(metric, c[:, None], np.ones((n, 1), bool), yhat[:, None].astype(int))[:, 0]
    eps = 1e-6
    for i in (0, 5, 17, 40):
        w = np.ones(n)
        w[i] += eps
        numeric = (_metric(metric, c, y, yhat, w) - _metric(metric, c, y, yhat, np.ones(n))) / eps
        assert psi[i] / n == pytest.approx(numeric, rel=1e-3, abs=1e-7)
    assert abs(psi.mean()) < 1e-12


def _board(values: dict[tuple[str, int, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "dataset": "d", "split": "test", "seed": s, "attribute": a, "class": "",
                          "accuracy": v} for (m, s, a), v in values.items()])


def test_comparisons_from_a_leaderboard_alone_test_the_per_seed_differences():
    # the example: +7.0 / +7.7 / -2.0 points flips sign across seeds
    base = {("b", s, a): 0.80 for s in range(3) for a in ("x", "y", "z")}
    a = {("a", 0, "x"): 0.870, ("a", 1, "x"): 0.877, ("a", 2, "x"): 0.780,
         ("a", 0, "y"): 0.90, ("a", 1, "y"): 0.91, ("a", 2, "y"): 0.905,
         ("a", 0, "z"): 0.80, ("a", 1, "z"): 0.80, ("a", 2, "z"): 0.80}
    df = method_comparisons(_board({**base, **a})).set_index("attribute")
    x = df.loc["x"]
    assert x["per_seed_differences"] == "+7.00 / +7.70 / -2.00"
    assert x["p_value"] == pytest.approx(sps.ttest_1samp([0.07, 0.077, -0.02], 0).pvalue)
    assert not x["significant"] and x["test"] == TESTED and x["variance"] == "seeds"
    assert df.loc["y", "difference"] == pytest.approx(0.105)
    assert df.loc["z", "test"] == TESTED and df.loc["z", "p_value"] == 1.0
    p = df.loc[["x", "y", "z"], "p_value"].to_numpy()
    assert np.allclose(df.loc[["x", "y", "z"], "p_holm"], multipletests(p, method="holm")[1])
    avg = df.loc["Average"]
    assert avg["difference"] == pytest.approx(np.mean([0.07 + 0.10, 0.077 + 0.11, -0.02 + 0.105]) / 3)
    assert avg["p_value"] == pytest.approx(sps.ttest_1samp(np.array([0.17, 0.187, 0.085]) / 3, 0).pvalue)
    # one common seed: reported, never tested
    one = method_comparisons(_board({k: v for k, v in {**base, **a}.items() if k[1] == 0}))
    assert set(one["test"]) == {UNTESTED_ONE_SEED} and not one["significant"].any()


def test_deterministic_methods_are_not_tested_on_seeds_alone():
    board = _board({**{("a", s, "x"): 0.9 for s in range(3)}, **{("b", s, "x"): 0.8 for s in range(3)},
                    **{("a", s, "y"): 0.7 for s in range(3)}, **{("b", s, "y"): 0.7 for s in range(3)}})
    df = method_comparisons(board).set_index("attribute")
    assert df.loc["x", "test"] == UNTESTED_NO_VARIATION and not df.loc["x", "significant"]


def _runs(n=400, seeds=(0, 1, 2), seed=0):
    """Two methods on 2 attributes: a is right 90% of the time on both; b as often on x, 60% on y."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"img{i:04d}.jpg" for i in range(n)])
    labels = (rng.random((n, 2)) < 0.4).astype(int)
    out, truth = [], {}
    for s in seeds:
        for method, skill in (("a", [0.9, 0.9]), ("b", [0.9, 0.6])):
            right = rng.random((n, 2)) < np.array(skill)
            pred = np.where(right, labels, 1 - labels)
            perm = rng.permutation(n)      # records come in any order: alignment is by id
            out.append(RunPredictions(method, "d", s, ids[perm], right[perm], np.ones((n, 2), bool), ["x", "y"], pred[perm]))
            truth[(method, s)] = right
    return out, truth, labels


def test_comparisons_with_predictions_add_the_image_term_and_find_the_real_difference():
    runs, truth, labels = _runs()
    df = paired_comparisons(runs).set_index("attribute")
    assert set(df["variance"]) == {"seeds + images"}
    assert df.loc["y", "significant"] and df.loc["y", "winner"] == "a"
    assert not df.loc["x", "significant"]
    diffs = [truth[("a", s)][:, 1].mean() - truth[("b", s)][:, 1].mean() for s in range(3)]
    assert df.loc["y", "difference"] == pytest.approx(np.mean(diffs))
    # the variance: seed term + image term of the aligned per-image accuracy differences
    delta = np.stack([truth[("a", s)][:, 1].astype(float) - truth[("b", s)][:, 1] for s in range(3)], axis=1)
    se = np.sqrt(np.var(diffs, ddof=1) / 3 + float(image_variance(delta[:, :, None])[0]))
    assert df.loc["y", "t"] == pytest.approx(np.mean(diffs) / se)
    # positives and negatives come from the predictions (labels recovered from the decisions)
    assert df.loc["x", "positives"] == labels[:, 0].sum() and df.loc["x", "negatives"] == len(labels) - labels[:, 0].sum()


def test_rank_table_counts_significant_wins_and_losses():
    runs, _, _ = _runs()
    comp = paired_comparisons(runs)
    board = pd.DataFrame({"method": ["a", "a", "b", "b"], "dataset": "d", "split": "test", "seed": 0,
                          "attribute": ["x", "y", "x", "y"], "class": "", "accuracy": [0.9, 0.9, 0.89, 0.6]})
    ranks = rank_table(board, comp).set_index("method")
    assert ranks.loc["a", "mean_rank"] == 1.0 and ranks.loc["b", "mean_rank"] == 2.0
    assert ranks.loc["a", "wins"] == 1 and ranks.loc["b", "losses"] == 1 and ranks.loc["a", "losses"] == 0
