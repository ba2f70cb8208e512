"""The CelebA parser on its official layout: line endings, spacing, malformed lines, missing files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from facebench.datamodules.formats import DatasetFormatError
from facebench.datamodules.celeba import CELEBA_ATTRIBUTES, CelebADataModule, parse_attributes
from tests.conftest import shared_data

NAMES = ["Male", "Smiling", "Young"]
ROWS = [("000001.jpg", [1, -1, 1]), ("000002.jpg", [-1, 1, 1]), ("000003.jpg", [-1, -1, -1])]


def write_attr(path: Path, newline: str = "\n", trailing: str = "", rows=ROWS, count: int | None = None) -> Path:
    lines = [str(len(rows) if count is None else count), " ".join(NAMES) + trailing]
    lines += [f"{name} " + " ".join(f"{v:2d}" for v in vals) + trailing for name, vals in rows]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


@pytest.mark.parametrize("newline,trailing", [("\n", ""), ("\r\n", ""), ("\n", "   "), ("\r\n", " ")])
def test_attribute_file_line_endings_and_spacing(tmp_path, newline, trailing):
    names, files, labels = parse_attributes(write_attr(tmp_path / "list_attr_celeba.txt", newline, trailing))
    assert names == NAMES
    assert files == [r[0] for r in ROWS]
    assert labels.tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 0]]


def test_runs_of_spaces_are_one_separator(tmp_path):
    p = tmp_path / "list_attr_celeba.txt"
    p.write_text("1\nMale  Smiling Young\n000001.jpg    1   -1  1\n")
    assert parse_attributes(p)[2].tolist() == [[1, 0, 1]]


@pytest.mark.parametrize("bad_line,expect", [
    ("000002.jpg -1 1", "expected an image name and 3 +1/-1 values, got 2"),
    ("000002.jpg -1 1 2", "'2' is not +1 or -1"),
    ("000002.jpg -1 yes 1", "'yes' is not +1 or -1"),
])
def test_malformed_line_names_file_line_and_expectation(tmp_path, bad_line, expect):
    p = write_attr(tmp_path / "list_attr_celeba.txt")
    lines = p.read_text().splitlines()
    lines[3] = bad_line
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError) as err:
        parse_attributes(p)
    assert err.value.line == 4 and err.value.path == p
    assert f"{p}, line 4" in str(err.value) and expect in str(err.value)


def test_count_line_must_match_rows(tmp_path):
    with pytest.raises(DatasetFormatError, match="count line says 5 rows but the file has 3"):
        parse_attributes(write_attr(tmp_path / "list_attr_celeba.txt", count=5))
    p = tmp_path / "bad_count.txt"
    p.write_text("three\nMale\n000001.jpg 1\n")
    with pytest.raises(DatasetFormatError, match="line 1: expected the row count"):
        parse_attributes(p)


def test_datamodule_reads_official_layout(synth_celeba):
    dm = CelebADataModule(synth_celeba, num_workers=0, image_size=32)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.tables.items()}
    assert sum(sizes.values()) == 120 and set(sizes) == {"train", "val", "test"}
    ids = {k: set(v.identities.tolist()) for k, v in dm.tables.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])   # identity-disjoint partition
    sample = dm.dataset("test")[0]
    assert sample["image"].shape == (3, 32, 32) and sample["label"].shape == (dm.task.n_label_slots,)
    assert sample["landmarks"].shape == (5, 2) and sample["identity"] >= 0 and sample["index"] == 0
    assert set(dm.task.names) <= set(CELEBA_ATTRIBUTES)


def test_missing_image_and_missing_partition_are_clear_errors(tmp_path, synth_celeba):
    root = tmp_path / "celeba"
    shutil.copytree(synth_celeba, root)
    (root / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba: 1 image\(s\) listed in list_attr_celeba.txt are missing, e.g. 000007.jpg"):
        CelebADataModule(root, num_workers=0).setup()
    root2 = tmp_path / "celeba2"
    shutil.copytree(synth_celeba, root2)
    (root2 / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt: file is missing"):
        CelebADataModule(root2, num_workers=0).setup()


def test_attribute_subset_and_unknown_name(synth_celeba):
    dm = CelebADataModule(synth_celeba, num_workers=0, attributes=["Smiling", "Male"])
    dm.setup()
    assert dm.task.names == ("Smiling", "Male") and dm.tables["train"].labels.shape[1] == 2
    with pytest.raises(ValueError, match="unknown attribute"):
        CelebADataModule(synth_celeba, num_workers=0, attributes=["Smiling", "Smilling"]).setup()


def test_real_celeba_subset_official_split():
    root = shared_data("celeba_subset")
    dm = CelebADataModule(root, num_workers=0, verify_images="none")
    dm.setup()
    assert {k: len(v) for k, v in dm.tables.items()} == {"train": 4560, "val": 780, "test": 660}
    assert dm.task.names == CELEBA_ATTRIBUTES and dm.task.n_logits == 40
    assert all(((t.labels == 0) | (t.labels == 1)).all() for t in dm.tables.values())
    assert sum(len(np.unique(t.identities)) for t in dm.tables.values()) == 200


def test_inspect_prints_splits_prevalence_identities_and_duplicates(synth_celeba, tmp_path, capsys):
    import json

    from facebench.benchmarks.cli import main

    root = tmp_path / "celeba"
    shutil.copytree(synth_celeba, root)
    shutil.copy(root / "img_align_celeba" / "000001.jpg", root / "img_align_celeba" / "000120.jpg")  # same bytes
    assert main(["inspect", "--dataset", "celeba", "--root", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sum(s["samples"] for s in info["splits"].values()) == 120
    assert 0.0 <= info["splits"]["train"]["prevalence"]["Male"] <= 1.0
    assert info["identity_overlap"] == {"train/val": 0, "train/test": 0, "val/test": 0}
    assert [sorted(p.split(":")[1] for p in g) for g in info["duplicates"]] == [
        ["img_align_celeba/000001.jpg", "img_align_celeba/000120.jpg"]]
    assert main(["inspect", "--dataset", "celeba", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "samples: train" in text and "duplicate images (same bytes): 1 group(s)" in text and "Male" in text
