"""Every dataset format, loaded from files SynthFaces wrote in it, and the bad inputs each must survive."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facebench.datamodules.base import create_datamodule
from facebench.datamodules.formats import DatasetFormatError
from facebench.datamodules.fer import FERPLUS_VOTE_COLUMNS, ferplus_distribution
from facebench.datamodules.inspect import format_description
from facebench.datamodules.synthfaces.writers import WRITERS, emotion_of, ferplus_votes, synth_ages, write_multirater
from facebench.datamodules.synthfaces import SynthFacesConfig, generate

N_ID, PER_ID = 12, 4


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FACEBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def synth():
    return generate(SynthFacesConfig(n_identities=N_ID, images_per_identity=PER_ID, image_size=40, seed=3,
                                     n_raters=10, bad_rater_fraction=0.1, workers=1))


@pytest.fixture(scope="module")
def written(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {fmt: writer(synth, root / fmt) for fmt, writer in WRITERS.items()}


def copy_of(written: dict, fmt: str, tmp_path: Path) -> Path:
    dst = tmp_path / fmt
    shutil.copytree(written[fmt], dst)
    return dst


def dm_of(name: str, root: Path, **kw):
    dm = create_datamodule(name, root=root, batch_size=8, num_workers=0, **kw)
    dm.setup()
    return dm


# ------------------------------------------------------------------------------------------------
# every format loads, with the right targets
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_format_loads_and_yields_batches(fmt, written):
    dm = dm_of(fmt, written[fmt], image_size=32)
    total = sum(len(t) for t in dm.tables.values())
    assert set(dm.tables) == {"train", "val", "test"} or fmt == "multirater"
    assert total <= N_ID * PER_ID and total >= N_ID * PER_ID - 2   # FER+ may drop not-a-face images
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (dm.eval_cfg.channels, 32, 32)
    assert batch["label"].shape[1] == dm.task.n_label_slots
    info = dm.describe()
    assert info["skipped"] == [] and info["duplicates"] == []
    assert "samples:" in format_description(info)


def test_synthfaces_writers_are_atomic_and_refuse_to_overwrite(synth, written, tmp_path):
    with pytest.raises(FileExistsError):
        WRITERS["utkface"](synth, written["utkface"])
    assert not [p for p in written["utkface"].parent.iterdir() if ".partial-" in p.name]


def test_lfwa_labels_identities_and_paper_split(written, synth):
    dm = dm_of("lfwa", written["lfwa"])
    assert dm.task.names == synth.attribute_names
    test_ids = set(dm.tables["test"].identities.tolist())
    assert not test_ids & set(dm.tables["train"].identities.tolist())      # identity-disjoint split file
    assert not test_ids & set(dm.tables["val"].identities.tolist())
    assert len(dm.tables["val"]) > 0                                        # carved from train
    tab = dm.tables["train"]
    i = int(np.flatnonzero(np.char.endswith(np.asarray(tab.paths), "_0001.jpg"))[0])
    person = int(tab.paths[i].split("/")[1].rsplit("_", 1)[1])
    row = np.flatnonzero(synth.identity == person)[0]
    np.testing.assert_array_equal(tab.labels[i], synth.attributes[row])
    gray = [p for p in tab.paths if (written["lfwa"] / p).stat().st_size and dm.dataset("train").read(tab.paths.index(p)).shape[2] == 1]
    assert gray, "some LFW images are grayscale"


def test_lfwa_zero_one_values_and_derived_identity_split(synth, tmp_path):
    root = WRITERS["lfwa"](synth, tmp_path / "l01", values="01")
    (root / "lfwa_split.csv").unlink()
    dm = dm_of("lfwa", root, split={"by_identity": True, "fractions": [0.6, 0.2, 0.2]})
    ids = {s: set(t.identities.tolist()) for s, t in dm.tables.items()}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"]
    labels = np.concatenate([t.labels for t in dm.tables.values()])
    assert set(np.unique(labels)) <= {0, 1}
    assert labels.mean() == pytest.approx(synth.attributes.mean(), abs=1e-9)


def test_fer2013_csv_pixels_and_official_usage(written, synth):
    dm = dm_of("fer2013", written["fer2013"])
    assert dm.eval_cfg.channels == 1 and dm.tables["train"].arrays.shape[1:] == (48, 48, 1)
    labels = np.concatenate([t.labels[:, 0] for t in dm.tables.values()])
    assert sorted(labels.tolist()) == sorted(emotion_of(synth).tolist())


def test_ferplus_folders_and_csv_agree(written):
    a = dm_of("ferplus", written["ferplus"], source="folders")
    b = dm_of("ferplus", written["ferplus"], source="csv")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a.tables[split].votes["emotion"], b.tables[split].votes["emotion"])
        np.testing.assert_array_equal(a.tables[split].labels, b.tables[split].labels)
        pixels_a = np.stack([a.dataset(split).read(i) for i in range(len(a.tables[split]))])
        np.testing.assert_array_equal(pixels_a, b.tables[split].arrays)
    votes = a.tables["train"].votes["emotion"]
    assert votes.shape[1] == len(FERPLUS_VOTE_COLUMNS) and (votes.sum(1) == 10).all()
    info = a.describe()
    assert set(info["kappa"]) >= {"emotion", "emotion/happiness"} and -1 <= info["kappa"]["emotion"] <= 1


def test_ferplus_label_modes_follow_the_authors_code():
    v = lambda *x: np.array(list(x) + [0] * (10 - len(x)))   # noqa: E731
    # single votes are outliers; 6 of the remaining 9 is a majority
    np.testing.assert_allclose(ferplus_distribution(v(6, 3, 1), "majority")[:2], [1, 0])
    # a 5-5 tie is no majority -> unknown
    assert ferplus_distribution(v(5, 5), "majority")[8] == 1
    # probability: top emotions covering 75% (at most 3), renormalised
    np.testing.assert_allclose(ferplus_distribution(v(4, 4, 2), "probability")[:3], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(ferplus_distribution(v(5, 3, 2), "probability")[:3], [5 / 8, 3 / 8, 0.0])
    assert ferplus_distribution(v(4, 2, 2, 2), "probability")[8] == 1          # more than 3 emotions needed
    # majority on 'unknown' -> not an emotion
    assert int(np.argmax(ferplus_distribution(np.array([2, 0, 0, 0, 0, 0, 0, 0, 8, 0]), "majority"))) == 8
    assert ferplus_distribution(v(4, 3, 3), "multi_target")[:3].round(3).tolist() == [0.4, 0.3, 0.3]


def test_ferplus_drop_unknown_and_soft_targets(written):
    keep = dm_of("ferplus", written["ferplus"], label_mode="probability")
    drop = dm_of("ferplus", written["ferplus"], label_mode="probability", drop_unknown=True)
    for split in ("val", "test"):
        t = keep.tables[split]
        assert len(drop.tables[split]) == int((t.labels[:, 0] >= 0).sum())
    soft = keep.tables["train"].soft_labels["emotion"]
    has = soft.sum(1) > 0
    np.testing.assert_allclose(soft[has].sum(1), 1.0, atol=1e-6)
    assert len(drop.tables["train"]) == int(has.sum())


def test_utkface_names_bins_and_exact_age(written, synth):
    dm = dm_of("utkface", written["utkface"])
    t = dm.task.target("age17")
    assert t.kind == "ordinal" and len(t.classes) == 17 and t.bin_edges[:3] == (0.0, 3.0, 8.0)
    assert len(dm.task.target("age8").classes) == 8 and len(dm.task.target("age14").classes) == 14
    ages = np.concatenate([tab.extra["age"] for tab in dm.tables.values()])
    assert sorted(ages.astype(int).tolist()) == sorted(synth_ages(synth).tolist())
    tab = dm.tables["train"]
    j = dm.task.names.index("age8")
    edges = np.array(dm.task.target("age8").bin_edges)
    for age, b in zip(tab.extra["age"], tab.labels[:, j]):
        assert edges[b] <= age and (b == len(edges) - 1 or age < edges[b + 1])
    assert dm.task.target("race").n_classes == 5 and dm.task.target("gender").kind == "binary"


def test_utkface_malformed_names_are_skipped_or_strict(written, tmp_path):
    root = copy_of(written, "utkface", tmp_path)
    src = next((root / "UTKFace").iterdir())
    shutil.copy(src, root / "UTKFace" / "39_1_20170116174525125.jpg.chip.jpg")   # race field missing
    shutil.copy(src, root / "UTKFace" / "200_0_0_20170116174525125.jpg.chip.jpg")
    with pytest.warns(UserWarning, match="malformed"):
        dm = dm_of("utkface", root)
    assert dm.report["malformed_names"] == 2 and len(dm.report["skipped"]) == 2
    assert sum(len(t) for t in dm.tables.values()) == N_ID * PER_ID
    with pytest.raises(DatasetFormatError, match=r"(39_1_|200_0_0_)20170116174525125.jpg.chip.jpg: malformed UTKFace name"):
        dm_of("utkface", root, strict=True)


def test_multirater_long_and_wide_agree_and_filter_the_bad_rater(written, synth, tmp_path):
    long = dm_of("multirater", written["multirater"])
    wide = dm_of("multirater", write_multirater(synth, tmp_path / "wide", wide=True))
    for s in long.tables:
        np.testing.assert_array_equal(long.tables[s].labels, wide.tables[s].labels)
    bad = [f"r{int(r)}" for r in synth.bad_raters]
    assert long.report["raters"]["dropped"] == bad            # 45% error rate: over a third of disagreement
    unfiltered = dm_of("multirater", written["multirater"], rater_filter=False)
    assert unfiltered.report["raters"]["dropped"] == []
    votes = np.concatenate([t.votes["gender"] for t in long.tables.values()])
    assert (votes.sum(1) == 10 - len(bad)).all()
    assert long.describe()["kappa"]["gender"] > long.describe()["kappa"]["chubby"]


def test_multirater_split_is_stratified_identity_disjoint_80_20(written):
    dm = dm_of("multirater", written["multirater"])
    ids = {s: set(t.identities.tolist()) for s, t in dm.tables.items()}
    assert not ids["train"] & ids["test"]
    n = {s: len(t) for s, t in dm.tables.items()}
    assert 0.1 <= n["test"] / sum(n.values()) <= 0.34


def test_folder_targets_from_sidecar_and_config(written):
    dm = dm_of("folder", written["folder"])
    assert dm.task.target("age").kind == "ordinal" and len(dm.task.target("age").classes) == 17
    assert dm.task.target("beard").classes == ("none", "light", "heavy")
    assert "age" in dm.tables["train"].extra and np.isfinite(dm.tables["train"].extra["age"]).all()
    ids = {s: set(t.identities.tolist()) for s, t in dm.tables.items()}
    assert not ids["train"] & ids["test"]                         # persons separated (Flickr paper)
    cfg = {"gender": {"kind": "binary", "classes": ["male", "female"]}, "glasses": {"kind": "binary"}}
    only = dm_of("folder", written["folder"], targets=cfg)
    assert only.task.names == ("gender", "glasses")


def test_celeba_wild_returns_full_image_and_box(synth, tmp_path):
    data = generate(SynthFacesConfig(n_identities=4, images_per_identity=3, image_size=32, seed=1, wild=True, workers=1))
    root = WRITERS["celeba"](data, tmp_path / "wild")
    dm = dm_of("celeba_wild", root, image_size=48)
    s = dm.dataset("train")[0]
    assert s["image"].shape == (3, 48, 48) and "box" in s
    x, y, w, h = s["box"].tolist()
    assert 0 <= x and 0 <= y and x + w <= 48.5 and y + h <= 48.5 and w < 40


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_truncated_and_garbage_images_are_skipped_and_reported(written, tmp_path):
    root = copy_of(written, "lfwa", tmp_path)
    files = sorted((root / "lfw").rglob("*.jpg"))
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    files[1].write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="skipped 2"):
        dm = dm_of("lfwa", root)
    assert sum(len(t) for t in dm.tables.values()) == N_ID * PER_ID - 2
    skipped = " ".join(dm.describe()["skipped"])
    assert files[0].name in skipped and files[1].name in skipped
    with pytest.warns(UserWarning, match="skipped 2"):
        again = dm_of("lfwa", root, split={"seed": 0})        # cached verdicts give the same answer
    assert len(again.report["skipped"]) == 2
    with pytest.raises(DatasetFormatError, match=files[0].name):
        dm_of("lfwa", root, strict=True)


def test_decode_failure_after_setup_gives_a_blank_sample_with_missing_labels(written, tmp_path):
    root = copy_of(written, "folder", tmp_path)
    dm = dm_of("folder", root)
    ds = dm.dataset("train")
    (root / dm.tables["train"].paths[0]).write_bytes(b"\xff\xd8\xff garbage")
    with pytest.warns(UserWarning, match="blank image"):
        s = ds[0]
    assert (s["label"] == -1).all() and s["image"].shape[0] == 3
    strict = dm_of("folder", root, strict=True, verify_images="none")
    with pytest.raises(DatasetFormatError, match=Path(dm.tables["train"].paths[0]).name):
        strict.dataset("train")[list(strict.tables["train"].paths).index(dm.tables["train"].paths[0])]


def test_duplicate_images_are_reported(written, tmp_path):
    root = copy_of(written, "folder", tmp_path)
    lines = (root / "labels.csv").read_text().splitlines()
    shutil.copy(root / "images" / "000001.jpg", root / "images" / "copy.jpg")
    lines.append(lines[1].replace("images/000001.jpg", "images/copy.jpg"))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    dups = dm_of("folder", root).describe()["duplicates"]
    assert len(dups) == 1 and sorted(p.split(":")[1] for p in dups[0]) == ["images/000001.jpg", "images/copy.jpg"]


@pytest.mark.parametrize("fmt,file,edit,match", [
    ("lfwa", "lfwa_attributes.csv", lambda t: t.replace("Smiling", "Grinning", 1), r"line 1: column \d+: 'Grinning'"),
    ("lfwa", "lfwa_attributes.csv", lambda t: t + "Nobody_Here/Nobody_Here_0001.jpg" + ",1" * 39 + "\n",
     r"line \d+: image lfw/Nobody_Here/Nobody_Here_0001.jpg listed here does not exist"),
    ("lfwa", "lfwa_attributes.csv", lambda t: t.replace(",1,", ",2,", 1), r"line 2: expected 1/-1 or 1/0"),
    ("fer2013", "fer2013.csv", lambda t: t.replace("emotion,pixels,Usage", "emotion,pix,Usage"), r"line 1: expected column\(s\) pixels"),
    ("fer2013", "fer2013.csv", lambda t: t.replace(" 1", "", 1) if " 1" in t else t.replace(" 2", "", 1), r"line \d+: expected 2304 pixel values"),
    ("ferplus", "FER2013Valid/label.csv", lambda t: t.replace(",0,", ",x,", 1), r"label.csv, line 1: expected 10 integer vote counts"),
    ("ferplus", "FER2013Test/label.csv", lambda t: t.replace(".png", ".PNG", 1), r"line 1: image FER2013Test/fer\d+.PNG listed here does not exist"),
    ("multirater-declared", "ratings.csv", lambda t: t.replace(",male\n", ",mle\n", 1), r"line \d+: label 'mle' of trait gender"),
    ("multirater", "ratings.csv", lambda t: t.replace("image,rater,trait,label", "img,rater,trait,label"), r"line 1: expected column\(s\) image"),
    ("folder", "labels.csv", lambda t: t.replace("path,", "file,", 1), r"line 1: expected column\(s\) path"),
    ("folder", "labels.csv", lambda t: t.replace(",male,", ",mal,", 1), r"line \d+: gender: expected one of male, female"),
])
def test_bad_label_files_name_file_line_and_expectation(fmt, file, edit, match, written, tmp_path):
    kwargs = {}
    if fmt == "multirater-declared":
        fmt = "multirater"
        from facebench.datamodules.synthfaces.writers import FAD_TRAITS
        kwargs["traits"] = {t: {"classes": list(c)} for t, (c, _) in FAD_TRAITS.items()}
        kwargs["traits"]["ethnicity"] = {"classes": ["other", "white"]}
    root = copy_of(written, fmt, tmp_path)
    path = root / file
    path.write_text(edit(path.read_text()))
    with pytest.raises(DatasetFormatError, match=match) as err:
        dm_of(fmt, root, **kwargs)
    assert str(path) in str(err.value)


def test_ferplus_votes_follow_the_raters(synth):
    votes = ferplus_votes(synth)
    assert (votes.sum(1) == synth.rater_votes.shape[2]).all()
    top = votes[:, :8].argmax(1)
    truth = np.array([["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"][e] for e in emotion_of(synth)])
    from facebench.datamodules.fer import FERPLUS_EMOTIONS
    agree = np.mean([FERPLUS_EMOTIONS[k] == t for k, t in zip(top, truth)])
    assert agree > 0.8
