"""Committed results are never silently replaced, and what they keep is enough to rerun and to
recompute: a suite run from a file outside the repository, in a fresh clone's state (no local run
folders), re-run in part, with ``--set``, and with an edited suite file."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from facebench.benchmarks.records import committed_run_records, load_predictions


def facebench(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facebench", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def suite_yaml(synth_root: Path, max_epochs: int = 1) -> str:
    return yaml.safe_dump({
        "name": "tiny_safe", "seeds": [0, 1],
        "trainer": {"max_epochs": max_epochs, "accelerator": "cpu", "devices": 1},
        "logging": {"wandb": {"enabled": False}},
        "datasets": {"synth": {"datamodule": "synthfaces", "subgroups": ["Male"], "args": {
            "root": str(synth_root), "n_identities": 24, "images_per_identity": 4, "render_size": 32,
            "batch_size": 16, "num_workers": 0}}},
        "methods": {"majority": {"method": "majority"}},
    })


@pytest.mark.slow
def test_committed_results_survive_partial_reruns_overrides_and_edited_suites(tmp_path: Path):
    work = tmp_path / "work"               # the user's directory, outside the repository
    work.mkdir()
    suite = tmp_path / "elsewhere" / "mysuite.yaml"
    suite.parent.mkdir()
    suite.write_text(suite_yaml(tmp_path / "synth"))
    proc = facebench(work, "run", str(suite))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = work / "results" / "tiny_safe"          # under the current directory
    board = results / "leaderboard.csv"

    # the suite's report settings come from the run, not from benchmarks/suites/: subgroups of a suite file elsewhere
    assert (results / "subgroups.csv").is_file() and "Male" in (results / "subgroups.csv").read_text()
    assert yaml.safe_load((results / "suite.yaml").read_text())["source"] == str(suite)

    # each run's committed record: command, hashes, commit, compact test predictions
    record = json.loads((results / "records" / "majority--synth--s0.json").read_text())
    assert record["command"].startswith("facebench run ") and str(suite) in record["command"]
    assert len(record["config_hash"]) == 12 and len(record["code_hash"]) == 12 and record["git_commit"]
    compact = results / "records" / "majority--synth--s0.test.csv.gz"
    assert compact.stat().st_size < 1_000_000
    header = gzip.decompress(compact.read_bytes()).decode().splitlines()[0].split(",")
    assert header[0] == "id" and "Male" in header
    # ... from which the image-level records are rebuilt with the dataset's labels
    local = load_predictions(results / "runs" / "majority--synth--s0", "test")
    rebuilt = {r.seed: r for r in committed_run_records(results)}[0]
    order = np.argsort(local["ids"])
    assert list(rebuilt.predictions["ids"]) == list(local["ids"])
    np.testing.assert_array_equal(rebuilt.predictions["labels"][order], local["labels"][order])
    np.testing.assert_allclose(rebuilt.predictions["probs"], local["probs"], atol=1e-3)

    # a fresh clone: no run folders, only the committed files
    shutil.rmtree(results / "runs")
    committed = board.read_bytes()
    val_board = results / "leaderboard.val.csv"            # the validation split's rows, beside the test splits'
    committed_val = val_board.read_bytes()
    assert {line.split(",")[2] for line in committed.decode().splitlines()[1:]} == {"test"}
    assert {line.split(",")[2] for line in committed_val.decode().splitlines()[1:]} == {"val"}
    proc = facebench(work, "report", str(results))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert board.read_bytes() == committed                 # the report keeps every committed row
    assert val_board.read_bytes() == committed_val

    # a smoke test with --set goes to its own folder
    proc = facebench(work, "run", str(suite), "--only", "majority--synth--s0", "--set", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "tiny_safe+set-" in proc.stdout
    assert board.read_bytes() == committed and val_board.read_bytes() == committed_val
    assert len(list((work / "results").glob("tiny_safe+set-*/runs/*"))) == 1

    # an edited suite file stops before any work, naming the runs and how to force it
    suite.write_text(suite_yaml(tmp_path / "synth", max_epochs=3))
    proc = facebench(work, "run", str(suite), "--only", "majority--synth--s0")
    assert proc.returncode == 2
    assert "majority--synth--s0" in proc.stderr and "--force" in proc.stderr and "another config" in proc.stderr
    assert board.read_bytes() == committed and not (results / "runs").exists()

    # re-running one run of the suite as committed keeps the other run's committed rows
    suite.write_text(suite_yaml(tmp_path / "synth"))
    proc = facebench(work, "run", str(suite), "--only", "majority--synth--s1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    seeds = {line.split(",")[3] for line in board.read_text().splitlines()[1:]}
    assert seeds == {"0", "1"}
    assert "kept the committed rows of 1 run(s)" in proc.stdout


COMMITTED = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("suite_dir", sorted(p.parent for p in COMMITTED.glob("*/leaderboard.csv")), ids=lambda p: p.name)
def test_committed_leaderboards_are_small_and_read_back_to_their_bytes(suite_dir: Path, tmp_path: Path):
    """Every committed suite leaderboard is split by split (test splits in leaderboard.csv, the others
    in leaderboard.<split>.csv), each file under the repository's 2 MB guideline, and reading the
    files as one board and writing it again gives the same bytes."""
    from facebench.benchmarks.report import read_board, write_board

    files = sorted(suite_dir.glob("leaderboard*.csv"))
    for f in files:
        assert f.stat().st_size < 2_000_000, f"{f}: {f.stat().st_size} bytes"
    board = read_board(suite_dir / "leaderboard.csv")
    assert board["split"].str.startswith("test").any()
    written = write_board(board, tmp_path)
    assert sorted(p.name for p in written) == [f.name for f in files]
    for f in files:
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
