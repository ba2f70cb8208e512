"""Tests of the SynthFaces renderer (datamodules/synthfaces/)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from facebench.datamodules.celeba import CELEBA_ATTRIBUTES
from facebench.datamodules.synthfaces import (
    ATTRIBUTE_NAMES,
    RATER_ERROR,
    TARGET_PREVALENCE,
    SynthFacesConfig,
    SynthFacesData,
    generate,
    render_single,
    write_celeba,
)
from facebench.datamodules.synthfaces.cli import main

IX = {a: i for i, a in enumerate(ATTRIBUTE_NAMES)}


@pytest.fixture(scope="module")
def big() -> SynthFacesData:
    """~2,000 small images (1,000 identities x 2) for statistics."""
    return generate(SynthFacesConfig(n_identities=1000, images_per_identity=2, image_size=32, seed=11, workers=2))


@pytest.fixture(scope="module")
def faces64() -> SynthFacesData:
    """160 aligned 64 px images with wild canvases, for landmark checks."""
    return generate(SynthFacesConfig(n_identities=40, images_per_identity=4, image_size=64, seed=3, wild=True,
                                     workers=1))


def _lum(img: np.ndarray, xy: np.ndarray) -> float:
    x, y = np.rint(xy).astype(int)
    return float(img[y, x].astype(float) @ np.array([0.299, 0.587, 0.114]))


def _redness(img: np.ndarray, xy: np.ndarray) -> float:
    x, y = np.rint(xy).astype(int)
    r, g, b = img[y, x].astype(float)
    return r - (g + b) / 2


def _inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-12) + x0)
    return crosses.sum(1) % 2 == 1


def _fleiss_kappa(votes: np.ndarray) -> float:
    """Fleiss' kappa of binary votes [N, R]."""
    n_raters = votes.shape[1]
    ones = votes.sum(1)
    counts = np.stack([n_raters - ones, ones], 1).astype(float)
    p_item = ((counts ** 2).sum(1) - n_raters) / (n_raters * (n_raters - 1))
    p_cat = counts.sum(0) / counts.sum()
    p_exp = (p_cat ** 2).sum()
    return float((p_item.mean() - p_exp) / (1 - p_exp))


# --------------------------------------------------------------------------------------------- API


def test_attribute_names_are_celeba_subset_in_order():
    assert isinstance(ATTRIBUTE_NAMES, tuple)
    assert len(ATTRIBUTE_NAMES) >= 20
    assert [a for a in CELEBA_ATTRIBUTES if a in ATTRIBUTE_NAMES] == list(ATTRIBUTE_NAMES)
    assert set(RATER_ERROR) >= set(ATTRIBUTE_NAMES)


