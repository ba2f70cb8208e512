"""The ``facebench`` command tells what it has and fails early: ``-h`` lists every command, ``list``
answers in well under 3 s from the source (and agrees with the imported registries), a trainer-key
typo or an unknown timm backbone fails in a second with one line, warnings are one line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "report", "evaluate", "synth", "inspect", "predict", "analyze", "list")


def facebench(*args: str, env: dict | None = None, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, float]:
    """The installed command (as a user runs it), and its wall time."""
    script = Path(sys.executable).parent / "facebench"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "facebench"]
    start = time.perf_counter()
    proc = subprocess.run(cmd + list(args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    return proc, time.perf_counter() - start


def test_help_lists_every_command_with_one_line():
    proc, _ = facebench("-h")
    assert proc.returncode == 0
    for command in COMMANDS:
        line = next((l for l in proc.stdout.splitlines() if l.split()[:1] == [command]), None)
        assert line is not None and len(line.split()) > 2, f"{command} missing from facebench -h:\n{proc.stdout}"


@pytest.mark.parametrize("what", ["methods", "datasets", "suites", "weightings"])
def test_list_answers_in_under_3_seconds(what):
    proc, seconds = facebench("list", what, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) and seconds < 3.0, f"facebench list {what} took {seconds:.1f} s"


def test_list_methods_shows_paper_arguments_and_whole_descriptions():
    proc, _ = facebench("list", "methods")
    text = " ".join(proc.stdout.split())
    assert 'paper: Hand & Chellappa, "Attributes for Improved Attributes' in text
    assert "backbone='resnet18': a timm model name" in text and "Every method also takes: optimizer, scheduler" in text
    import ast

    tree = ast.parse((REPO / "lightning_modules" / "baselines.py").read_text())
    doc = next(ast.get_docstring(n) for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TimmBaseline")
    first = " ".join(doc.split("\n\n")[0].replace("``", "").split())
    assert first in text   # the whole first paragraph, never cut mid-sentence


def test_list_datasets_shows_expected_files_and_columns():
    proc, _ = facebench("list", "datasets")
    text = " ".join(proc.stdout.split())
    assert "list_attr_celeba.txt: line 1 the number of images" in text
    assert "labels.csv (csv_file): a header row; the `path` column (path_column)" in text and "path_column='path'" in text


@pytest.mark.slow   # imports every method and dataset module (seconds)
def test_the_source_index_agrees_with_the_imported_registries():
    from facebench.core.config import constructor_options
    from facebench.datamodules.base import FaceDataModule, datamodule_names, get_datamodule_class
    from facebench.datamodules.listing import dataset_rows
    from facebench.lightning_modules.describe import builtin_method_rows, common_arguments
    from facebench.lightning_modules.registry import get_method_class, method_names

    rows = builtin_method_rows()
    assert [r["method"] for r in rows] == method_names()
    common = {a["name"] for a in common_arguments()}
    for r in rows:
        cls = get_method_class(r["method"])
        assert {a["name"] for a in r["arguments"]} | common == cls.config_keys(), r["method"]
        assert (r["class"], r["paper"], r["task_kinds"], r["input"]) == (
            cls.__name__, cls.paper, ",".join(sorted(cls.task_kinds)), f"{cls.input_channels}x{cls.input_size}x{cls.input_size}")
        assert cls.paper, f"{r['method']} names no paper (class attribute paper)"
    drows = dataset_rows()
    assert [r["dataset"] for r in drows] == datamodule_names()
    base = constructor_options(FaceDataModule, FaceDataModule)
    for r in drows:
        cls = get_datamodule_class(r["dataset"])
        assert {a["name"] for a in r["arguments"]} | base == constructor_options(cls, FaceDataModule), r["dataset"]
        assert r["expected_files"] == cls.expected_files and r["expected_files"], r["dataset"]


def test_timm_names_read_from_the_source_are_timm_s():
    import timm

    from facebench.benchmarks.suite_checks import timm_model_names

    assert set(timm.list_models()) <= timm_model_names()
    assert all(timm.is_model(n) for n in timm_model_names())


def bad_suite(tmp_path: Path, trainer: dict | None = None, backbone: str = "test_resnet") -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bad", "trainer": {"max_epochs": 1, **(trainer or {})},
        "datasets": {"d": {"datamodule": "synthfaces"}},
        "methods": {"r": {"method": "timm", "args": {"backbone": backbone}}, "m": {"method": "majority"}}}))
    return path


@pytest.mark.parametrize("source", ["yaml", "--set"])
@pytest.mark.parametrize("kind,expected", [
    ("trainer", "unknown key 'limit_train_batchs' in trainer"),
    ("backbone", "methods.r.args.backbone"),
])
def test_a_typo_fails_in_under_5_seconds_with_one_line(tmp_path, source, kind, expected):
    if kind == "trainer":
        path = bad_suite(tmp_path, trainer={"limit_train_batchs": 2} if source == "yaml" else None)
        sets = ["--set", "trainer.limit_train_batchs=2"] if source == "--set" else []
    else:
        path = bad_suite(tmp_path, backbone="resnet_18" if source == "yaml" else "test_resnet")
        sets = ["--set", "methods.r.args.backbone=resnet_18"] if source == "--set" else []
    proc, seconds = facebench("run", str(path), *sets, "--results", str(tmp_path / "results"))
    assert proc.returncode == 2 and seconds < 5.0, (seconds, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0] and "Traceback" not in proc.stderr
    assert ("did you mean limit_train_batches" if kind == "trainer" else "closest: resnet18") in lines[0]
    assert ("(from --set)" in lines[0]) == (source == "--set")


def test_trainer_keys_facebench_sets_itself_are_refused(tmp_path):
    from facebench.benchmarks.suite import SuiteConfigError, load_suite

    with pytest.raises(SuiteConfigError, match=r"trainer.callbacks cannot be set: facebench adds checkpointing"):
        load_suite(str(bad_suite(tmp_path, trainer={"callbacks": []})), results_root=tmp_path)
    with pytest.raises(SuiteConfigError, match=r"early_stopping.mode is 'maximum'; expected one of min, max"):
        load_suite(str(bad_suite(tmp_path)), results_root=tmp_path, overrides={"early_stopping": {"mode": "maximum"}})


def test_warnings_are_one_line_and_library_warnings_need_verbose():
    code = ("from facebench.benchmarks.logging_setup import configure_output\n"
            "configure_output()\n"
            "import warnings\n"
            "warnings.warn('a facebench\\nwarning', UserWarning)\n"
            "import numpy\n"
            "numpy.mean([])\n")   # numpy warns from its own code: a library warning
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "FACEBENCH_VERBOSE": "0"})
    assert quiet.stderr.splitlines() == ["[facebench] warning: a facebench warning"], quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FACEBENCH_VERBOSE": "1"})
    lines = loud.stderr.splitlines()
    assert lines[:2] == ["[facebench] warning: a facebench warning", "[facebench] warning (numpy): Mean of empty slice"]
    assert all(line.startswith("[facebench] warning (numpy): ") for line in lines[1:]), loud.stderr


def test_a_one_class_test_split_warns_naming_the_target(recwarn):
    from facebench.core.tasks import Target, TaskSpec
    from facebench.datamodules.describe import single_class_targets, warn_single_class_targets

    task = TaskSpec((Target("Smiling"), Target("Male"), Target("acc", "multilabel", ("hat", "glasses"))))
    labels = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [1, -1, 0, 1]])
    assert single_class_targets(task, labels) == [("Smiling", "yes", 3), ("acc/hat", "no", 3)]
    class Table:
        def __init__(self, labels: np.ndarray):
            self.labels = labels

        def __len__(self) -> int:
            return len(self.labels)

    dm = SimpleNamespace(registered_name="tiny", task=task, tables={"test": Table(labels)})
    (message,) = warn_single_class_targets(dm, ["test"])
    assert "the test split has one class only for 2 target(s): Smiling (all 3 'yes'), acc/hat" in message
    assert "balanced accuracy, recall, AUROC and average precision are undefined (NaN)" in message
    assert any("Smiling" in str(w.message) for w in recwarn)


def test_train_samples_respect_limit_train_batches():
    from facebench.benchmarks.worker import trained_samples

    dm = SimpleNamespace(tables={"train": list(range(50))}, batch_size=16)
    assert trained_samples(SimpleNamespace(num_training_batches=4, world_size=1), dm) == 50     # the whole split
    assert trained_samples(SimpleNamespace(num_training_batches=1, world_size=1), dm) == 16     # limit_train_batches: 1
    assert trained_samples(SimpleNamespace(num_training_batches=1, world_size=2), dm) == 32     # per rank x ranks
    assert trained_samples(SimpleNamespace(num_training_batches=float("inf"), world_size=1), dm) == 50


def test_output_cut_short_by_a_closed_pipe_is_not_an_error():
    """``facebench list methods | head -1``: no BrokenPipeError traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "facebench", "list", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()                      # closed before the command writes: its first write meets EPIPE
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "BrokenPipe" not in err and "Traceback" not in err
