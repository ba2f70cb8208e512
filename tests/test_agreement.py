"""Rater agreement: Fleiss' kappa (Fleiss 1971 example, statsmodels), the leave-one-rater-out human
ceiling (brute force over individual raters), the DDP-safe Metric objects and the FER+ analysis."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

from facebench.benchmarks.analyses import run_analysis
from facebench.benchmarks.analyses.rater_agreement import agreement_table
from facebench.core.agreement import add_rater, category_kappas, fleiss_kappa, loo_majority_agreement
from facebench.lightning_modules.metrics import FleissKappa, RaterAgreement

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FERPLUS = DATA / "ferplus"
REPO = Path(__file__).resolve().parents[1]

# Fleiss (1971), "Measuring nominal scale agreement among many raters", the worked example: 30
# patients, each diagnosed by 6 of the psychiatrists into one of 5 categories (1 depression,
# 2 personality disorder, 3 schizophrenia, 4 neurosis, 5 other); one row per patient, the 6
# diagnoses given (the same data as R irr's ``diagnoses``).
FLEISS_1971_DIAGNOSES = np.array([
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5], [2, 2, 2, 4, 4, 4],
    [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4], [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5],
    [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4], [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5],
    [3, 3, 3, 3, 3, 5], [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4], [1, 4, 4, 4, 4, 5],
    [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4], [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5]])
#: Published: overall kappa 0.430 and the category kappas (depression .245, personality disorder
#: .245, schizophrenia .520, neurosis .471, other .566).
FLEISS_1971_KAPPA = 0.430
FLEISS_1971_CATEGORY_KAPPAS = [0.245, 0.245, 0.520, 0.471, 0.566]


def fleiss_1971_counts() -> np.ndarray:
    counts, _ = aggregate_raters(FLEISS_1971_DIAGNOSES - 1, n_cat=5)
    return counts


def test_fleiss_1971_worked_example():
    counts = fleiss_1971_counts()
    assert counts.shape == (30, 5) and (counts.sum(1) == 6).all()
    assert round(fleiss_kappa(counts), 3) == FLEISS_1971_KAPPA
    np.testing.assert_allclose(category_kappas(counts), FLEISS_1971_CATEGORY_KAPPAS, atol=5e-4)
    assert fleiss_kappa(counts) == pytest.approx(statsmodels_fleiss_kappa(counts), abs=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fleiss_kappa_matches_statsmodels(seed: int):
    rng = np.random.default_rng(seed)
    n_raters, n_cat = int(rng.integers(2, 12)), int(rng.integers(2, 8))
    counts = rng.multinomial(n_raters, rng.dirichlet(np.ones(n_cat) * 0.7), size=int(rng.integers(5, 300)))
    expected = statsmodels_fleiss_kappa(counts)
    assert fleiss_kappa(counts) == pytest.approx(expected, abs=1e-9)
    assert fleiss_kappa(torch.as_tensor(counts)) == pytest.approx(expected, abs=1e-9)
    # the overall kappa is the p_j q_j weighted mean of the category kappas (Fleiss 1971)
    p = counts.sum(0) / counts.sum()
    per = category_kappas(counts)
    used = ~np.isnan(per)
    assert np.sum(per[used] * (p * (1 - p))[used]) / np.sum((p * (1 - p))[used]) == pytest.approx(expected, abs=1e-9)


def test_unequal_ratings_generalisation():
    """Unequal numbers of ratings: Fleiss-Levin-Paik's form, written out per subject here."""
    rng = np.random.default_rng(3)
    counts = np.stack([rng.multinomial(int(rng.integers(2, 9)), [0.5, 0.3, 0.2]) for _ in range(80)])
    counts = np.vstack([counts, [[1, 0, 0]]])                 # a single rating: no agreement information
    kept = counts[counts.sum(1) >= 2]
    n = kept.sum(1)
    n_bar, subjects = n.mean(), len(kept)
    p = kept.sum(0) / n.sum()
    per = [1 - sum(kept[i, j] * (n[i] - kept[i, j]) / n[i] for i in range(subjects)) / (subjects * (n_bar - 1) * p[j] * (1 - p[j]))
           for j in range(3)]
    np.testing.assert_allclose(category_kappas(counts), per, atol=1e-12)
    overall = 1 - sum(kept[i, j] * (n[i] - kept[i, j]) / n[i] for i in range(subjects) for j in range(3)) \
        / (subjects * (n_bar - 1) * np.sum(p * (1 - p)))
    assert fleiss_kappa(counts) == pytest.approx(overall, abs=1e-12)


