"""The real data in ../shared/data: FER+ and the CelebA subset load as documented (skipped where absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facebench.datamodules.base import create_datamodule

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FERPLUS, CELEBA = DATA / "ferplus", DATA / "celeba_subset"

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.skipif(not FERPLUS.is_dir(), reason="needs ../shared/data/ferplus")
def test_ferplus_real_counts_votes_and_kappa(cache):
    dm = create_datamodule("ferplus", root=FERPLUS, cache_dir=cache, verify_images="none")
    dm.setup()
    assert {s: len(t) for s, t in dm.tables.items()} == {"train": 28558, "val": 3579, "test": 3573}
    sums = {s: t.votes["emotion"].sum(1) for s, t in dm.tables.items()}
    off = [dm.tables[s].paths[i] for s, v in sums.items() for i in np.flatnonzero(v != 10)]
    assert off == ["FER2013Train/fer0010406.png"]      # the one real image with 9 votes (4,0,0,0,0,3,1,0,1,0)
    assert dm.tables["val"].votes["emotion"].shape[1] == 10
    t = dm.tables["test"]
    assert ((t.labels[:, 0] >= 0) == (t.soft_labels["emotion"].sum(1) > 0)).all()
    kappa = dm.rater_agreement()
    assert 0.3 < kappa["emotion"] < 0.7 and kappa["emotion/happiness"] > kappa["emotion/contempt"]


@pytest.mark.skipif(not FERPLUS.is_dir(), reason="needs ../shared/data/ferplus")
def test_facebench_inspect_prints_ferplus_kappa_per_emotion(cache, capsys):
    from facebench.benchmarks.cli import main

    rc = main(["inspect", "--dataset", "ferplus", "--root", str(FERPLUS), "--no-file-checks",
               "--set", f"cache_dir={cache}", "verify_images=none"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "samples: train 28,558, val 3,579, test 3,573" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("emotion per class:"))
    for emotion in ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"):
        assert f"{emotion} 0." in line


@pytest.mark.skipif(not CELEBA.is_dir(), reason="needs ../shared/data/celeba_subset")
def test_celeba_subset_still_loads(cache):
    dm = create_datamodule("celeba", root=CELEBA, cache_dir=cache)
    dm.setup()
    assert {s: len(t) for s, t in dm.tables.items()} == {"train": 4560, "val": 780, "test": 660}
    assert dm.task.n_logits == 40 and dm.report["skipped"] == []
    dups = dm.duplicate_files()
    assert [sorted(p.split("/")[-1] for p in g) for g in dups] == [["186574.jpg", "197961.jpg"]]
