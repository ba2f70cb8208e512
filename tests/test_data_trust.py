"""Evaluation you can trust, data side: duplicate images kept in one derived split (and counted, or
dropped, across official ones), one repeated-row policy in every loader, label spellings, any
column name as a target, and the data's doubts in the run records (on SynthFaces written in every
dataset's layout, with injected problems)."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from torch import nn

from facebench.datamodules.base import create_datamodule
from facebench.datamodules.duplicates import difference_hash, near_pairs
from facebench.datamodules.formats import DatasetFormatError
from facebench.datamodules.synthfaces import SynthFacesConfig, generate
from facebench.datamodules.synthfaces.writers import FAD_TRAITS, WRITERS

N_ID, PER_ID = 10, 2
REAL_CELEBA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba_subset"


@pytest.fixture(scope="module")
def synth():
    return generate(SynthFacesConfig(n_identities=N_ID, images_per_identity=PER_ID, image_size=32, seed=5, n_raters=3,
                                     workers=1))


@pytest.fixture(scope="module")
def written(synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    return {fmt: writer(synth, root / fmt) for fmt, writer in WRITERS.items()}


def copy_of(written: dict, fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(written[fmt], tmp_path / fmt))


def load(fmt: str, root: Path, **kw):
    dm = create_datamodule(fmt, root=root, batch_size=4, num_workers=0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dm.setup()
    return dm


def rows_of(dm, path: str) -> list[tuple]:
    """(labels, votes) of every occurrence of ``path`` over all splits."""
    out = []
    for tab in dm.tables.values():
        for i, p in enumerate(tab.paths):
            if p == path:
                out.append((tab.labels[i].tolist(), {k: v[i].tolist() for k, v in sorted(tab.votes.items())}))
    return out


def split_of(dm) -> dict[str, str]:
    return {p: s for s, tab in dm.tables.items() for p in tab.paths}


# ------------------------------------------------------------------------------------------------
# repeated rows: the contract every loader obeys
# ------------------------------------------------------------------------------------------------
def _append(path: Path, edit) -> tuple[int, int]:
    """Append a copy of a data row (``edit(lines) -> (source index, new line)``); 1-based lines."""
    lines = path.read_text().splitlines()
    k, new = edit(lines)
    lines.append(new)
    path.write_text("\n".join(lines) + "\n")
    return k + 1, len(lines)


def _flip(value: str) -> str:
    return {"1": "-1", "-1": "1", " 1": "-1"}.get(value, "1")


def inject(fmt: str, root: Path, conflict: bool) -> tuple[Path, str, str, tuple[str, str]]:
    """A repeated row of one image (agreeing, or with ``conflict``ing values). Returns (file,
    table path of the first row's image, of the repeated row's image, how the message places them)."""
    if fmt == "celeba":
        f = root / "list_attr_celeba.txt"
        lines = f.read_text().splitlines()
        name, *vals = lines[2].split()
        vals[0] = _flip(vals[0]) if conflict else vals[0]
        lines[0] = str(int(lines[0]) + 1)
        f.write_text("\n".join(lines + [" ".join([name, *vals])]) + "\n")
        return f, f"img_align_celeba/{name}", f"img_align_celeba/{name}", ("line 3", f"line {len(lines) + 1}")
    if fmt in ("lfwa", "folder", "multirater", "fer2013"):
        f = root / {"lfwa": "lfwa_attributes.csv", "folder": "labels.csv", "multirater": "ratings.csv",
                    "fer2013": "fer2013.csv"}[fmt]

        def edit(lines):
            row = next(csv.reader([lines[1]]))
            if conflict and fmt == "lfwa":
                row[1] = _flip(row[1])
            elif conflict and fmt == "folder":
                row[3] = "female" if row[3] == "male" else "male"
            elif conflict and fmt == "multirater":
                classes = FAD_TRAITS[row[2]][0]
                row[3] = classes[1 - classes.index(row[3])]
            elif conflict:
                row[0] = str((int(row[0]) + 1) % 7)
            return 1, ",".join(row)

        a, b = _append(f, edit)
        first = next(csv.reader([f.read_text().splitlines()[1]]))[0]
        path = {"lfwa": f"lfw/{first}", "folder": first, "multirater": first, "fer2013": "fer2013.csv#0"}[fmt]
        repeat = f"fer2013.csv#{b - 2}" if fmt == "fer2013" else path
        return f, path, repeat, (f"line {a}", f"line {b}")
    if fmt == "ferplus":
        f = root / "FER2013Train" / "label.csv"

        def edit(lines):
            head, *votes = lines[0].rsplit(",", 10)
            votes[0] = str(int(votes[0]) + 1) if conflict else votes[0]
            return 0, ",".join([head, *votes])

        a, b = _append(f, edit)
        name = f.read_text().split(",", 1)[0]
        return f, f"FER2013Train/{name}", f"FER2013Train/{name}", (f"line {a}", f"line {b}")
    assert fmt == "utkface" and not conflict
    src = sorted((root / "UTKFace").iterdir())[0]
    (root / "extra").mkdir()
    shutil.copy(src, root / "extra" / src.name)
    return root, f"UTKFace/{src.name}", f"extra/{src.name}", (f"UTKFace/{src.name}", f"extra/{src.name}")


CASES = [pytest.param(fmt, conflict, id=f"{fmt}-{'conflicting' if conflict else 'agreeing'}")
         for fmt in sorted(WRITERS) for conflict in (False, True)
         if not (fmt == "utkface" and conflict)]   # UTKFace's labels are its file name: two copies cannot disagree


@pytest.mark.parametrize("fmt,conflict", CASES)
def test_every_loader_obeys_duplicate_rows(fmt, conflict, written, tmp_path):
    clean = load(fmt, written[fmt])
    total = sum(len(t) for t in clean.tables.values())
    root = copy_of(written, fmt, tmp_path)
    file, path, repeat, (where_a, where_b) = inject(fmt, root, conflict)
    assert rows_of(clean, path) and not (repeat != path and rows_of(clean, repeat))

    with pytest.raises(DatasetFormatError) as err:                          # error (the default)
        load(fmt, root)
    msg = str(err.value)
    assert str(file) in msg and f"{where_a} and {where_b}" in msg, msg
    assert ("conflicting: " in msg) == conflict and ("identical" in msg) == (not conflict), msg

    first = load(fmt, root, duplicate_rows="first")                         # first: the first row's values
    assert rows_of(first, path) == rows_of(clean, path)
    assert repeat == path or not rows_of(first, repeat)
    assert sum(len(t) for t in first.tables.values()) == total
    counts = next(iter(first.report["repeated_rows"].values()))
    assert (counts["repeated"], counts["conflicting"]) == (1, int(conflict))

    drop = load(fmt, root, duplicate_rows="drop_conflicting")               # drop_conflicting
    if conflict:
        assert rows_of(drop, path) == [] and rows_of(drop, repeat) == []
        assert sum(len(t) for t in drop.tables.values()) == total - 1
    else:
        assert rows_of(drop, path) == rows_of(clean, path) and (repeat == path or not rows_of(drop, repeat))
        assert sum(len(t) for t in drop.tables.values()) == total
    assert first.data_checks()["repeated_rows"] == 1
    assert first.data_checks()["conflicting_rows"] == int(conflict)


def test_repeated_rows_of_secondary_files_drop_the_image(written, tmp_path):
    """A conflict in CelebA's partition file (train vs test) drops the image under drop_conflicting."""
    root = copy_of(written, "celeba", tmp_path)
    f = root / "list_eval_partition.txt"
    name, part = f.read_text().splitlines()[0].split()
    f.write_text(f.read_text() + f"{name} {2 if part != '2' else 0}\n")
    with pytest.raises(DatasetFormatError, match=rf"line 1 and line {N_ID * PER_ID + 1}; conflicting: partition"):
        load("celeba", root)
    dm = load("celeba", root, duplicate_rows="drop_conflicting")
    assert f"img_align_celeba/{name}" not in split_of(dm) and sum(len(t) for t in dm.tables.values()) == N_ID * PER_ID - 1


