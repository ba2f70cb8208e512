"""Splits, preprocessing (alignment, contrast normalisation, mean subtraction) and landmark providers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import facebench.datamodules.landmarks as landmarks_mod
from facebench.datamodules.base import create_datamodule
from facebench.datamodules.preprocess import (FileCache, PreprocessConfig, alignment, detect_face_and_eyes,
                                    eyes_from_landmarks, global_contrast_normalize)
from facebench.datamodules.splits import assign_splits, strata_of
from facebench.datamodules.synthfaces.writers import WRITERS
from facebench.datamodules.synthfaces import SynthFacesConfig, generate
from facebench.datamodules.transforms import FaceTransform, TransformConfig

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FACEBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    data = generate(SynthFacesConfig(n_identities=10, images_per_identity=4, image_size=48, seed=5, workers=1))
    return WRITERS["celeba"](data, tmp_path_factory.mktemp("pp") / "celeba")


def dm_of(name, root, **kw):
    dm = create_datamodule(name, root=root, batch_size=8, num_workers=0, **kw)
    dm.setup()
    return dm


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------
def test_split_is_deterministic_sized_and_stratified():
    rng = np.random.default_rng(1)
    y = (rng.random(1000) < 0.1).astype(int)
    a = assign_splits(1000, (0.8, 0.1, 0.1), seed=7, strata=strata_of(y))
    b = assign_splits(1000, (0.8, 0.1, 0.1), seed=7, strata=strata_of(y))
    np.testing.assert_array_equal(a, b)
    assert np.bincount(a).tolist() == [800, 100, 100]
    for k in range(3):
        assert abs(y[a == k].mean() - y.mean()) < 0.011
    assert not np.array_equal(a, assign_splits(1000, (0.8, 0.1, 0.1), seed=8, strata=strata_of(y)))


def test_group_split_keeps_identities_together_and_close_to_fractions():
    ids = np.repeat(np.arange(200), 5)
    y = (np.repeat(np.arange(200), 5) % 4 == 0).astype(int)
    codes = assign_splits(1000, (0.7, 0.1, 0.2), seed=0, strata=strata_of(y), groups=ids)
    for i in range(200):
        assert len(set(codes[ids == i])) == 1
    frac = np.bincount(codes, minlength=3) / 1000
    np.testing.assert_allclose(frac, [0.7, 0.1, 0.2], atol=0.03)
    for k in range(3):
        assert abs(y[codes == k].mean() - 0.25) < 0.06


def test_split_config_errors_and_override_official(celeba_root):
    with pytest.raises(ValueError, match="unknown option"):
        create_datamodule("celeba", root=celeba_root, split={"fraction": [1, 0, 0]})
    with pytest.raises(ValueError, match="stratify names 'Nope'"):
        dm_of("celeba", celeba_root, split={"override_official": True, "stratify": "Nope"})
    dm = dm_of("celeba", celeba_root, split={"override_official": True, "fractions": [0.5, 0.25, 0.25], "stratify": "Male"})
    ids = {s: set(t.identities.tolist()) for s, t in dm.tables.items()}
    assert not ids["train"] & ids["test"] and dm.report["split"]["kind"] == "derived"


# ------------------------------------------------------------------------------------------------
# geometry: eye alignment and inter-ocular scale
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("angle", [-30.0, 0.0, 17.0])
def test_alignment_levels_the_eyes_and_fixes_their_distance(angle):
    a = math.radians(angle)
    mid, half = np.array([80.0, 70.0]), 22.0
    eyes = np.stack([mid - half * np.array([math.cos(a), math.sin(a)]), mid + half * np.array([math.cos(a), math.sin(a)])])
    cfg = PreprocessConfig(align="landmarks", eye_distance=0.4, eye_height=0.35)
    box, rot = alignment((160, 200), None, eyes.astype(np.float32), cfg)
    tf = FaceTransform(TransformConfig(image_size=50), train=False)
    out = tf(np.zeros((160, 200, 3), np.uint8), landmarks=eyes, crop_box=box, angle=rot)["landmarks"].numpy()
    assert out[0, 1] == pytest.approx(out[1, 1], abs=1e-3)                # level
    assert out[1, 0] - out[0, 0] == pytest.approx(0.4 * 50, abs=1e-3)      # inter-ocular distance
    assert out[:, 1].mean() == pytest.approx(0.35 * 50, abs=1e-3)          # eye height
    assert out[:, 0].mean() == pytest.approx(25.0, abs=1e-3)


def test_eyes_from_68_and_5_point_landmarks():
    lm68 = np.zeros((68, 2), np.float32)
    lm68[36:42] = (30, 40)
    lm68[42:48] = (70, 44)
    np.testing.assert_allclose(eyes_from_landmarks(lm68), [[30, 40], [70, 44]])
    lm5 = np.array([[70, 44], [30, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    np.testing.assert_allclose(eyes_from_landmarks(lm5), [[30, 40], [70, 44]])


def test_landmark_alignment_in_the_datamodule(celeba_root):
    dm = dm_of("celeba", celeba_root, preprocess={"align": "landmarks", "eye_distance": 0.35}, image_size=40)
    s = dm.dataset("val")[0]
    eyes = s["landmarks"][:2].numpy()
    assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=0.5)
    assert abs(eyes[1, 0] - eyes[0, 0]) == pytest.approx(0.35 * 40, abs=0.5)
    assert dm.report["preprocess"]["eyes_not_found"] == 0


def test_haar_detection_runs_cached_and_falls_back_to_the_whole_image(celeba_root, monkeypatch):
    cfg = {"face_detector": "haar", "align": "haar_eyes", "eye_distance": 0.35}
    dm = dm_of("celeba", celeba_root, preprocess=cfg)
    n = sum(len(t) for t in dm.tables.values())
    assert dm.report["preprocess"]["images"] == n
    assert all(np.isfinite(t.extra["align_box"]).all() for t in dm.tables.values())
    calls = []
    import facebench.datamodules.preprocess as pp
    real = pp.detect_face_and_eyes
    monkeypatch.setattr(pp, "detect_face_and_eyes", lambda *a, **k: calls.append(1) or real(*a, **k))
    dm2 = dm_of("celeba", celeba_root, preprocess=cfg)
    assert calls == []                                                     # every detection came from the cache
    for s in dm.tables:
        np.testing.assert_array_equal(dm.tables[s].extra["align_box"], dm2.tables[s].extra["align_box"])


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "celeba_subset").is_dir(), reason="needs ../shared/data/celeba_subset")
def test_viola_jones_finds_real_faces_and_eyes():
    from facebench.datamodules.image_files import load_image

    files = sorted((DATA / "celeba_subset" / "img_align_celeba").iterdir())[:20]
    found = [detect_face_and_eyes(load_image(f)) for f in files]
    assert sum(face is not None for face, _ in found) >= 16
    assert sum(eyes is not None for _, eyes in found) >= 8
    for face, eyes in found:
        if eyes is not None:
            assert eyes[0, 0] < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 25


# ------------------------------------------------------------------------------------------------
# photometric
# ------------------------------------------------------------------------------------------------
def test_global_contrast_normalisation_and_pixel_standardisation(tmp_path):
    x = torch.rand(1, 8, 8) * 200 + 20
    y = global_contrast_normalize(x)
    assert float(y.mean()) == pytest.approx(0, abs=1e-4) and float(y.norm()) == pytest.approx(100, rel=1e-5)
    data = generate(SynthFacesConfig(n_identities=8, images_per_identity=4, image_size=40, seed=2, workers=1))
    root = WRITERS["fer2013"](data, tmp_path / "fer")
    dm = dm_of("fer2013", root, preprocess={"global_contrast": True, "standardize_pixels": True})
    train = torch.stack([dm.dataset("train", train=False)[i]["image"] for i in range(len(dm.tables["train"]))])
    assert train.shape[1:] == (1, 48, 48)
    assert float(train.mean(0).abs().max()) < 1e-3
    assert float(train.std(0, unbiased=False).mean()) == pytest.approx(1.0, abs=0.02)


def test_training_mean_subtraction_channel(celeba_root):
    dm = dm_of("celeba", celeba_root, preprocess={"subtract_mean": "channel"}, image_size=32)
    x = torch.stack([dm.dataset("train", train=False)[i]["image"] for i in range(len(dm.tables["train"]))])
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-4)


def test_bad_preprocess_options():
    with pytest.raises(ValueError, match="unknown option"):
        PreprocessConfig.from_value({"face": "haar"})
    with pytest.raises(ValueError, match="face_detector"):
        PreprocessConfig.from_value({"face_detector": "mtcnn"})


# ------------------------------------------------------------------------------------------------
# landmarks
# ------------------------------------------------------------------------------------------------
def test_dlib68_landmarks_are_cached_by_file_and_content(celeba_root, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(celeba_root, root)
    calls = []
    real = landmarks_mod.dlib68
    monkeypatch.setattr(landmarks_mod, "dlib68", lambda *a, **k: calls.append(1) or real(*a, **k))
    spec = {"name": "dlib68", "detector": "image", "workers": 1}
    dm = dm_of("celeba", root, landmark_provider=spec, max_samples=6)
    n = sum(len(t) for t in dm.tables.values())
    assert len(calls) == n
    lm = dm.tables["train"].landmarks
    assert lm.shape[1:] == (68, 2) and np.isfinite(lm).all()
    assert (lm >= -5).all() and (lm <= 53).all()
    assert dm.dataset("train")[0]["landmarks"].shape == (68, 2)
    calls.clear()
    dm_of("celeba", root, landmark_provider=spec, max_samples=6)
    assert calls == []                                                     # cached
    changed = root / dm.tables["train"].paths[0]
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(changed))
    __import__("PIL.Image", fromlist=["Image"]).fromarray(255 - img).save(changed, quality=95)
    dm_of("celeba", root, landmark_provider=spec, max_samples=6)
    assert len(calls) == 1                                                 # only the changed image


def test_file_cache_survives_touch_without_content_change(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    with FileCache(tmp_path / "cache", "t") as c:
        c.put(str(f), {"v": 1})
    f.write_bytes(b"abc")                       # same bytes, new mtime
    with FileCache(tmp_path / "cache", "t") as c:
        assert c.get_many([str(f)]) == {str(f): {"v": 1}}
    f.write_bytes(b"abd")
    with FileCache(tmp_path / "cache", "t") as c:
        assert c.get_many([str(f)]) == {}


def test_unknown_landmark_provider():
    with pytest.raises(ValueError, match="unknown provider"):
        landmarks_mod.create_landmark_provider("tcdcn")
    assert landmarks_mod.dlib_model_path().is_file()
