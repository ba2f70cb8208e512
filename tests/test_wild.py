"""The ``wild`` datamodule option (datamodules/wild.py) and the scoring of the ``wild-localization``
analysis (benchmarks/analyses/reference_detectors.py, lnets_anet.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from facebench.datamodules.celeba import CelebADataModule
from facebench.datamodules.image_files import load_image
from facebench.datamodules.wild import (CELEBA_ALIGNED_SIZE, CELEBA_FACE_BOX, WildConfig, composite, place, sample_key,
                              source_face_boxes)
from tests.conftest import shared_data

WILD = {"canvas": 64, "face_fraction": [0.2, 0.6], "face_box": [0.2, 0.25, 0.6, 0.55], "seed": 0}


def _dm(root: Path, wild: dict | None = WILD, **kwargs) -> CelebADataModule:
    dm = CelebADataModule(root, wild=wild, in_the_wild=kwargs.pop("in_the_wild", True), num_workers=0, image_size=64,
                          **kwargs)
    dm.setup()
    return dm


def _pasted_region_matches(canvas: np.ndarray, source: np.ndarray, pl) -> None:
    """The canvas inside the face box equals the source region resized to the patch (recomputed here)."""
    x0, y0, x1, y1 = pl.source
    pw, ph = pl.patch_size
    interp = cv2.INTER_AREA if pw < x1 - x0 or ph < y1 - y0 else cv2.INTER_LINEAR
    patch = cv2.resize(np.ascontiguousarray(source[y0:y1, x0:x1]), (pw, ph), interpolation=interp).reshape(ph, pw, -1)
    bx, by, bw, bh = pl.box
    u0, v0, u1, v1 = int(np.ceil(bx)), int(np.ceil(by)), int(np.floor(bx + bw)), int(np.floor(by + bh))
    assert u1 > u0 and v1 > v0
    px, py = pl.patch_origin
    np.testing.assert_array_equal(canvas[v0:v1 + 1, u0:u1 + 1], patch[v0 - py:v1 + 1 - py, u0 - px:u1 + 1 - px])


# ------------------------------------------------------------------------------------------------
# one canvas
# ------------------------------------------------------------------------------------------------
def test_config_values_and_errors():
    assert WildConfig.from_value(None) is None and WildConfig.from_value(False) is None
    assert WildConfig.from_value(True) == WildConfig()
    assert WildConfig.from_value({"canvas": 96}).canvas == 96
    for bad in ({"face_fraction": [0.5, 0.2]}, {"face_fraction": [0.1, 1.0]}, {"face_box": "nose"},
                {"face_box": [0, 0, 0, 1]}, {"context": [-0.1, 0.5]}, {"colour": 1}):
        with pytest.raises(ValueError):
            WildConfig.from_value(bad)
    assert WildConfig(canvas=96).key() != WildConfig().key() != WildConfig(seed=1).key()


def test_composite_is_deterministic():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
    cfg = WildConfig()
    key = sample_key("img_align_celeba/000001.jpg")
    pl1, pl2 = place((178, 218), CELEBA_FACE_BOX, cfg, key), place((178, 218), CELEBA_FACE_BOX, cfg, key)
    np.testing.assert_array_equal(pl1.box, pl2.box)
    c1, c2 = composite(image, pl1, cfg, key), composite(image, pl2, cfg, key)
    assert c1.shape == (160, 160, 3) and c1.dtype == np.uint8
    np.testing.assert_array_equal(c1, c2)
    other = sample_key("img_align_celeba/000002.jpg")
    assert not np.array_equal(c1, composite(image, place((178, 218), CELEBA_FACE_BOX, cfg, other), cfg, other))
    seed1 = WildConfig(seed=1)
    assert not np.array_equal(c1, composite(image, place((178, 218), CELEBA_FACE_BOX, seed1, key), seed1, key))


@pytest.mark.parametrize("context", [(0.5, 1.0), None])
def test_box_inside_canvas_size_in_range_and_pasted_pixels(context):
    rng = np.random.default_rng(1)
    cfg = WildConfig(canvas=80, face_fraction=(0.15, 0.6), context=context)
    sides = []
    for k in range(60):
        w, h = int(rng.integers(40, 260)), int(rng.integers(40, 260))
        bw, bh = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        box = (rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pl = place((w, h), box, cfg, k)
        x, y, bw_c, bh_c = pl.box
        assert x >= 0 and y >= 0 and x + bw_c <= cfg.canvas - 1 and y + bh_c <= cfg.canvas - 1
        longer = max(bw_c, bh_c)   # the patch is rounded to whole pixels: the side is within 0.5 px of the draw
        assert 0.15 * cfg.canvas - 0.5 <= longer <= 0.6 * cfg.canvas + 0.5
        sides.append(longer / cfg.canvas)
        _pasted_region_matches(composite(image, pl, cfg, k), image, pl)
        # the face box is the source box mapped by the resize
        corners = pl.map_points(np.array([box[:2], [box[0] + box[2], box[1] + box[3]]]))
        np.testing.assert_allclose(np.r_[corners[0], corners[1] - corners[0]], pl.box, atol=1e-9)
    assert min(sides) < 0.25 and max(sides) > 0.5     # the draws cover the range


def test_source_face_boxes_modes():
    sizes = np.array([[178, 218], [89, 109]])
    boxes, mode = source_face_boxes(sizes, None, WildConfig())
    assert mode == "celeba"
    np.testing.assert_allclose(boxes[0], CELEBA_FACE_BOX)
    np.testing.assert_allclose(boxes[1], np.array(CELEBA_FACE_BOX) * np.tile(np.array([89, 109]) / CELEBA_ALIGNED_SIZE, 2))
    lm = np.random.default_rng(0).uniform(20, 80, (2, 68, 2))
    lm[1] = np.nan
    boxes, mode = source_face_boxes(sizes, lm, WildConfig())
    assert mode == "landmarks"
    np.testing.assert_allclose(boxes[0], [*lm[0].min(0), *(lm[0].max(0) - lm[0].min(0))])
    assert np.isfinite(boxes[1]).all()                        # no landmarks: the canonical box
    five = np.zeros((2, 5, 2))
    assert source_face_boxes(sizes, five, WildConfig())[1] == "celeba"
    with pytest.raises(ValueError):
        source_face_boxes(sizes, five, WildConfig(face_box="landmarks"))
    boxes, mode = source_face_boxes(sizes, None, WildConfig(face_box=[0.1, 0.2, 0.5, 0.4]))
    assert mode == "fractions"
    np.testing.assert_allclose(boxes[1], [8.9, 21.8, 44.5, 43.6])


# ------------------------------------------------------------------------------------------------
# the datamodule
# ------------------------------------------------------------------------------------------------
def test_datamodule_canvases_boxes_and_files(synth_celeba):
    dm = _dm(synth_celeba)
    aligned = _dm(synth_celeba, wild=None, in_the_wild=False)
    cfg = WildConfig.from_value(WILD)
    assert dm.report["wild"]["face_box"] == {"train": "fractions", "val": "fractions", "test": "fractions"}
    for split, tab in dm.tables.items():
        src = aligned.tables[split]
        assert len(tab) == len(src) and tab.boxes is not None and tab.boxes.shape == (len(tab), 4)
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in tab.paths)
        assert ((tab.boxes[:, :2] >= 0) & (tab.boxes[:, :2] + tab.boxes[:, 2:] <= cfg.canvas - 1)).all()
        for i in range(0, len(tab), 7):
            source = load_image(synth_celeba / src.paths[i])
            box = np.array(WILD["face_box"]) * np.tile([source.shape[1], source.shape[0]], 2)
            pl = place((source.shape[1], source.shape[0]), box, cfg, sample_key(src.paths[i]))
            np.testing.assert_allclose(tab.boxes[i], pl.box, rtol=1e-6)
            canvas = load_image(tab.paths[i])               # PNG: lossless
            assert canvas.shape == (cfg.canvas, cfg.canvas, 3)
            _pasted_region_matches(canvas, source, pl)
            # the 5 landmarks moved with the pixels
            np.testing.assert_allclose(tab.landmarks[i], pl.map_points(src.landmarks[i]), atol=1e-4)
    # samples carry the canvas and its box, as SynthFaces' wild canvases do
    sample = dm.dataset("test")[0]
    assert tuple(sample["image"].shape) == (3, 64, 64)
    np.testing.assert_allclose(sample["box"].numpy(), dm.tables["test"].boxes[0], atol=1e-3)


def test_in_the_wild_false_keeps_the_aligned_images(synth_celeba):
    dm = _dm(synth_celeba, in_the_wild=False)
    assert "wild" not in dm.report
    assert all(p.startswith("img_align_celeba/") for p in dm.tables["train"].paths)
    assert dm.tables["train"].boxes is None


def test_cache_reused_and_keyed_by_settings(synth_celeba):
    from facebench.datamodules.cache import ImageCache, StoredGeometry

    first, again = _dm(synth_celeba), _dm(synth_celeba)
    n = sum(len(t) for t in first.tables.values())
    assert again.report["wild"]["written"] == 0 and again.report["wild"]["reused"] == n
    assert again.tables["train"].paths == first.tables["train"].paths
    changed = _dm(synth_celeba, wild={**WILD, "face_fraction": [0.3, 0.5]})
    assert changed.report["wild"]["written"] == n and changed.report["wild"]["folder"] != first.report["wild"]["folder"]
    a, b = first.tables["train"], changed.tables["train"]
    assert not set(a.paths) & set(b.paths)
    assert not np.array_equal(load_image(a.paths[0]), load_image(b.paths[0]))
    assert not np.allclose(a.boxes, b.boxes)
    geometry = StoredGeometry.for_input(64, None, 3)
    caches = [ImageCache(None, "celeba", "train", synth_celeba.absolute(), t.paths, geometry) for t in (a, b)]
    assert caches[0].pixels_path != caches[1].pixels_path


def test_prediction_ids_are_the_source_paths_across_cache_keys(synth_celeba, tmp_path):
    """The canvases' file names carry the source file's mtime (the cache notices a changed photo), so
    a re-copied dataset gets new names for the same pixels; the ids that pair two runs' predictions
    are the source paths and stay equal."""
    import os
    import shutil

    copy = tmp_path / "celeba"
    shutil.copytree(synth_celeba, copy)
    first = _dm(copy)
    for p in (copy / "img_align_celeba").iterdir():
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    again = _dm(copy)
    aligned = _dm(copy, wild=None, in_the_wild=False)
    a, b = first.tables["test"], again.tables["test"]
    assert not set(a.paths) & set(b.paths)                       # new canvas files ...
    assert np.array_equal(load_image(a.paths[0]), load_image(b.paths[0]))   # ... of the same pixels
    assert list(a.sample_ids()) == list(b.sample_ids()) == list(aligned.tables["test"].paths)


def test_image_cache_gives_the_same_samples(synth_celeba):
    plain = _dm(synth_celeba)
    cached = _dm(synth_celeba, image_cache=True)
    loader = cached.eval_dataloader("val")       # builds the image cache of the canvases
    batch = next(iter(loader))
    assert cached.stored_images("val", cached.stored_geometry(cached.eval_cfg)) is not None
    for j in range(3):
        ref = plain.dataset("val")[int(batch["index"][j])]
        np.testing.assert_allclose(batch["image"][j].numpy(), ref["image"].numpy(), atol=1e-6)
        np.testing.assert_allclose(batch["box"][j].numpy(), ref["box"].numpy(), atol=1e-5)


def test_in_memory_arrays_are_composited(synth_celeba):
    from facebench.datamodules.wild import apply_wild

    dm = _dm(synth_celeba, wild=None, in_the_wild=False)
    tab = dm.tables["val"]
    tab.arrays = np.stack([load_image(synth_celeba / p) for p in tab.paths])
    apply_wild(dm.tables, dm.files, WildConfig.from_value(WILD))
    assert tab.arrays.shape == (len(tab), 64, 64, 3) and tab.boxes.shape == (len(tab), 4)
    files = _dm(synth_celeba).tables["val"]
    np.testing.assert_array_equal(tab.arrays[0], load_image(files.paths[0]))


def test_real_celeba_subset_canonical_box():
    root = shared_data("celeba_subset")
    dm = _dm(root, wild={"canvas": 160}, max_samples={"train": 6, "val": 3, "test": 3})
    assert dm.report["wild"]["face_box"]["train"] == "celeba"
    aligned = _dm(root, wild=None, in_the_wild=False, max_samples={"train": 6, "val": 3, "test": 3})
    cfg = WildConfig(canvas=160)
    for i, rel in enumerate(aligned.tables["train"].paths):
        source = load_image(root / rel)
        assert source.shape == (218, 178, 3)
        pl = place((178, 218), CELEBA_FACE_BOX, cfg, sample_key(rel))
        np.testing.assert_allclose(dm.tables["train"].boxes[i], pl.box, rtol=1e-6)
        _pasted_region_matches(load_image(dm.tables["train"].paths[i]), source, pl)


# ------------------------------------------------------------------------------------------------
# the analysis: recall@IoU, calibration, the table
# ------------------------------------------------------------------------------------------------
def test_recall_iou_and_misses_exact():
    from facebench.benchmarks.analyses.reference_detectors import recall_table_row

    true = np.array([[0.1, 0.1, 0.4, 0.4]] * 5)
    pred = np.array([
        [0.1, 0.1, 0.4, 0.4],        # IoU 1
        [0.3, 0.1, 0.4, 0.4],        # half shifted: 0.08 / 0.24 = 1/3
        [0.1, 0.1, 0.4, 0.24],       # inside, 60 % of the area: 0.6
        [0.6, 0.6, 0.2, 0.2],        # disjoint: 0
        [np.nan] * 4,                # no detection: a miss, IoU 0
    ])
    row = recall_table_row(pred, true)
    assert row["recall@0.3"] == pytest.approx(3 / 5)
    assert row["recall@0.5"] == pytest.approx(2 / 5)
    assert row["recall@0.7"] == pytest.approx(1 / 5)
    assert row["mean_iou"] == pytest.approx((1 + 1 / 3 + 0.6) / 5)
    assert row["detection_rate"] == pytest.approx(4 / 5) and row["n"] == 5


def test_detector_calibration_exact():
    from facebench.benchmarks.analyses.reference_detectors import calibrate_detector, recall_table_row, scale_detections

    rng = np.random.default_rng(0)
    true = np.concatenate([rng.uniform(0.1, 0.4, (20, 2)), rng.uniform(0.2, 0.4, (20, 2))], 1)
    centre = true[:, :2] + true[:, 2:] / 2
    small = np.concatenate([centre - true[:, 2:] * 0.3, true[:, 2:] * 0.6], 1)   # boxes 0.6x the truth
    small[::4] = np.nan                                                          # some misses
    # IoU of a centred box f * 0.6 the truth is (0.6 f)^2: 1.2 is the grid's smallest factor reaching
    # IoU 0.5 (0.518; 1.15 gives 0.476), and recall@0.5 ties up to 2.0, where the factor closest to 1 wins
    factor = calibrate_detector(small, true)
    assert factor == pytest.approx(1.2)
    scaled = scale_detections(small, factor)
    assert np.isnan(scaled[::4]).all()
    row = recall_table_row(scaled, true)
    assert row["recall@0.5"] == pytest.approx(15 / 20) and row["recall@0.7"] == 0.0
    assert row["mean_iou"] == pytest.approx(0.72 ** 2 * 15 / 20) and row["detection_rate"] == pytest.approx(15 / 20)
    assert calibrate_detector(np.full((3, 4), np.nan), true[:3]) == 1.0


def test_wild_localization_table(tmp_path, synth_celeba, monkeypatch):
    """The analysis on a hand-made lnet_s run folder as the worker writes it (ids: the source images;
    config.yaml: the dataset): the LNet_s row is the saved boxes' scores, the detectors run on the
    canvases the run saw, not on the source images its ids name."""
    import facebench.datamodules.image_files as image_files
    from facebench.benchmarks.analyses.lnets_anet import wild_localization
    from facebench.benchmarks.analyses.reference_detectors import recall_table_row

    wild = {**WILD, "canvas": 96}
    dm = _dm(synth_celeba, wild=wild)
    run = tmp_path / "lnet_s--x--s0"
    run.mkdir()
    dataset = {"datamodule": "celeba", "args": {"root": str(synth_celeba), "wild": wild, "in_the_wild": True,
                                                "num_workers": 0, "image_size": 64}}
    (run / "config.yaml").write_text(yaml.safe_dump({"run_id": run.name, "dataset": dataset}))
    for split in ("val", "test"):
        tab = dm.tables[split]
        true = tab.boxes / 96.0
        face = true + np.array([0.02, -0.01, 0.0, 0.03])
        assert not set(tab.sample_ids()) & set(tab.paths)                     # the ids are not the canvases
        np.savez(run / f"predictions_{split}.npz", face_box=face, true_box=true, ids=tab.sample_ids(),
                 face_scale=np.full(len(tab), 1.15))
    loaded, load = [], image_files.load_image
    monkeypatch.setattr(image_files, "load_image", lambda path, *a, **k: loaded.append(Path(path)) or load(path, *a, **k))
    table = wild_localization(run, hog_upsample=0)
    canvases = [Path(p) for split in ("test", "val") for p in dm.tables[split].paths]
    assert sorted(loaded) == sorted(canvases)                      # every test and val canvas, nothing else
    assert all(load(p).shape[:2] == (96, 96) for p in loaded[:3])
    assert list(table["method"]) == ["LNet_s", "Haar", "HOG"]
    assert {"recall@0.3", "recall@0.5", "recall@0.7", "mean_iou", "detection_rate", "calibration_factor", "n"} <= set(table)
    test = dm.tables["test"]
    expected = recall_table_row(test.boxes / 96.0 + np.array([0.02, -0.01, 0.0, 0.03]), test.boxes / 96.0)
    lnet = table.iloc[0]
    assert lnet["recall@0.5"] == pytest.approx(expected["recall@0.5"]) and lnet["calibration_factor"] == pytest.approx(1.15)
    assert (table["n"] == len(test)).all()
    assert table["detection_rate"].between(0, 1).all()


def test_wild_localization_seeds_summary_and_paired_tests(tmp_path):
    """Three seeds' tables -> means, intervals and the LNet_s - detector differences paired by seed
    (t over seeds, Holm across the differences); one seed is refused with a one-line error."""
    from scipy import stats as sps

    from facebench.benchmarks.analyses.lnets_anet import wild_localization_seeds
    from facebench.benchmarks.cli import main

    lnet = {0: [0.86, 0.46, 0.08, 0.48], 1: [0.93, 0.61, 0.13, 0.54], 2: [0.94, 0.64, 0.11, 0.54]}
    hog = [0.97, 0.97, 0.59, 0.70]
    cols = ["recall@0.3", "recall@0.5", "recall@0.7", "mean_iou"]
    paths = []
    for seed, values in lnet.items():
        t = pd.DataFrame([["LNet_s", "test", *values, 660], ["HOG", "test", *hog, 660]], columns=["method", "split", *cols, "n"])
        paths.append(tmp_path / f"wild_localization_s{seed}.csv")
        t.to_csv(paths[-1], index=False)
    out = wild_localization_seeds({s: pd.read_csv(p) for s, p in zip(lnet, paths)}).set_index(["comparison", "metric"])
    diff = np.array([lnet[s][1] - hog[1] for s in lnet])
    row = out.loc[("LNet_s - HOG", "recall@0.5")]
    assert row["mean"] == pytest.approx(diff.mean()) and row["p_value"] == pytest.approx(sps.ttest_1samp(diff, 0).pvalue)
    assert row["ci95"] == pytest.approx(sps.t.ppf(0.975, 2) * diff.std(ddof=1) / np.sqrt(3))
    assert row["per_seed"] == "-0.510 / -0.360 / -0.330"
    assert (out["p_holm"].dropna() >= out["p_value"].dropna()).all() and out["p_holm"].notna().sum() == 4
    assert out.loc[("HOG", "recall@0.5"), "ci95"] == 0.0 and np.isnan(out.loc[("HOG", "recall@0.5"), "p_value"])
    assert main(["analyze", "wild-localization-seeds", *map(str, paths), "--out", str(tmp_path / "seeds.csv")]) == 0
    assert (tmp_path / "seeds.csv").is_file() and (tmp_path / "seeds_info.json").is_file()
    assert main(["analyze", "wild-localization-seeds", str(paths[0]), "--out", str(tmp_path / "one.csv")]) != 0
