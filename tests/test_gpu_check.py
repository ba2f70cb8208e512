"""The GPU check script (``benchmarks/perf/gpu_check.py``, issue 25): one line and its own exit code
without a GPU; with ``--cpu-smoke`` the same code path on the CPU writes every configuration's row."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synth import synth_celeba_at

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED_COLUMNS = ["model", "dataset", "variant", "device", "precision", "channels_last", "torch_compile", "augment_on",
                    "batch_size", "input_size", "steps", "warmup_s", "images_per_s", "steps_per_s", "vs_suite",
                    "gpu_util_pct", "peak_gpu_mem_mb", "train_images", "epoch_s", "celeba_full_epoch_s", "note"]


def test_without_a_gpu_one_line_and_exit_69(monkeypatch, capsys, tmp_path):
    import torch

    from facebench.benchmarks.perf import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never.csv"
    assert gpu_check.main(["--out", str(out)]) == gpu_check.EXIT_NO_GPU == 69
    captured = capsys.readouterr()
    lines = (captured.out + captured.err).strip().splitlines()
    assert lines == ["[facebench] gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); nothing measured "
                     "(--cpu-smoke runs the same code on the CPU)"]
    assert not out.exists()


def test_ratios_and_the_bottleneck_verdict():
    from facebench.benchmarks.perf.gpu_check import CELEBA_FULL_TRAIN, add_ratios

    def row(dataset: str, variant: str, ips: float, **kw: object) -> dict:
        base = {"model": "m", "dataset": dataset, "variant": variant, "images_per_s": ips, "steps_per_s": ips / 100,
                "celeba_full_epoch_s": CELEBA_FULL_TRAIN / ips, "precision": "bf16-mixed", "channels_last": True,
                "torch_compile": True, "note": ""}
        return {**base, **kw}

    rows = [row("celeba", "suite", 2000.0), row("celeba", "no_bf16", 1000.0, precision="32-true"),
            row("gpu_tensors", "suite", 4000.0)]
    lines = add_ratios(rows)
    assert [r["vs_suite"] for r in rows] == [1.0, 0.5, 1.0]
    assert "m: bf16-mixed on / off = 2.00x (2,000 vs 1,000 images/s)" in lines
    assert any("= 0.50: the input pipeline is the bottleneck" in line for line in lines)
    assert "input pipeline is the bottleneck" in rows[0]["note"]
    rows[2]["steps_per_s"] = 20.5   # the loader reaches >= 90 % of the on-device rate
    assert any("the model's compute is the bottleneck" in line for line in add_ratios(rows))


@pytest.fixture(scope="module")
def tiny_celeba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_celeba_at(tmp_path_factory.mktemp("gpu_check") / "celeba", n_identities=8, images_per_identity=4,
                           image_size=48, seed=3)


@pytest.mark.slow
def test_cpu_smoke_writes_every_configuration(tiny_celeba, tmp_path, capsys):
    from facebench.benchmarks.perf import gpu_check

    out = tmp_path / "gpu_check.csv"
    assert gpu_check.main(["--cpu-smoke", "--celeba-root", str(tiny_celeba), "--work-dir", str(tmp_path / "work"),
                           "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=True)
    assert list(table.columns) == EXPECTED_COLUMNS
    expected = {(m, d, v) for m in ("resnet18", "mcnn") for d, v in [
        ("celeba", "suite"), ("celeba", "no_bf16"), ("celeba", "no_channels_last"), ("celeba", "no_compile"),
        ("synthfaces", "suite"), ("gpu_tensors", "suite")]}
    assert set(zip(table["model"], table["dataset"], table["variant"])) == expected and len(table) == len(expected)
    for column in ("warmup_s", "images_per_s", "steps_per_s", "vs_suite", "epoch_s", "celeba_full_epoch_s"):
        values = table[column].to_numpy(dtype=float)
        assert np.isfinite(values).all() and (values > 0).all(), (column, values)
    np.testing.assert_allclose(table["images_per_s"], table["steps_per_s"] * table["batch_size"], rtol=1e-9)
    np.testing.assert_allclose(table["celeba_full_epoch_s"] * table["images_per_s"], 162_770, rtol=1e-9)
    np.testing.assert_allclose(table["epoch_s"] * table["images_per_s"], table["train_images"], rtol=1e-9)
    assert table["gpu_util_pct"].isna().all() and table["peak_gpu_mem_mb"].isna().all()   # no GPU figures on CPU
    assert set(table["device"]) == {"cpu"} and (table["steps"] == 2).all()
    # each variant turned its setting off, and only that one; the suite's settings otherwise
    by = table.set_index(["model", "dataset", "variant"])
    for m in ("resnet18", "mcnn"):
        assert by.loc[(m, "celeba", "suite"), "precision"] == "bf16-mixed"
        assert by.loc[(m, "celeba", "no_bf16"), "precision"] == "32-true"
        assert bool(by.loc[(m, "celeba", "suite"), "channels_last"])
        assert not bool(by.loc[(m, "celeba", "no_channels_last"), "channels_last"])
        assert by.loc[(m, "celeba", "suite"), "augment_on"] == "batch"
        assert by.loc[(m, "celeba", "suite"), "input_size"] == 64
        assert math.isclose(by.loc[(m, "celeba", "suite"), "vs_suite"], 1.0)
    assert not table["torch_compile"].any() and table["note"].str.contains("CPU smoke test").all()
    printed = capsys.readouterr().out
    assert "resnet18: bf16-mixed on / off" in printed and "one full CelebA epoch (162,770 images)" in printed
