"""The GPU suite's settings exercised on CPU (issue 13): ``benchmarks/suites/celeba_h100.yaml`` as
written, with only what a CPU and a small test folder need overridden (device, sizes, steps), so
that a typo or a dtype error in the GPU path (``precision: bf16-mixed``, ``channels_last``,
``torch_compile``, ``augment_on: batch`` with the image cache) fails here instead of in a user's
first cluster job.

torch.compile on CPU generates C++ (inductor) and needs a C++ compiler; without one the test says
so (an environment limit, not a facebench bug) instead of failing somewhere inside inductor.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from synth import synth_celeba_at

#: The MCNN run of celeba_h100 at a small input (64 px crops of 72 px: Conv1 stride 1), a few steps.
CPU_OVERRIDES: dict[str, Any] = {
    "seeds": [0], "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2, "trainer.limit_val_batches": 1, "trainer.limit_test_batches": 1,
    "trainer.log_every_n_steps": 1,
    "datasets.celeba.args.batch_size": 8, "datasets.celeba.args.num_workers": 0,
    "datasets.celeba.args.image_cache": True,   # auto leaves a 64-image split uncached (min_images 1000)
    "methods.mcnn.args.input_size": 64, "methods.mcnn.args.mean_images": 16,
}


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use ($CXX, else g++ / c++ / clang++ on PATH)."""
    for name in filter(None, [os.environ.get("CXX"), "g++", "c++", "clang++"]):
        if shutil.which(name):
            return name
    return None


@pytest.fixture(scope="module")
def synth_celeba_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SynthFaces in CelebA's layout: 64 images (16 identities x 4), 48 px."""
    return synth_celeba_at(tmp_path_factory.mktemp("h100_on_cpu") / "celeba", n_identities=16, images_per_identity=4,
                           image_size=48, seed=5)


def test_the_overrides_keep_every_gpu_setting_of_the_suite(synth_celeba_64, tmp_path):
    """What the slow test runs is the suite's GPU configuration, not a CPU variant of it."""
    from facebench.benchmarks.suite import load_suite

    suite = load_suite("celeba_h100", overrides={**CPU_OVERRIDES, "results_dir": str(tmp_path),
                                                 "datasets.celeba.args.root": str(synth_celeba_64)})
    cfg = next(r.config for r in suite.runs if r.method_key == "mcnn")
    assert cfg["trainer"]["precision"] == "bf16-mixed" and cfg["trainer"]["benchmark"] is True
    assert cfg["method"]["args"] == {"channels_last": True, "torch_compile": True, "input_size": 64, "mean_images": 16}
    args = cfg["dataset"]["args"]
    assert args["augment_on"] == "batch" and args["image_cache"] is True
    assert args["pin_memory"] is True and args["persistent_workers"] is True


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_celeba_h100_settings_train_and_evaluate_on_cpu(synth_celeba_64, tmp_path, monkeypatch):
    """``facebench run celeba_h100 --only mcnn`` on CPU: bf16 autocast, channels_last, torch.compile,
    batch augmentation of cached stage-1 images; the run finishes with finite losses and records."""
    compiler = cxx_compiler()
    if compiler is None:
        pytest.skip("environment: torch.compile on CPU (inductor) needs a C++ compiler and none was found "
                    "($CXX, g++, c++, clang++); install one (e.g. apt-get install g++) to run this test")
    import torch
    import torch._dynamo

    import facebench.benchmarks.worker as worker
    import facebench.datamodules.base as base
    import facebench.lightning_modules.registry as registry
    from facebench.benchmarks.runner import run_suite

    seen: dict[str, Any] = {}
    build, create_dm, create_method = worker.build_trainer, base.create_datamodule, registry.create_method

    def capture(key: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            seen[key] = fn(*a, **k)
            return seen[key]
        return wrapped

    monkeypatch.setattr(worker, "build_trainer", capture("trainer", build))
    monkeypatch.setattr(base, "create_datamodule", capture("dm", create_dm))
    monkeypatch.setattr(registry, "create_method", capture("model", create_method))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    overrides = {**CPU_OVERRIDES, "results_dir": str(tmp_path / "results"), "datasets.celeba.args.root": str(synth_celeba_64)}
    outcomes = run_suite("celeba_h100", only=["mcnn"], overrides=overrides, in_process=True, report=False)

    run_dir = tmp_path / "results" / "runs" / "mcnn--celeba--s0"
    status = json.loads((run_dir / "status.json").read_text())
    assert [o.state for o in outcomes] == ["done"], (status.get("error"), status.get("traceback"))
    assert status["state"] == "done"
    # the settings were in effect, not silently dropped
    trainer, dm, model = seen["trainer"], seen["dm"], seen["model"]
    assert trainer.precision == "bf16-mixed"
    assert dm._batch_augment is not None, "augment_on: batch did not run the batched warp"
    assert dm.report["image_cache"] and all(v == "image_cache is on" for v in dm.report["image_cache"].values())
    assert any(s is not None for s in dm._stored.values()), "no split was read from the image cache"
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert "forward" in model.__dict__, "torch_compile: true did not compile forward"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, \
        f"torch.compile produced no graph (compiler {compiler}): {dict(torch._dynamo.utils.counters)}"
    # finite losses
    log = pd.read_csv(run_dir / "logs" / "metrics.csv")
    losses = log["train/loss_step"].dropna().to_numpy()
    assert len(losses) == 2 and np.isfinite(losses).all(), losses
    val = log["val/loss"].dropna().to_numpy()
    assert len(val) and np.isfinite(val).all(), val
    # records
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert set(metrics["split"]) >= {"val", "test"} and len(metrics) > 0
    for split in ("val", "test"):
        with np.load(run_dir / f"predictions_{split}.npz") as pred:
            scores = [pred[k] for k in pred.files if pred[k].dtype.kind == "f"]
            assert scores and all(np.isfinite(s).all() for s in scores), split
    assert math.isfinite(float(status["summary"]["mean_accuracy"]))
