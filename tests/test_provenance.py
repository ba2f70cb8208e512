"""Provenance a result can be rerun from: the code hash, the git state of the checkout (results are
not code), the refusal to write committed results from a modified tree, file permissions."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from facebench.benchmarks import provenance, runner
from facebench.benchmarks.report import mixed_code_versions, run_provenance
from facebench.benchmarks.suite import SuiteConfigError
from facebench.core.io import write_csv, write_json, write_text


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture()
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small git checkout with a package folder and a results folder, as SOURCE_ROOT."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "results" / "quick").mkdir(parents=True)
    (repo / "benchmarks" / "stats.py").write_text("X = 1\n")
    (repo / "results" / "quick" / "leaderboard.csv").write_text("a\n1\n")
    (repo / "README.md").write_text("readme\n")
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    _git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "SOURCE_ROOT", repo)
    monkeypatch.setattr(runner, "SOURCE_ROOT", repo)
    provenance.tree_state.cache_clear()
    yield repo
    provenance.tree_state.cache_clear()


def _state():
    provenance.tree_state.cache_clear()
    return provenance.tree_state()


def test_results_and_stray_files_do_not_make_a_tree_dirty(checkout: Path):
    assert not _state().dirty and len(_state().commit) == 40
    (checkout / "results" / "quick" / "leaderboard.csv").write_text("a\n2\n")      # make bench rewrote results
    (checkout / "results" / "quick" / "new.csv").write_text("b\n")
    (checkout / "notes.txt").write_text("scratch\n")                               # an untracked non-code file
    assert not _state().dirty


@pytest.mark.parametrize("change", ["modified code", "untracked module", "modified readme"])
def test_code_changes_make_a_tree_dirty(checkout: Path, change: str):
    if change == "modified code":
        (checkout / "benchmarks" / "stats.py").write_text("X = 2\n")
    elif change == "untracked module":
        (checkout / "benchmarks" / "extra.py").write_text("Y = 1\n")
    else:
        (checkout / "README.md").write_text("changed\n")
    state = _state()
    assert state.dirty and state.commit.endswith("+dirty") and len(state.changed) == 1


def test_runs_into_the_checkouts_results_refuse_a_dirty_tree(checkout: Path, tmp_path: Path):
    (checkout / "benchmarks" / "stats.py").write_text("X = 3\n")
    _state()
    with pytest.raises(SuiteConfigError, match=r"uncommitted changes \(benchmarks/stats.py\).*--allow-dirty"):
        runner.check_tree(checkout / "results" / "quick", allow_dirty=False)
    assert runner.check_tree(checkout / "results" / "quick", allow_dirty=True).endswith("+dirty")
    assert runner.check_tree(tmp_path / "elsewhere", allow_dirty=False).endswith("+dirty")   # not committed results


def test_code_hash_covers_every_module_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    sources = provenance._package_sources()
    names = [n for n, _ in sources]
    for expected in ("facebench.core.io", "facebench.benchmarks.runner", "facebench.datamodules.base",
                     "facebench.lightning_modules.base"):
        assert expected in names
    assert all(p.suffix == ".py" for _, p in sources)
    before = provenance.code_hash()
    copy = tmp_path / "io.py"
    copy.write_text(dict(sources)["facebench.core.io"].read_text() + "\n# changed\n")
    monkeypatch.setattr(provenance, "_package_sources",
                        lambda: [(n, copy if n == "facebench.core.io" else p) for n, p in sources])
    provenance.code_hash.cache_clear()
    try:
        assert provenance.code_hash() != before and len(before) == 12
    finally:
        provenance.code_hash.cache_clear()


def test_written_files_get_normal_permissions(tmp_path: Path):
    old = os.umask(0o022)
    try:
        for path in (write_text(tmp_path / "a.txt", "x"), write_json(tmp_path / "b.json", {}),
                     write_csv(tmp_path / "c.csv", pd.DataFrame({"a": [1]}))):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_the_leaderboard_names_methods_whose_seeds_ran_on_different_code(tmp_path: Path):
    board = pd.DataFrame({"method": ["a", "a", "b", "b"], "dataset": ["d"] * 4, "seed": [0, 1, 0, 1],
                          "config_hash": ["c0", "c1", "c2", "c3"], "code_hash": ["h1", "h2", "h3", "h3"],
                          "git_commit": ["g1", "g2", "g3", "g3"]})
    prov = run_provenance(board, tmp_path)
    assert prov["a--d--s1"] == {"config_hash": "c1", "code_hash": "h2", "git_commit": "g2", "command": ""}
    assert mixed_code_versions(prov, board) == {"a on d": ["h1", "h2"]}
