"""Significance tests and seed aggregates against scipy / statsmodels oracles."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from facebench.benchmarks.stats import (RunPredictions, holm, mcnemar_test, paired_comparisons, rank_table,
                              seed_summary)


@pytest.mark.parametrize("b,c", [(3, 9), (0, 5), (12, 30), (40, 25), (7, 7)])
def test_mcnemar_matches_statsmodels(b, c):
    table = [[50, b], [c, 40]]
    exact = b + c < 25
    ref = sm_mcnemar(table, exact=exact, correction=True)
    stat, p = mcnemar_test(b, c)
    assert p == pytest.approx(ref.pvalue, abs=1e-12)
    assert stat == pytest.approx(ref.statistic, abs=1e-12)


def test_holm_matches_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005])
    assert np.allclose(holm(p), multipletests(p, method="holm")[1])
    with_nan = holm(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(with_nan[1]) and np.allclose(with_nan[[0, 2]], multipletests([0.01, 0.02], method="holm")[1])


def test_seed_summary_confidence_interval():
    v = pd.Series([0.80, 0.82, 0.81, 0.85])
    s = seed_summary(v)
    half = sps.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert s["mean"] == pytest.approx(v.mean())
    assert s["ci95_high"] - s["mean"] == pytest.approx(half)
    assert s["seeds"] == 4
    assert np.isnan(seed_summary(pd.Series([0.8]))["std"])


def _runs(n=400, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"img{i:04d}.jpg" for i in range(n)])
    valid = np.ones((n, 2), dtype=bool)
    # method a: 90% right on both attributes; method b: 90% on attr0, 60% on attr1
    a = rng.random((n, 2)) < 0.9
    b0 = a[:, 0].copy()
    b0[np.flatnonzero(a[:, 0])[:10]] = False      # 10 images only a gets right ...
    b0[np.flatnonzero(~a[:, 0])[:10]] = True      # ... and 10 only b gets right: no difference
    b = np.stack([b0, rng.random(n) < 0.6], axis=1)
    perm = rng.permutation(n)     # b's records come in another order: alignment is by id
    ra = RunPredictions("a", "d", 0, ids, a, valid, ["x", "y"])
    rb = RunPredictions("b", "d", 0, ids[perm], b[perm], valid[perm], ["x", "y"])
    return ra, rb, a, b


def test_paired_comparisons_find_the_real_difference_only():
    ra, rb, a, b = _runs()
    df = paired_comparisons([ra, rb], n_boot=300)
    mc = df[df["test"] == "mcnemar"].set_index("attribute")
    assert not mc.loc["x", "significant"]
    assert mc.loc["y", "significant"] and mc.loc["y", "winner"] == "a"
    # the discordant counts are those of the aligned images
    assert mc.loc["y", "a_only_correct"] == int((a[:, 1] & ~b[:, 1]).sum())
    boot = df[df["test"] == "paired_bootstrap"].iloc[0]
    assert boot["difference"] == pytest.approx(a.mean(0).mean() - b.mean(0).mean())
    assert boot["ci95_low"] > 0 and boot["significant"] and boot["winner"] == "a"


def test_rank_table_counts_wins_and_losses():
    ra, rb, _, _ = _runs()
    comp = paired_comparisons([ra, rb], n_boot=100)
    board = pd.DataFrame({"method": ["a", "a", "b", "b"], "dataset": "d", "split": "test", "seed": 0,
                          "attribute": ["x", "y", "x", "y"], "class": "", "accuracy": [0.9, 0.9, 0.89, 0.6]})
    ranks = rank_table(board, comp).set_index("method")
    assert ranks.loc["a", "mean_rank"] == 1.0 and ranks.loc["b", "mean_rank"] == 2.0
    assert ranks.loc["a", "wins"] == 1 and ranks.loc["b", "losses"] == 1 and ranks.loc["a", "losses"] == 0