# ------------------------------------------------------------------------------------------------
# duplicate images: derived splits keep them together, official splits count or drop them
# ------------------------------------------------------------------------------------------------
def _add_copies(root: Path, clean, pairs: list[tuple[int, int]], reencode: bool = False) -> None:
    """Folder layout: image ``i``'s row copied to a new file name with the identity of image ``j``
    (``reencode``: saved again as JPEG q60, a near-duplicate instead of the same bytes)."""
    lines = (root / "labels.csv").read_text().splitlines()
    rows = [next(csv.reader([x])) for x in lines[1:]]
    for k, (i, j) in enumerate(pairs):
        src = root / rows[i][0]
        dst = f"images/copy_{k}.jpg"
        if reencode:
            Image.open(src).save(root / dst, quality=60)
        else:
            shutil.copy(src, root / dst)
        lines.append(",".join([dst, *rows[i][1:-1], rows[j][-1]]))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def _cross_identity_pairs(clean, n: int) -> list[tuple[int, int]]:
    """(val / test image, train image: another identity) index pairs into labels.csv's rows."""
    where = split_of(clean)
    order = sorted(where)
    held_out = [k for k, p in enumerate(order) if where[p] != "train"]
    train = [k for k, p in enumerate(order) if where[p] == "train"]
    assert len(held_out) >= n
    return [(held_out[k], train[k]) for k in range(n)]


