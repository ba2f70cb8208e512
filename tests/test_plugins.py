"""Your own method, three ways, from a module outside the repository: a registered class in a plugin
module (the suite's ``plugins:`` or ``facebench run --plugins``), an import path as the method
(``module:ClassName``) and a ``facebench.methods`` entry point of an installed package. Each runs
in the suite's worker subprocess; the method contract holds for a plugin method; every failure to
load one is a one-line error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from facebench.benchmarks.suite import SuiteConfigError, load_suite
from facebench.core.plugins import PLUGINS_ENV, PluginError
from facebench.lightning_modules.registry import METHODS, get_method_class

#: The README's example (section "Your own method"): a complete method in 25 lines.
TINYCNN = '''\
"""mymethods/tinycnn.py: a method of your own for facebench."""
from torch import nn

from facebench.lightning_modules.base import FaceAttributeTask
from facebench.lightning_modules.registry import register_method


@register_method("tinycnn")
class TinyCNN(FaceAttributeTask):
    """Two convolutions and a linear layer: one output per logit of any task."""

    task_kinds = frozenset({"binary", "multiclass", "multilabel", "ordinal"})
    input_size = 32

    def __init__(self, task, *, width: int = 8, **kwargs):
        self.width = width   # before super().__init__, which calls configure_models
        super().__init__(task, **kwargs)

    def configure_models(self) -> None:
        w = self.width
        self.net = nn.Sequential(nn.Conv2d(self.in_chans, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(2 * w, self.task.n_logits))

    def forward(self, image):
        return self.net(image)
'''


def method_source(register_as: str | None) -> str:
    """The example, registered under another name or not at all (the import path and entry point routes)."""
    return TINYCNN.replace('"tinycnn"', f'"{register_as}"') if register_as else \
        TINYCNN.replace('@register_method("tinycnn")\n', "")


def write_package(folder: Path, package: str, register_as: str | None) -> Path:
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("")
    (folder / package / "tinycnn.py").write_text(method_source(register_as))
    return folder


def write_distribution(site: Path, package: str, entry_name: str) -> Path:
    """An installed package as pip leaves it: the code and a ``.dist-info`` with ``entry_points.txt``."""
    write_package(site, package, None)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[facebench.methods]\n{entry_name} = {package}.tinycnn:TinyCNN\n")
    return site


@pytest.fixture
def isolated_registry(monkeypatch):
    """Plugin modules register into the method registry of this process: undo it afterwards."""
    before = set(METHODS.names()) & set(METHODS._entries)   # facebench's own, loaded
    modules = set(sys.modules)
    yield
    for name in set(METHODS._entries) - before:
        del METHODS._entries[name]
    for name in set(sys.modules) - modules:
        if name.startswith(("myplug", "mymeth", "pathplug", "entryplug")):
            del sys.modules[name]


def suite_dict(synth: Path, methods: dict, **extra) -> dict:
    return {"name": "plugins", "seeds": [0], **extra,
            "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "log_every_n_steps": 1},
            "datasets": {"synth": {"datamodule": "synthfaces", "args": {
                "root": str(synth), "n_identities": 12, "images_per_identity": 4, "render_size": 32, "batch_size": 16,
                "num_workers": 0, "attributes": ["Male", "Smiling", "Eyeglasses"]}}},
            "methods": methods}


def test_import_path_method_and_its_errors(tmp_path, monkeypatch, isolated_registry):
    write_package(tmp_path, "pathplug", None)
    monkeypatch.chdir(tmp_path)   # the current directory is importable, as for python -m
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cls = get_method_class("pathplug.tinycnn:TinyCNN")
    assert cls.__name__ == "TinyCNN" and cls.method_name == "pathplug.tinycnn:TinyCNN"
    with pytest.raises(PluginError, match="method module 'nowhere.mod': no such module"):
        get_method_class("nowhere.mod:X")
    with pytest.raises(PluginError, match="has no 'Nope'"):
        get_method_class("pathplug.tinycnn:Nope")
    with pytest.raises(ValueError, match="not a subclass of facebench.lightning_modules.base.FaceAttributeTask"):
        get_method_class("pathplug.tinycnn:nn")
    (tmp_path / "pathplug" / "broken.py").write_text("x = 1\ndef f(:\n")
    with pytest.raises(PluginError, match=r"broken.py:2: .*is not valid Python"):
        get_method_class("pathplug.broken:X")


def test_entry_point_method_is_found_by_name_and_loaded_when_asked(tmp_path, monkeypatch, isolated_registry):
    site = write_distribution(tmp_path / "site", "entryplug", "entry_tinycnn")
    monkeypatch.syspath_prepend(str(site))
    from facebench.lightning_modules.registry import method_names

    assert "entry_tinycnn" in method_names() and "entryplug.tinycnn" not in sys.modules   # named, not imported
    cls = get_method_class("entry_tinycnn")
    assert cls.__name__ == "TinyCNN" and cls.method_name == "entry_tinycnn"


def test_suite_plugins_key_and_the_command_line_list(tmp_path, monkeypatch, isolated_registry):
    write_package(tmp_path, "mymethods", "tinycnn_suite")
    monkeypatch.chdir(tmp_path)
    synth = tmp_path / "synth"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite_dict(synth, {"m": {"method": "tinycnn_suite", "args": {"width": 4}},
                                                     "maj": {"method": "majority"}}, plugins=["mymethods.tinycnn"])))
    suite = load_suite(str(path), results_root=tmp_path / "r")
    assert {r.config["plugins"][0] for r in suite.runs} == {"mymethods.tinycnn"}
    # the plugin list never changes a run's config hash: a suite without plugins gives the same hashes
    plain = yaml.safe_load(path.read_text())
    del plain["plugins"], plain["methods"]["m"]
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    maj = next(r for r in suite.runs if r.method_key == "maj")
    assert load_suite(str(tmp_path / "plain.yaml"), results_root=tmp_path / "r").runs[0].config_hash == maj.config_hash
    # the command line's --plugins reaches load_suite through the environment
    del plain["methods"]["maj"]
    plain["methods"]["m"] = {"method": "tinycnn_suite"}
    (tmp_path / "cli.yaml").write_text(yaml.safe_dump(plain))
    monkeypatch.setenv(PLUGINS_ENV, "mymethods.tinycnn")
    assert load_suite(str(tmp_path / "cli.yaml"), results_root=tmp_path / "r").runs[0].config["plugins"] == ["mymethods.tinycnn"]
    monkeypatch.setenv(PLUGINS_ENV, "")
    plain["methods"]["m"] = {"method": "tinycnn_nowhere"}
    (tmp_path / "unknown.yaml").write_text(yaml.safe_dump(plain))
    with pytest.raises(SuiteConfigError, match="unknown method 'tinycnn_nowhere'.*import path module:ClassName"):
        load_suite(str(tmp_path / "unknown.yaml"), results_root=tmp_path / "r")
    plain["plugins"] = ["not_a_module"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(plain))
    with pytest.raises(SuiteConfigError, match=r"bad.yaml: plugins: plugin module 'not_a_module': no such module"):
        load_suite(str(tmp_path / "bad.yaml"), results_root=tmp_path / "r")


def test_the_method_contract_holds_for_a_plugin_method(tmp_path, monkeypatch, isolated_registry):
    from test_method_contract import test_method_contract

    write_package(tmp_path, "myplug", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    test_method_contract("myplug.tinycnn:TinyCNN", tmp_path)


def test_the_example_is_25_lines() -> None:
    assert len(TINYCNN.strip().splitlines()) <= 27   # the README's "a 25-line method" (docstring line included)


def console_script() -> list[str]:
    """The installed ``facebench`` command (its ``sys.path`` does not start with the current directory)."""
    script = Path(sys.executable).parent / "facebench"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "facebench"]


@pytest.mark.slow
def test_each_route_runs_in_the_worker_subprocess(tmp_path):
    """Acceptance: a method in a module outside the repository runs in a suite by each route, in the
    worker subprocess (no --in-process): --plugins, an import path, an entry point (PYTHONPATH)."""
    work = tmp_path / "work"   # the user's folder: their modules, their suite, their results
    write_package(work, "mymethods", "tinycnn")
    write_package(work, "pathplug", None)
    site = write_distribution(tmp_path / "site", "entryplug", "entry_tinycnn")
    methods = {"registered": {"method": "tinycnn", "args": {"width": 4}, "trainer": {"limit_train_batches": 1}},
               "by_path": {"method": "pathplug.tinycnn:TinyCNN", "args": {"width": 4}},
               "by_entry_point": {"method": "entry_tinycnn", "args": {"width": 4}}}
    (work / "suite.yaml").write_text(yaml.safe_dump(suite_dict(tmp_path / "synth", methods)))
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(console_script() + ["run", "suite.yaml", "--plugins", "mymethods.tinycnn"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for key, name in (("registered", "tinycnn"), ("by_path", "pathplug.tinycnn:TinyCNN"), ("by_entry_point", "entry_tinycnn")):
        run_dir = work / "results" / "plugins" / "runs" / f"{key}--synth--s0"
        status = yaml.safe_load((run_dir / "status.json").read_text())
        assert status["state"] == "done", status
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["method"]["name"] == name
        metrics = pd.read_csv(run_dir / "metrics.csv")
        # the training images one epoch saw: one batch of 16 under limit_train_batches: 1, else the split
        seen = int(metrics["train_samples"].iloc[0])
        assert seen == 16 if key == "registered" else seen > 16, (key, seen)
    assert "Traceback" not in proc.stderr