def test_kappa_edge_cases_and_errors():
    assert fleiss_kappa(np.array([[3, 0], [0, 3]])) == pytest.approx(1.0)
    assert np.isnan(fleiss_kappa(np.array([[3, 0], [3, 0]])))          # one category only: undefined
    assert np.isnan(category_kappas(np.array([[3, 0, 0], [0, 3, 0]]))[2])
    with pytest.raises(ValueError, match="non-negative integers"):
        fleiss_kappa(np.array([[2, -1], [1, 1]]))
    with pytest.raises(ValueError, match="subjects, classes"):
        fleiss_kappa(np.array([1, 2, 3]))


def brute_force_loo(counts: np.ndarray, predictions: np.ndarray | None = None) -> dict[str, Fraction]:
    """Expand the table into individual raters; leave each out; exact fractions, ties credited 1/k."""
    rater = model = Fraction(0)
    total = 0
    for i, row in enumerate(counts):
        if row.sum() < 2:
            continue
        votes = [c for c, k in enumerate(row) for _ in range(int(k))]
        for r, vote in enumerate(votes):
            others = np.bincount([v for q, v in enumerate(votes) if q != r], minlength=len(row))
            tied = np.flatnonzero(others == others.max())
            rater += Fraction(int(vote in tied), len(tied))
            if predictions is not None:
                model += Fraction(int(predictions[i] in tied), len(tied))
            total += 1
    return {"rater": rater / total, "model": model / total}


@pytest.mark.parametrize("seed", range(4))
def test_leave_one_rater_out_matches_brute_force(seed: int):
    rng = np.random.default_rng(seed)
    counts = np.stack([rng.multinomial(int(rng.integers(1, 8)), [0.4, 0.3, 0.2, 0.1]) for _ in range(60)])
    pred = rng.integers(0, 4, len(counts))
    got = loo_majority_agreement(counts, pred)
    want = brute_force_loo(counts, pred)
    assert got["rater_accuracy"] == pytest.approx(float(want["rater"]), abs=1e-12)
    assert got["model_accuracy"] == pytest.approx(float(want["model"]), abs=1e-12)


def test_leave_one_rater_out_ties():
    # two raters who disagree: each one's "others" is the other rater -> 0 agreement
    assert loo_majority_agreement(np.array([[1, 1, 0]]))["rater_accuracy"] == 0.0
    # [2, 1, 1]: a rater of class 0 faces a three-way tie (credit 1/3, twice); the others face class 0
    res = loo_majority_agreement(np.array([[2, 1, 1]]), np.array([0]))
    assert res["rater_accuracy"] == pytest.approx(2 * (1 / 3) / 4)
    # the model (class 0) matches the 1/3 share of the ties and the two clear majorities
    assert res["model_accuracy"] == pytest.approx((2 * (1 / 3) + 2) / 4)
    # per class: others' majority is class 1 with mass 2/3 (the ties), and a class-1 rater never faces it
    assert res["rater_recall"][1] == pytest.approx(0.0)
    assert res["rater_recall"][0] == pytest.approx((2 / 3) / (2 / 3 + 2))