def test_derived_splits_keep_duplicate_images_together(written, tmp_path):
    clean = load("folder", written["folder"])
    root = copy_of(written, "folder", tmp_path)
    _add_copies(root, clean, _cross_identity_pairs(clean, 3) + [(0, 0), (5, 5)])   # across and within identities
    apart = load("folder", root, split={"by_duplicates": False})
    assert len(apart.describe()["cross_split_duplicates"]) >= 1                    # the injection does cross splits
    dm = load("folder", root)
    info = dm.describe()
    assert len(info["duplicates"]) == 5 and info["cross_split_duplicates"] == []
    for group in info["duplicates"]:
        assert len({m.split(":", 1)[0] for m in group}) == 1
    assert dm.report["split_duplicate_groups"] == 5 and dm.data_checks()["cross_split_duplicates"] == 0
    ids = {s: set(t.identities.tolist()) for s, t in dm.tables.items()}              # identities stay disjoint too
    assert not (ids["train"] & ids.get("test", set())) and not (ids["train"] & ids.get("val", set()))


def test_derived_split_without_identities_keeps_copies_together(written, tmp_path):
    root = copy_of(written, "utkface", tmp_path)
    files = sorted((root / "UTKFace").iterdir())
    for k, src in enumerate(files[:8]):                         # same bytes, a new name (another timestamp)
        age, gender, race, _ = src.name.split("_")
        shutil.copy(src, root / "UTKFace" / f"{age}_{gender}_{race}_2019010100000{k:03d}.jpg.chip.jpg")
    assert len(load("utkface", root, split={"by_duplicates": False}).describe()["cross_split_duplicates"]) > 0
    dm = load("utkface", root)
    assert dm.describe()["cross_split_duplicates"] == [] and len(dm.duplicate_files()) == 8
    assert sum(len(t) for t in dm.tables.values()) == N_ID * PER_ID + 8


def test_near_duplicates_by_difference_hash(written, tmp_path):
    clean = load("folder", written["folder"])
    root = copy_of(written, "folder", tmp_path)
    pairs = _cross_identity_pairs(clean, 2)
    _add_copies(root, clean, pairs, reencode=True)
    a = np.asarray(Image.open(root / "images" / "copy_0.jpg").convert("RGB"))
    rows = [next(csv.reader([x])) for x in (root / "labels.csv").read_text().splitlines()[1:]]
    b = np.asarray(Image.open(root / rows[pairs[0][0]][0]).convert("RGB"))
    assert not np.array_equal(a, b) and bin(difference_hash(a) ^ difference_hash(b)).count("1") <= 4
    exact = load("folder", root)
    assert exact.describe()["duplicates"] == []                                     # not the same bytes
    near = load("folder", root, near_duplicates=4)
    assert near.report["split_duplicate_groups"] == 2 and near.describe()["cross_split_duplicates"] == []
    hashes = np.array([0b1011, 0b1010, 0b0100, 0b1011 ^ (0xFF << 8)], dtype=np.uint64)
    assert near_pairs(hashes, np.ones(4, bool), 1) == [(0, 1)]
    with pytest.raises(ValueError, match="near_duplicates"):
        create_datamodule("folder", root=root, near_duplicates=64)


