"""Every suite shipped in ``benchmarks/suites`` loads, validates (registered methods and datasets,
every argument one their constructors take) and expands to runs; dataset roots need not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from facebench.benchmarks.suite import load_suite
from facebench.datamodules.base import datamodule_names
from facebench.lightning_modules.registry import method_names

SUITE_FILES = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "suites").glob("*.yaml"))


def test_suites_are_found() -> None:
    assert SUITE_FILES, "no suite files under benchmarks/suites"


@pytest.mark.parametrize("path", SUITE_FILES, ids=[p.stem for p in SUITE_FILES])
def test_suite_loads_and_expands(path: Path, tmp_path: Path) -> None:
    suite = load_suite(str(path), results_root=tmp_path)
    assert suite.runs, f"{path.name} expands to no run"
    ids = [r.run_id for r in suite.runs]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate run ids"
    position = {run_id: i for i, run_id in enumerate(ids)}
    for run in suite.runs:
        assert run.config["method"]["name"] in method_names()
        assert run.config["dataset"]["datamodule"] in datamodule_names()
        if run.depends_on:   # a later stage runs after the stage it starts from
            assert position[run.depends_on] < position[run.run_id]