def test_metric_objects_accumulate_like_one_batch():
    rng = np.random.default_rng(7)
    counts = torch.as_tensor(rng.multinomial(5, [0.6, 0.3, 0.1], size=200))
    pred = torch.as_tensor(rng.integers(0, 3, 200))
    fk, fk_model, loo = FleissKappa(3), FleissKappa(3), RaterAgreement(3)
    for s in range(0, 200, 37):
        fk.update(counts[s:s + 37])
        fk_model.update(counts[s:s + 37], pred[s:s + 37])
        loo.update(counts[s:s + 37], pred[s:s + 37])
    kappa, per = fk.compute()
    assert kappa == pytest.approx(statsmodels_fleiss_kappa(counts.numpy()), abs=1e-9)
    np.testing.assert_allclose(per, category_kappas(counts))
    assert fk_model.compute()[0] == pytest.approx(statsmodels_fleiss_kappa(add_rater(counts, pred).numpy()), abs=1e-9)
    whole = loo_majority_agreement(counts, pred)
    got = loo.compute()
    assert got["rater_accuracy"] == pytest.approx(whole["rater_accuracy"]) and got["model_accuracy"] == pytest.approx(whole["model_accuracy"])
    np.testing.assert_allclose(got["model_recall"], whole["model_recall"])


def test_agreement_table_rows():
    df = agreement_table(fleiss_1971_counts(), ["depression", "personality", "schizophrenia", "neurosis", "other"])
    assert list(df["class"]) == ["depression", "personality", "schizophrenia", "neurosis", "other", "all"]
    assert df.set_index("class").at["all", "fleiss_kappa"] == pytest.approx(0.4302445, abs=1e-7)
    assert df["ratings"].iloc[-1] == 180 and df["rating_share"].iloc[:-1].sum() == pytest.approx(1.0)
    assert df.set_index("class").at["all", "rater_agreement_loo"] == pytest.approx(float(brute_force_loo(fleiss_1971_counts())["rater"]))


@pytest.fixture(scope="module")
def ferplus_dm():
    if not FERPLUS.is_dir():
        pytest.skip(f"real FER+ data not found at {FERPLUS}")
    from facebench.datamodules.base import create_datamodule

    dm = create_datamodule("ferplus", root=str(FERPLUS))
    dm.setup()
    return dm


@pytest.mark.realdata
def test_ferplus_kappa_matches_statsmodels(ferplus_dm):
    for split in ("val", "test"):
        votes = ferplus_dm.tables[split].votes["emotion"]
        assert (votes.sum(1) == 10).all()                     # 10 raters per image in these splits
        assert fleiss_kappa(votes) == pytest.approx(statsmodels_fleiss_kappa(votes), abs=1e-9)


@pytest.mark.realdata
def test_ferplus_analysis_command(ferplus_dm, tmp_path, capsys, monkeypatch):
    """The analysis command writes the table the repository's results/ferplus_agreement.csv holds."""
    monkeypatch.setattr("facebench.benchmarks.analyses.rater_agreement.create_datamodule", lambda name, **kw: ferplus_dm)
    out = tmp_path / "agreement.csv"
    assert run_analysis("rater-agreement", ["--dataset", "ferplus", "--root", str(FERPLUS), "--out", str(out)]) == 0
    assert "Fleiss' kappa per class" in capsys.readouterr().out
    df = pd.read_csv(out, keep_default_na=False, na_values=["", "nan"])
    assert set(df["split"]) == {"train", "val", "test", "all"}
    test_all = df[(df["split"] == "test") & (df["class"] == "all")].iloc[0]
    votes = ferplus_dm.tables["test"].votes["emotion"]
    assert test_all["fleiss_kappa"] == pytest.approx(statsmodels_fleiss_kappa(votes), abs=1e-6)
    assert test_all["rater_agreement_loo"] == pytest.approx(loo_majority_agreement(votes)["rater_accuracy"], abs=1e-6)
    committed = REPO / "results" / "ferplus_agreement.csv"
    assert committed.is_file(), "run: facebench analyze rater-agreement --dataset ferplus --root ../shared/data/ferplus --out results/ferplus_agreement.csv"
    pd.testing.assert_frame_equal(pd.read_csv(committed), pd.read_csv(out), check_exact=False, rtol=1e-5)