def _celeba_with_cross_split_copy(written, tmp_path) -> Path:
    """CelebA layout with a training image copied under a new name into the test partition."""
    root = copy_of(written, "celeba", tmp_path)
    parts = dict(x.split() for x in (root / "list_eval_partition.txt").read_text().splitlines())
    src = next(n for n, p in parts.items() if p == "0")
    new = f"{N_ID * PER_ID + 1:06d}.jpg"
    shutil.copy(root / "img_align_celeba" / src, root / "img_align_celeba" / new)
    for name, line in (("list_attr_celeba.txt", None), ("identity_CelebA.txt", None), ("list_eval_partition.txt", "2"),
                       ("list_landmarks_align_celeba.txt", None)):
        lines = (root / name).read_text().splitlines()
        row = next(x for x in lines if x.startswith(src)).replace(src, new)
        if line is not None:
            row = f"{new} {line}"
        if lines[0].strip().isdigit():
            lines[0] = str(int(lines[0]) + 1)
        (root / name).write_text("\n".join(lines + [row]) + "\n")
    return root


def test_official_split_counts_cross_split_duplicates_and_dedupe_drops_them(written, tmp_path):
    root = _celeba_with_cross_split_copy(written, tmp_path)
    dm = load("celeba", root)
    n_test = len(dm.tables["test"])
    info = dm.describe()
    assert len(info["cross_split_duplicates"]) == 1 and dm.data_checks()["cross_split_duplicates"] == 1
    from facebench.datamodules.inspect import format_description
    assert "duplicate images across splits: 1 group(s)" in format_description(info)
    deduped = load("celeba", root, dedupe={"test": "drop"})
    assert len(deduped.tables["test"]) == n_test - 1 and len(deduped.tables["train"]) == len(dm.tables["train"])
    assert deduped.report["dedupe"]["test"] == {"dropped": 1, "items": [f"img_align_celeba/{N_ID * PER_ID + 1:06d}.jpg"]}
    assert deduped.describe()["cross_split_duplicates"] == []
    assert deduped.data_checks() == {"skipped_files": 0, "cross_split_duplicates": 0, "repeated_rows": 0,
                                     "conflicting_rows": 0, "dedupe_dropped": 1}
    json.dumps(deduped.report)                                                       # the report stays JSON
    with pytest.raises(ValueError, match="dedupe must map"):
        create_datamodule("celeba", root=root, dedupe={"test": "remove"})