def test_shapes_and_dtypes(faces64):
    d, n = faces64, 160
    assert d.images.shape == (n, 64, 64, 3) and d.images.dtype == np.uint8
    assert d.attributes.shape == (n, len(ATTRIBUTE_NAMES)) and d.attributes.dtype == np.uint8
    assert set(np.unique(d.attributes)) <= {0, 1}
    assert d.identity.dtype == np.int64 and (d.identity == np.arange(n) // 4).all()
    assert d.landmarks68.shape == (n, 68, 2) and d.landmarks68.dtype == np.float32
    assert d.landmarks5.shape == (n, 5, 2) and d.landmarks5.dtype == np.float32
    assert d.rater_votes.shape == (n, len(ATTRIBUTE_NAMES), 3) and d.rater_votes.dtype == np.uint8
    w = round(2.5 * 64)
    assert d.wild_images.shape == (n, w, w, 3) and d.wild_boxes.shape == (n, 4)
    assert d.wild_landmarks68.shape == (n, 68, 2) and d.wild_landmarks5.shape == (n, 5, 2)


def test_identity_traits_shared_within_identity(faces64):
    d = faces64
    for name in ("Male", "Young", "Pale_Skin", "Big_Nose", "Oval_Face", "Black_Hair", "Wavy_Hair"):
        per_id = d.attributes[:, IX[name]].reshape(40, 4)
        assert (per_id == per_id[:, :1]).all(), name
    # image-level traits do vary within identities
    smiles = d.attributes[:, IX["Smiling"]].reshape(40, 4)
    assert (smiles != smiles[:, :1]).any()


def test_invalid_config_rejected():
    with pytest.raises(ValueError):
        generate(SynthFacesConfig(n_identities=0))
    with pytest.raises(ValueError):
        generate(SynthFacesConfig(n_identities=1, rater_error={"Not_An_Attribute": 0.1}))


# ----------------------------------------------------------------------------------- determinism


def test_deterministic_and_worker_independent():
    cfg = SynthFacesConfig(n_identities=10, images_per_identity=4, image_size=32, seed=7, wild=True, workers=1)
    a, b = generate(cfg), generate(cfg)
    c = generate(SynthFacesConfig(**{**cfg.__dict__, "workers": 2}))
    for key in ("images", "attributes", "identity", "landmarks68", "landmarks5", "rater_votes", "wild_images",
                "wild_boxes", "wild_landmarks68"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
        assert np.array_equal(getattr(a, key), getattr(c, key)), key
    d = generate(SynthFacesConfig(**{**cfg.__dict__, "seed": 8}))
    assert not np.array_equal(a.images, d.images)
    assert not np.array_equal(a.attributes, d.attributes)


def test_wild_mode_does_not_change_aligned_images():
    cfg = SynthFacesConfig(n_identities=3, images_per_identity=2, image_size=32, seed=2, workers=1)
    plain, wild = generate(cfg), generate(SynthFacesConfig(**{**cfg.__dict__, "wild": True}))
    assert plain.wild_images is None
    assert np.array_equal(plain.images, wild.images)


# ------------------------------------------------------------------------------------- landmarks


def test_landmarks_inside_face_outline(faces64):
    for lm in faces64.landmarks68:
        contour = np.concatenate([lm[0:17], lm[26:16:-1]])  # jaw, then brows right-to-left
        assert _inside(lm[27:68], contour).all()
        assert ((lm >= 0) & (lm <= 63)).all()


def test_eye_landmarks_hit_dark_eyes(faces64):
    d = faces64
    beard = (d.attributes[:, IX["No_Beard"]] == 0) | (d.attributes[:, IX["5_o_Clock_Shadow"]] == 1)
    diffs = []
    for img, lm in zip(d.images[~beard], d.landmarks68[~beard]):
        cheek = (lm[3] + lm[31] + lm[48]) / 3
        for eye in (lm[36:42], lm[42:48]):
            diffs.append(_lum(img, cheek) - _lum(img, eye.mean(0)))
    diffs = np.array(diffs)
    assert np.median(diffs) > 30
    assert (diffs > 5).mean() > 0.9


def test_mouth_landmarks_on_lips(faces64):
    d = faces64
    ok = (d.attributes[:, IX["No_Beard"]] == 1) & (d.attributes[:, IX["5_o_Clock_Shadow"]] == 0)
    diffs = []
    for img, lm in zip(d.images[ok], d.landmarks68[ok]):
        lower_lip = (lm[57] + lm[66]) / 2
        cheek = (lm[3] + lm[31] + lm[48]) / 3
        diffs.append(_redness(img, lower_lip) - _redness(img, cheek))
    diffs = np.array(diffs)
    assert np.median(diffs) > 15
    assert (diffs > 0).mean() > 0.85


def test_rotation_applied_to_landmarks(faces64):
    d = faces64
    eyes = d.landmarks5[:, 1] - d.landmarks5[:, 0]
    angle = np.degrees(np.arctan2(-eyes[:, 1], eyes[:, 0]))
    assert np.abs(angle - d.rotation).max() < 0.5
    assert np.abs(d.rotation).max() > 30 and np.abs(d.rotation).max() <= 40
    # strongly rotated faces: landmarks still on the eyes
    rotated = np.abs(d.rotation) > 25
    assert rotated.sum() >= 10
    dark = [_lum(img, lm[36:42].mean(0)) < _lum(img, (lm[3] + lm[31] + lm[48]) / 3)
            for img, lm in zip(d.images[rotated], d.landmarks68[rotated])]
    assert np.mean(dark) > 0.85


def test_landmarks5_match_landmarks68(faces64):
    lm, lm5 = faces64.landmarks68, faces64.landmarks5
    assert np.allclose(lm5[:, 0], lm[:, 36:42].mean(1), atol=1e-4)
    assert np.allclose(lm5[:, 1], lm[:, 42:48].mean(1), atol=1e-4)
    assert np.allclose(lm5[:, 2], lm[:, 30]) and np.allclose(lm5[:, 3], lm[:, 48])
    assert np.allclose(lm5[:, 4], lm[:, 54])
    # "lefteye" is on the image's left in the face's own frame
    assert (np.cos(np.radians(faces64.rotation)) * (lm5[:, 1, 0] - lm5[:, 0, 0]) > 0).all()


# ------------------------------------------------------------------------------------------- wild


def test_wild_box_and_landmarks(faces64):
    d = faces64
    w = d.wild_images.shape[1]
    x, y, bw, bh = d.wild_boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + bw <= w).all() and (y + bh <= w).all()
    frac = bw / w
    assert frac.min() > 0.12 and frac.max() < 0.65
    lm = d.wild_landmarks68
    assert (lm[..., 0] >= x[:, None] - 1e-3).all() and (lm[..., 0] <= (x + bw)[:, None] + 1e-3).all()
    assert (lm[..., 1] >= y[:, None] - 1e-3).all() and (lm[..., 1] <= (y + bh)[:, None] + 1e-3).all()
    # same face, same pose: the wild landmarks are a scaled + shifted copy of the aligned ones
    a = d.landmarks68 - d.landmarks68.mean(1, keepdims=True)
    b = lm - lm.mean(1, keepdims=True)
    scale = np.linalg.norm(b, axis=(1, 2)) / np.linalg.norm(a, axis=(1, 2))
    assert np.allclose(b, a * scale[:, None, None], atol=0.05)
    # and the wild eyes are dark there too
    dark = [_lum(img, l[36:42].mean(0)) < _lum(img, (l[3] + l[31] + l[48]) / 3)
            for img, l, s in zip(d.wild_images, lm, scale) if s > 1.0]
    assert np.mean(dark) > 0.8


# ------------------------------------------------------------------------------ attribute visibility

def _face_frame(lm: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the face's own frame: origin between the eyes (landmark 27), u along the
    eye line, v towards the chin, in units of the nose-bridge-to-chin distance."""
    down = lm[8] - lm[27]
    unit = np.linalg.norm(down)
    down = down / unit
    right = np.array([-down[1], down[0]])
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    rel = np.stack([xs, ys], -1) - lm[27]
    return rel @ right / unit, rel @ down / unit


#: attribute -> region (|u| range, v range) in the face frame where toggling it may change pixels.
COUNTERFACTUALS = {
    "Eyeglasses": ((0, 0.9), (-0.25, 0.25)),
    "Heavy_Makeup": ((0, 0.6), (-0.35, 0.15)),
    "Wearing_Hat": ((0, 9), (-9, -0.15)),
    "Bangs": ((0, 0.9), (-0.7, 0.0)),
    "Smiling": ((0, 0.6), (-0.15, 0.9)),
    "Mouth_Slightly_Open": ((0, 0.4), (0.35, 0.85)),
    "Wearing_Lipstick": ((0, 0.4), (0.35, 0.85)),
    "Rosy_Cheeks": ((0.05, 0.8), (0.0, 0.7)),
    "High_Cheekbones": ((0.05, 0.8), (0.0, 0.7)),
    "Wearing_Earrings": ((0.45, 1.0), (0.05, 0.85)),
    "Wearing_Necktie": ((0, 9), (0.85, 9)),
    "Wearing_Necklace": ((0, 9), (0.85, 9)),
    "Blurry": ((0, 99), (-99, 99)),
}


@pytest.mark.parametrize("name", sorted(COUNTERFACTUALS))
def test_image_traits_are_visible_where_drawn(name):
    """Toggling one image-level trait (same identity, pose, light, clutter) changes its label and
    visibly changes pixels, and (nearly) only in the region where the trait is drawn."""
    (u0, u1), (v0, v1) = COUNTERFACTUALS[name]
    cfg = SynthFacesConfig(n_identities=20, images_per_identity=1, image_size=64, seed=5)
    inside, counts = [], []
    for index in range(6):
        on = render_single(cfg, index, {name: True})
        off = render_single(cfg, index, {name: False})
        assert on["attributes"][IX[name]] == 1 and off["attributes"][IX[name]] == 0
        changed = np.abs(on["image"].astype(int) - off["image"].astype(int)).sum(-1) > 30
        counts.append(int(changed.sum()))
        u, v = _face_frame(on["landmarks68"], changed.shape)
        region = (np.abs(u) >= u0) & (np.abs(u) <= u1) & (v >= v0) & (v <= v1)
        inside.append((changed & region).sum() / max(1, changed.sum()))
    assert min(counts) >= 3 and np.median(counts) >= (100 if name == "Blurry" else 10), counts
    assert np.median(inside) > 0.9, inside


def test_beard_styles_change_lower_face_only():
    cfg = SynthFacesConfig(n_identities=40, images_per_identity=1, image_size=64, seed=9)
    males = [i for i in range(40) if render_single(cfg, i)["attributes"][IX["Male"]]][:4]
    assert males
    for i in males:
        clean = render_single(cfg, i, {"beard": "clean", "stubble": False})
        goatee = render_single(cfg, i, {"beard": "goatee", "stubble": False})
        assert goatee["attributes"][IX["Goatee"]] == 1 and goatee["attributes"][IX["No_Beard"]] == 0
        assert clean["attributes"][IX["No_Beard"]] == 1
        diff = np.abs(clean["image"].astype(int) - goatee["image"].astype(int)).sum(-1)
        lm = clean["landmarks68"]
        ys, xs = np.nonzero(diff > 30)
        assert len(ys) > 10
        # everything that changed is below the nose tip (in the face's rotated frame)
        up = (lm[27] - lm[8]) / np.linalg.norm(lm[27] - lm[8])
        height = (np.stack([xs, ys], 1) - lm[30]) @ up
        assert (height < 2).mean() > 0.95


# ------------------------------------------------------------------------------- label statistics


def test_prevalences_close_to_celeba(big):
    prev = big.attributes.mean(0)
    for name, target in TARGET_PREVALENCE.items():
        if name not in IX:
            continue
        tol = 4 * np.sqrt(target * (1 - target) / 1000) + 0.01
        assert abs(prev[IX[name]] - target) < tol, (name, prev[IX[name]], target)


def test_correlations_have_celeba_signs(big):
    x = big.attributes.astype(float)

    def corr(a: str, b: str) -> float:
        return float(np.corrcoef(x[:, IX[a]], x[:, IX[b]])[0, 1])

    assert corr("Male", "Heavy_Makeup") < -0.4
    assert corr("Male", "Wearing_Lipstick") < -0.4
    assert corr("Male", "No_Beard") < -0.3
    assert corr("Male", "Goatee") > 0.15 and corr("Male", "Mustache") > 0.1
    assert corr("Heavy_Makeup", "Wearing_Lipstick") > 0.5
    assert corr("Smiling", "Mouth_Slightly_Open") > 0.3
    assert corr("Smiling", "High_Cheekbones") > 0.4
    for old_trait in ("Gray_Hair", "Bald", "Receding_Hairline", "Bags_Under_Eyes"):
        assert corr("Young", old_trait) < -0.1, old_trait
    a = big.attributes.astype(bool)
    male = a[:, IX["Male"]]
    for beard in ("Goatee", "Mustache", "5_o_Clock_Shadow", "Sideburns", "Wearing_Necktie"):
        assert not (a[:, IX[beard]] & ~male).any(), beard
    assert (a[:, IX["Heavy_Makeup"]] & male).mean() < 0.01
    # No_Beard = not (Goatee or Mustache or full beard)
    assert not (a[:, IX["No_Beard"]] & (a[:, IX["Goatee"]] | a[:, IX["Mustache"]])).any()
    assert (~a[:, IX["No_Beard"]] & ~a[:, IX["Goatee"]] & ~a[:, IX["Mustache"]]).any()  # full beards


# ---------------------------------------------------------------------------------------- raters


def test_rater_kappa_spans_the_fad_range(big):
    votes = big.rater_votes
    kappas = np.array([_fleiss_kappa(votes[:, j, :]) for j in range(votes.shape[1])])
    assert kappas.min() < 0.3 and kappas.max() > 0.85, kappas
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    j = IX["Big_Nose"]
    table, _ = inter_rater.aggregate_raters(votes[:, j, :])
    assert abs(inter_rater.fleiss_kappa(table) - kappas[j]) < 1e-9
    assert kappas[IX["Male"]] > kappas[IX["Oval_Face"]]
    # votes are noisy copies of the truth
    agree = (votes == big.attributes[:, :, None]).mean((0, 2))
    assert agree[IX["Eyeglasses"]] > 0.98 and 0.6 < agree[IX["Big_Lips"]] < 0.8


def test_bad_raters_and_error_overrides():
    cfg = SynthFacesConfig(n_identities=100, images_per_identity=2, image_size=16, seed=4, n_raters=6,
                           bad_rater_fraction=1 / 3, rater_error={"Male": 0.25}, workers=1)
    d = generate(cfg)
    assert len(d.bad_raters) == 2
    err = (d.rater_votes != d.attributes[:, :, None]).mean((0, 1))  # per rater
    good = np.setdiff1d(np.arange(6), d.bad_raters)
    assert err[d.bad_raters].min() > 0.35 and err[good].max() < 0.2
    male_err = (d.rater_votes[:, IX["Male"], good] != d.attributes[:, IX["Male"], None]).mean()
    assert 0.18 < male_err < 0.32


# ------------------------------------------------------------------------------------ CelebA files


@pytest.fixture(scope="module")
def small_wild() -> SynthFacesData:
    return generate(SynthFacesConfig(n_identities=12, images_per_identity=3, image_size=32, seed=1, wild=True,
                                     workers=1))


def test_write_celeba_layout(tmp_path, small_wild):
    d = small_wild
    out = write_celeba(d, tmp_path / "celeba")
    assert out == (tmp_path / "celeba").absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["celeba"]  # no partial dir left behind
    n, names = 36, [f"{i:06d}.jpg" for i in range(1, 37)]
    imgs = sorted(p.name for p in (out / "img_align_celeba").iterdir())
    assert imgs == names
    with Image.open(out / "img_align_celeba" / names[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32)
    with Image.open(out / "img_celeba" / names[-1]) as im:
        assert im.size == (80, 80)

    raw = (out / "list_attr_celeba.txt").read_bytes()
    assert b"\r" not in raw
    lines = raw.decode().split("\n")
    assert lines[-1] == "" and lines[0] == str(n)
    assert lines[1].split() == list(ATTRIBUTE_NAMES) and "  " not in lines[1]
    row_re = re.compile(r"^\d{6}\.jpg" + r"( -1|  1)" * len(ATTRIBUTE_NAMES) + "$")
    assert all(row_re.match(line) for line in lines[2:-1]) and len(lines) == n + 3
    values = np.array([[int(v) for v in line.split()[1:]] for line in lines[2:-1]])
    assert np.array_equal((values + 1) // 2, d.attributes)
    assert [line.split()[0] for line in lines[2:-1]] == names

    ident = (out / "identity_CelebA.txt").read_text().splitlines()
    assert [line.split() for line in ident] == [[nm, str(i // 3 + 1)] for i, nm in enumerate(names)]

    part = (out / "list_eval_partition.txt").read_text().splitlines()
    assert all(re.match(r"^\d{6}\.jpg [012]$", line) for line in part) and len(part) == n
    split = {}
    for line, ident_line in zip(part, ident):
        split.setdefault(int(ident_line.split()[1]), set()).add(int(line.split()[1]))
    assert all(len(s) == 1 for s in split.values())  # identity-disjoint
    counts = np.bincount([next(iter(s)) for s in split.values()], minlength=3)
    assert counts.tolist() == [10, 1, 1]  # 12 identities at 0.8 / 0.1 / 0.1

    lm_lines = (out / "list_landmarks_align_celeba.txt").read_text().splitlines()
    assert lm_lines[0] == str(n)
    assert lm_lines[1] == ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                           "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")
    assert all(re.match(r"^\d{6}\.jpg( {1,4}-?\d+){10}$", line) for line in lm_lines[2:])
    lm = np.array([[int(v) for v in line.split()[1:]] for line in lm_lines[2:]]).reshape(n, 5, 2)
    assert np.abs(lm - d.landmarks5).max() <= 0.5

    bbox = (out / "list_bbox_celeba.txt").read_text().splitlines()
    assert bbox[:2] == [str(n), "image_id x_1 y_1 width height"]
    boxes = np.array([[int(v) for v in line.split()[1:]] for line in bbox[2:]])
    assert boxes.shape == (n, 4) and np.abs(boxes - d.wild_boxes).max() <= 0.5
    wl = (out / "list_landmarks_celeba.txt").read_text().splitlines()
    assert wl[1] == lm_lines[1] and len(wl) == n + 2

    csv = (out / "rater_votes.csv").read_text().splitlines()
    assert csv[0] == "image,rater," + ",".join(ATTRIBUTE_NAMES)
    assert len(csv) == 1 + n * 3
    first = csv[1].split(",")
    assert first[:2] == [names[0], "0"] and all(v in ("0", "1") for v in first[2:])
    votes = np.array([[int(v) for v in line.split(",")[2:]] for line in csv[1:]]).reshape(n, 3, -1)
    assert np.array_equal(votes.transpose(0, 2, 1), d.rater_votes)


def test_write_celeba_refuses_existing_and_cleans_up(tmp_path, small_wild, monkeypatch):
    out = tmp_path / "ds"
    write_celeba(small_wild, out)
    with pytest.raises(FileExistsError):
        write_celeba(small_wild, out)
    write_celeba(small_wild, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    calls = {"n": 0}
    real_save = Image.Image.save

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(RuntimeError):
        write_celeba(small_wild, tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing half-written


def test_cli_writes_exactly_n_images(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--format", "celeba", "--out", str(out), "--n", "25", "--seed", "3", "--size", "32",
               "--per-identity", "10", "--workers", "1"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "25 images" in printed[0] and str(out) in printed[0]
    assert len(list((out / "img_align_celeba").iterdir())) == 25
    ids = [int(line.split()[1]) for line in (out / "identity_CelebA.txt").read_text().splitlines()]
    assert ids == [i // 10 + 1 for i in range(25)]
    with pytest.raises(SystemExit) as exc:
        main(["--format", "voc", "--out", str(tmp_path / "x"), "--n", "5"])
    assert exc.value.code == 2
