"""Tests of the dlib identity-embedding probe (lightning_modules/dlib_probe.py)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from facebench.datamodules.table import SampleTable
from facebench.datamodules.celeba import CelebADataModule
from facebench.core.tasks import Target, TaskSpec
from facebench.lightning_modules.dlib_probe import DescriptorConfig, DlibEmbeddingProbe, embed_table, fit_linear_probe
from facebench.lightning_modules.registry import create_method

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CELEBA = DATA / "celeba_subset"


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    from facebench.datamodules.synthfaces import SynthFacesConfig, generate, write_celeba

    data = generate(SynthFacesConfig(n_identities=6, images_per_identity=4, image_size=96, seed=2, workers=1))
    return write_celeba(data, tmp_path_factory.mktemp("synth") / "celeba")


@pytest.mark.realdata
@pytest.mark.skipif(not CELEBA.is_dir(), reason=f"real CelebA subset not found at {CELEBA}")
def test_real_images_embed_and_the_cache_is_hit_the_second_time(tmp_path):
    ids = {}
    for line in (CELEBA / "identity_CelebA.txt").read_text().split("\n"):
        if line.strip():
            name, ident = line.split()
            ids.setdefault(int(ident), []).append(name)
    people = sorted(ids)[:2]
    files = [f"img_align_celeba/{n}" for p in people for n in ids[p][:2]]
    table = SampleTable(paths=files, labels=np.zeros((4, 1), dtype=np.int64))
    emb, stats = embed_table(table, CELEBA, cache_dir=tmp_path)
    assert emb.shape == (4, 128) and np.isfinite(emb).all()
    assert stats["computed"] == 4 and stats["cached"] == 0 and stats["faces_not_found"] == 0
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=2)
    assert dist[0, 1] < dist[0, 2] and dist[2, 3] < dist[1, 3]        # same person closer than another person
    again, stats2 = embed_table(table, CELEBA, cache_dir=tmp_path)
    assert stats2["cached"] == 4 and stats2["computed"] == 0
    np.testing.assert_array_equal(again, emb)
    other, _ = embed_table(table, CELEBA, DescriptorConfig(face_box="image"), cache_dir=tmp_path)
    assert not np.allclose(other, emb)                                    # the options are part of the cache key


def test_in_memory_images_are_cached_by_content(tmp_path, synth_root):
    from facebench.datamodules.image_files import load_image

    images = np.stack([load_image(p) for p in sorted((synth_root / "img_align_celeba").iterdir())[:3]])
    table = SampleTable(paths=["a", "b", "c"], labels=np.zeros((3, 1), dtype=np.int64), arrays=images)
    emb, stats = embed_table(table, tmp_path, DescriptorConfig(face_box="image"), cache_dir=tmp_path)
    assert np.isfinite(emb).all() and stats["computed"] == 3
    table.arrays = images[::-1].copy()                                    # same pixels in another order
    again, stats = embed_table(table, tmp_path, DescriptorConfig(face_box="image"), cache_dir=tmp_path)
    assert stats["cached"] == 3
    np.testing.assert_array_equal(again, emb[::-1])


def test_linear_probe_layout_and_standardisation_folding():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 0.1, size=(300, 5))                               # off-centre, small scale: needs standardising
    task = TaskSpec((Target("a"), Target("emotion", "multiclass", classes=("x", "y", "z", "never")), Target("constant"),
                     Target("groups", "multilabel", classes=("g1", "g2"))))
    labels = np.stack([(x[:, 0] > 3.0), np.argmax(x[:, 1:4], 1), np.ones(300), x[:, 2] > 3.0, x[:, 3] > 3.05], 1).astype(int)
    labels[:10, 0] = -1
    w, b = fit_linear_probe(task, x, labels)
    assert w.shape == (task.n_logits, 5) == (1 + 4 + 1 + 2, 5)
    logits = x @ w.T + b
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    ref = LogisticRegression(max_iter=2000).fit(z[10:], labels[10:, 0])
    np.testing.assert_allclose(logits[:, 0], ref.decision_function(z), rtol=1e-4, atol=1e-4)
    assert (logits[:, 1:4].argmax(1) == labels[:, 1]).mean() > 0.8
    assert np.all(logits[:, 4] == pytest.approx(-20.0))                   # a class never seen in training
    assert logits[:, 5] == pytest.approx(np.log((1 - 1e-6) / 1e-6))       # one-class column: its prior
    assert ((logits[:, 6:] > 0) == labels[:, 3:]).mean() > 0.9


@pytest.mark.slow
def test_probe_trains_and_tests_through_lightning_on_original_files(tmp_path, synth_root):
    dm = CelebADataModule(synth_root, batch_size=5, num_workers=0, attributes=["Male", "Eyeglasses", "Smiling"])
    dm.setup()
    model = create_method("dlib_probe", dm.task, cache_dir=str(tmp_path), workers=1)
    dm.configure_input(model.image_size, model.in_chans)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert model.weight.abs().sum() > 0 and model.parameter_count(trainable_only=True) == 0
    assert model.embedding_stats["images"] == len(dm.tables["train"]) + len(dm.tables["val"])
    model.eval_split_names = ["val", "test"]
    trainer.test(model, dataloaders=[dm.eval_dataloader("val"), dm.eval_dataloader("test")], verbose=False)
    emb, stats = embed_table(dm.tables["test"], synth_root, cache_dir=tmp_path)
    assert stats["computed"] == 0                                         # computed once during test, cached since
    expected = dm.task.probabilities(model(torch.from_numpy(emb)))        # the test loader's own files (loader index 1)
    got = model.collected["test"]
    np.testing.assert_allclose(got["probs"], expected[torch.from_numpy(got["index"])].detach().numpy(), rtol=1e-5, atol=1e-6)
    assert model.flops_per_image() == 2 * 128 * 3                          # the probe only (dlib runs outside torch)


def test_options_are_checked():
    with pytest.raises(ValueError, match="face_box must be 'hog' or 'image'"):
        DlibEmbeddingProbe(TaskSpec.binary_attributes(["a"]), face_box="mmod")