@pytest.mark.slow
@pytest.mark.realdata
def test_dedupe_on_the_real_subset_duplicate_pair(tmp_path):
    """The real subset's byte-identical pair (186574.jpg = 197961.jpg, one identity) is listed in
    the official partition file with both images in test (partition 2), so as shipped it is a
    within-test duplicate: nothing to drop. Moved to train in a copy of the partition file (the
    images are the real ones, through a symlink), dedupe drops its test twin."""
    if not REAL_CELEBA.is_dir():
        pytest.skip(f"real data not available: {REAL_CELEBA} is absent")
    dm = create_datamodule("celeba", root=REAL_CELEBA, dedupe={"test": "drop"})
    dm.setup()
    assert [sorted(g) for g in dm.duplicate_files()] == [["test:img_align_celeba/186574.jpg",
                                                          "test:img_align_celeba/197961.jpg"]]
    assert dm.report["dedupe"]["test"]["dropped"] == 0 and dm.data_checks()["cross_split_duplicates"] == 0
    root = tmp_path / "celeba_subset"
    root.mkdir()
    (root / "img_align_celeba").symlink_to(REAL_CELEBA / "img_align_celeba", target_is_directory=True)
    for name in ("list_attr_celeba.txt", "identity_CelebA.txt"):
        shutil.copy(REAL_CELEBA / name, root / name)
    text = (REAL_CELEBA / "list_eval_partition.txt").read_bytes().replace(b"186574.jpg 2", b"186574.jpg 0")
    (root / "list_eval_partition.txt").write_bytes(text)
    moved = create_datamodule("celeba", root=root)
    assert moved.data_checks()["cross_split_duplicates"] == 1
    deduped = create_datamodule("celeba", root=root, dedupe={"test": "drop"})
    deduped.setup()
    assert {s: len(t) for s, t in deduped.tables.items()} == {"train": 4561, "val": 780, "test": 658}
    assert deduped.report["dedupe"]["test"] == {"dropped": 1, "items": ["img_align_celeba/197961.jpg"]}
    assert deduped.data_checks()["cross_split_duplicates"] == 0


# ------------------------------------------------------------------------------------------------
# label spellings, inferred targets
# ------------------------------------------------------------------------------------------------
def _folder_csv(written, tmp_path, header: str, cells: list[str]) -> Path:
    """A folder dataset of the SynthFaces images with a hand-written labels.csv (no targets.yaml)."""
    root = tmp_path / "custom"
    shutil.copytree(written["folder"] / "images", root / "images")
    names = sorted(p.name for p in (root / "images").iterdir())
    rows = [header] + [f"images/{n},{cells[k % len(cells)]}" for k, n in enumerate(names)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_labels_differing_in_case_are_an_error_or_folded(written, tmp_path):
    root = _folder_csv(written, tmp_path, "path,emotion,gender", ["anger,m", "ANGER,f", " anger ,m", "happy,f"])
    with pytest.raises(DatasetFormatError, match=r"column 'emotion': .*' anger ' / 'ANGER' / 'anger'.*normalize_labels"):
        load("folder", root)
    dm = load("folder", root, normalize_labels=True)
    assert dm.task.target("emotion").classes == ("anger", "happy")
    assert np.bincount(np.concatenate([t.labels[:, 0] for t in dm.tables.values()])).tolist() == [15, 5]
    declared = {"emotion": {"classes": ["Anger", "Happy"]}, "gender": {"kind": "binary", "classes": ["m", "f"]}}
    dm = load("folder", root, targets=declared, normalize_labels=True)                 # declared classes fold too
    assert dm.task.target("emotion").classes == ("anger", "happy")
    with pytest.raises(DatasetFormatError, match="emotion: expected one of anger, happy"):
        load("folder", root, targets={**declared, "emotion": {"classes": ["anger", "happy"]}})


def test_multirater_labels_differing_in_case(written, tmp_path):
    root = copy_of(written, "multirater", tmp_path)
    f = root / "ratings.csv"
    f.write_text(f.read_text().replace(",gender,male\n", ",gender,Male\n", 1))
    with pytest.raises(DatasetFormatError, match=r"trait gender: .*'Male' / 'male'"):
        load("multirater", root)
    clean, folded = load("multirater", written["multirater"]), load("multirater", root, normalize_labels=True)
    assert folded.task.target("gender").classes == ("female", "male")
    assert np.array_equal(np.concatenate([t.votes["gender"] for t in clean.tables.values()]).sum(0),
                          np.concatenate([t.votes["gender"] for t in folded.tables.values()]).sum(0))


def test_inferred_targets_are_listed_in_one_warning(written, tmp_path):
    root = _folder_csv(written, tmp_path, "path,user.id,gender", ["u1,m", "u2,f", "u3,m"])
    with pytest.warns(UserWarning) as record:
        dm = create_datamodule("folder", root=root)
        dm.setup()
    listed = [str(w.message) for w in record if "taking" in str(w.message)]
    assert len(listed) == 1 and "2 column(s) as targets: user.id (multiclass, 3 classes), gender (multiclass, 2 classes)" \
        in listed[0]
    assert dm.task.names == ("user.id", "gender")


# ------------------------------------------------------------------------------------------------
# runs: any column name trains, the doubts reach the leaderboard, --strict, one-line data errors
# ------------------------------------------------------------------------------------------------
def _suite(tmp_path: Path, root: Path, datamodule: str, method: dict, **args) -> Path:
    suite = {"name": "trust", "results_dir": str(tmp_path / "results"), "seeds": [0],
             "trainer": {"max_epochs": 1, "accelerator": "cpu", "log_every_n_steps": 1},
             "datasets": {"data": {"datamodule": datamodule, "args": {"root": str(root), "batch_size": 8, "num_workers": 0,
                                                                    "image_cache": False, **args}}},
             "methods": {"m": method}}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.slow
def test_a_dotted_column_name_trains_end_to_end(written, tmp_path):
    from facebench.benchmarks.runner import run_suite
    from facebench.lightning_modules.metrics.target_keys import TargetModuleDict, module_key

    root = _folder_csv(written, tmp_path, "path,user.id,gender,identity", ["u1,m,a", "u2,f,b", "u3,m,c", "u1,f,d"])
    method = {"method": "timm", "args": {"backbone": "test_resnet", "input_size": 32}}
    outcomes = run_suite(str(_suite(tmp_path, root, "folder", method)), in_process=True)
    assert [o.state for o in outcomes] == ["done"], [o.message for o in outcomes]
    metrics = pd.read_csv(tmp_path / "results" / "runs" / "m--data--s0" / "metrics.csv")
    assert {"user.id", "gender"} <= set(metrics["target"])                            # the user's name in the records
    board = pd.read_csv(tmp_path / "results" / "leaderboard.csv")
    for col in ("data_skipped_files", "data_cross_split_duplicates", "data_repeated_rows", "data_conflicting_rows",
                "data_dedupe_dropped"):
        assert (board[col] == 0).all(), col
    d = TargetModuleDict({"user.id": nn.Identity(), "keys": nn.Identity()})            # what TaskMetrics keys by
    assert list(d) == ["user.id", "keys"] and "user.id" in d and module_key("user.id") == "user%2Eid"
    assert len({module_key(n) for n in ("a.b", "a%2Eb", "keys", "%keys", "")}) == 5


@pytest.mark.slow
def test_strict_refuses_cross_split_duplicates_and_data_errors_are_one_line(written, tmp_path, capsys):
    from facebench.benchmarks.cli import main

    root = _celeba_with_cross_split_copy(written, tmp_path)
    suite = _suite(tmp_path, root, "celeba", {"method": "majority"}, attributes=["Male", "Smiling"])
    assert main(["run", str(suite), "--strict", "--in-process"]) == 1
    err = capsys.readouterr().err
    status = json.loads((tmp_path / "results" / "runs" / "m--data--s0" / "status.json").read_text())
    assert status["state"] == "failed" and "dataset 'data': 1 group(s) of duplicate images span splits" in status["error"]
    line = [x for x in err.splitlines() if "span splits" in x]
    assert len(line) == 1 and "Traceback" not in err and "Traceback" in status["traceback"]
    assert main(["run", str(suite), "--in-process", "--force"]) == 0                # without --strict it runs ...
    board = pd.read_csv(tmp_path / "results" / "leaderboard.csv")
    assert (board["data_cross_split_duplicates"] == 1).all()                           # ... and the report says so
    test, dedup = board[board["split"] == "test"], board[board["split"] == "test_dedup"]
    assert len(dedup) == len(test) > 0                       # ... and scores the test split without the copy too
    assert (dedup["n_samples"] == test["n_samples"].iloc[0] - 1).all()
    (root / "list_attr_celeba.txt").write_text((root / "list_attr_celeba.txt").read_text().replace(" 1", " 2", 1))
    assert main(["run", str(suite), "--in-process", "--force"]) == 1
    err = capsys.readouterr().err
    assert "list_attr_celeba.txt, line 3: expected +1/-1 values" in err and "Traceback" not in err
