"""GPU check (issue 25): the ``celeba_h100`` suite's settings on one GPU, measured in a few minutes.

``python -m facebench.benchmarks.perf.gpu_check [--celeba-root DIR] [--out gpu_check.csv] [--steps 60]
[--warmup 10] [--models resnet18 mcnn] [--variants suite no_bf16 no_channels_last no_compile]
[--work-dir DIR] [--cpu-smoke]`` (``benchmarks/perf/gpu_check.sh`` installs facebench without
dependencies into the image's Python and runs this with W&B off).

The settings are read from ``benchmarks/suites/celeba_h100.yaml`` (``load_suite``): ``precision:
bf16-mixed``, ``benchmark: true``, ``channels_last: true``, ``torch_compile: true``, ``augment_on:
batch`` with the image cache, the suite's batch size, workers and input sizes (MCNN and ResNet-18 at
227 px). Each configuration is built as the suite's worker builds a run (datamodule with the suite
defaults, the method's datamodule-derived arguments, ``configure_input``, ``build_trainer``) and
trained for ``--warmup`` + ``--steps`` steps (no validation, no checkpoints); per model:

* ``celeba`` (the real CelebA subset; ``--celeba-root``, default ``../shared/data/celeba_subset``
  beside the repository) with the suite's settings and with each of bf16 / channels_last / compile
  turned off (``--variants``), one after the other in this process, so the ratios compare;
* ``synthfaces``: SynthFaces rendered once under ``--work-dir`` (5,000 images at 128 px);
* ``gpu_tensors``: the same model and settings fed random tensors already on the device (no input
  pipeline): the GPU's own rate. Loader steps/s over on-device steps/s >= 0.9 says the GPU (the
  model's compute) is the bottleneck, below that the input pipeline is.

Measured per configuration: images/s and steps/s over the timed steps (the device synchronised at
both ends; warm-up, compilation and setup before the window, reported as ``warmup_s``), GPU
utilisation (``torch.cuda.utilization``, else ``nvidia-smi``, sampled every 0.1 s in a thread during
the window), peak GPU memory (``torch.cuda.max_memory_allocated``), the time of one epoch of the
dataset's training split and of full CelebA's 162,770 training images at that rate. The batches of
the check drop the last partial batch (the window may span epochs, and a smaller last batch would
make ``torch.compile`` recompile inside it). Written: ``--out`` (CSV) and a table on stdout.

Without a CUDA device it prints one line and exits with :data:`EXIT_NO_GPU`, unless ``--cpu-smoke``:
then the same code runs on the CPU, 2 timed steps per configuration at tiny sizes, with
``torch_compile`` off (inductor on CPU needs a C++ compiler and minutes; the row says so) and no
GPU figures (utilisation and memory left empty): a test of the logic, not a measurement.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: Exit status when no CUDA device is found (sysexits' EX_UNAVAILABLE).
EXIT_NO_GPU = 69
NO_GPU_LINE = ("[facebench] gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); nothing measured "
               "(--cpu-smoke runs the same code on the CPU)")
SUITE = "celeba_h100"
#: Training images of full CelebA's official split (the projected epoch).
CELEBA_FULL_TRAIN = 162_770
MODELS = ("resnet18", "mcnn")
#: The suite's settings, and each GPU setting turned off: (trainer overrides, method-argument overrides).
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "suite": ({}, {}),
    "no_bf16": ({"precision": "32-true"}, {}),
    "no_channels_last": ({}, {"channels_last": False}),
    "no_compile": ({}, {"torch_compile": False}),
}
#: Loader rate / on-device rate at or above which the GPU, not the input pipeline, limits training.
GPU_BOUND_RATIO = 0.9
COLUMNS = ["model", "dataset", "variant", "device", "precision", "channels_last", "torch_compile", "augment_on",
           "batch_size", "input_size", "steps", "warmup_s", "images_per_s", "steps_per_s", "vs_suite",
           "gpu_util_pct", "peak_gpu_mem_mb", "train_images", "epoch_s", "celeba_full_epoch_s", "note"]
#: CPU smoke test: tiny sizes, no workers; everything else as the suite has it.
SMOKE_OVERRIDES: dict[str, Any] = {
    "trainer.accelerator": "cpu", "trainer.devices": 1,
    "datasets.celeba.args.batch_size": 4, "datasets.celeba.args.num_workers": 0,
    "datasets.celeba.args.pin_memory": False, "datasets.celeba.args.image_cache": True,
    "datasets.celeba.args.max_samples": {"train": 24, "val": 4, "test": 4},
    "methods.mcnn.args.input_size": 64, "methods.mcnn.args.mean_images": 8,
    "methods.resnet18.args.input_size": 64, "methods.resnet18.datamodule_args.transforms.resize_to": 72,
}


def default_celeba_root() -> Path:
    """``../shared/data/celeba_subset`` beside the repository, else ``shared/data/celeba_subset`` inside it."""
    from facebench.benchmarks.perf.common import REPO, SHARED_CELEBA

    inside = REPO / "shared" / "data" / "celeba_subset"
    return inside if not SHARED_CELEBA.is_dir() and inside.is_dir() else SHARED_CELEBA


# ------------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------------
class UtilisationSampler:
    """GPU utilisation (%) sampled every ``interval`` s in a thread between :meth:`start` and :meth:`stop`:
    ``torch.cuda.utilization`` (NVML through pynvml), else ``nvidia-smi``; ``None`` on CPU."""

    def __init__(self, device: Any, interval: float = 0.1):
        import torch

        self.interval, self.samples, self.source = interval, [], None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            torch.cuda.utilization(self.index)
            self.source = "torch.cuda.utilization"
        except Exception:  # noqa: BLE001  (pynvml missing or NVML unavailable)
            if shutil.which("nvidia-smi"):
                self.source = "nvidia-smi"

    def read(self) -> float | None:
        import torch

        if self.source == "torch.cuda.utilization":
            return float(torch.cuda.utilization(self.index))
        out = subprocess.run(["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 and out.stdout.strip() else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.read()
            except (OSError, ValueError, subprocess.SubprocessError):
                value = None
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self.source and self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def stop(self) -> float:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return sum(self.samples) / len(self.samples) if self.samples else math.nan


def timed_window(first: int, device: Any, sampler: UtilisationSampler) -> Any:
    """:class:`~facebench.benchmarks.perf.train_step.StepWindow` (images and wall time from the
    start of step ``first`` to the end of the last step) with the device synchronised at both ends,
    the time before the window (setup, warm-up steps, compilation) and the utilisation sampler."""
    import torch

    from facebench.benchmarks.perf.train_step import StepWindow

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    class Window(StepWindow):
        fit_t0 = 0.0

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.fit_t0 = time.perf_counter()

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == self.first:
                sync()
                sampler.start()
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step >= trainer.max_steps:
                sync()
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.utilisation = sampler.stop()

    return Window(first)


def device_batches(model: Any, task: Any, batch_size: int, device: Any, n: int = 4) -> list[dict[str, Any]]:
    """``n`` random batches of the model's input already on ``device`` (labels in the task's layout)."""
    import torch

    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        labels = torch.zeros(batch_size, task.n_label_slots, dtype=torch.long)
        for t, ys in zip(task.targets, task.label_slices):
            high = 2 if t.is_sigmoid else t.n_classes
            labels[:, ys] = torch.randint(0, high, (batch_size, ys.stop - ys.start), generator=g)
        image = torch.randn(batch_size, model.in_chans, model.image_size, model.image_size, generator=g)
        out.append({"image": image.to(device), "label": labels.to(device), "index": torch.arange(batch_size, device=device)})
    return out


def measure(cfg: dict[str, Any], dm: Any, args: dict[str, Any], variant: str, source: str, steps: int, warmup: int,
            run_dir: Path) -> dict[str, Any]:
    """Train one configuration for ``warmup + steps`` steps and return its row's figures."""
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from facebench.benchmarks.perf.train_step import as_loader
    from facebench.benchmarks.worker import build_trainer
    from facebench.lightning_modules.registry import create_method

    trainer_over, method_over = VARIANTS[variant]
    cfg = {**cfg, "early_stopping": None, "logging": {},
           "trainer": {**cfg["trainer"], **trainer_over, "max_epochs": 10_000, "max_steps": warmup + steps,
                       "limit_val_batches": 0, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                       "log_every_n_steps": max(1, min(10, steps))}}
    model = create_method(cfg["method"]["name"], dm.task, **{**args, **method_over})
    dm.configure_input(model.image_size, model.in_chans, landmarks=model.needs_landmarks or None,
                       train_defaults=model.default_train_transforms)
    trainer = build_trainer(cfg, run_dir, model.monitor, model.gradient_trained)
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]   # no checkpoint writes
    device = trainer.strategy.root_device
    sampler = UtilisationSampler(device)
    window = timed_window(warmup, device, sampler)
    trainer.callbacks.append(window)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    if source == "gpu_tensors":
        trainer.fit(model, train_dataloaders=as_loader(device_batches(model, dm.task, dm.batch_size, device), warmup + steps))
        augment_on = "none (tensors on the device)"
    else:
        trainer.fit(model, datamodule=dm)
        augment_on = "batch" if dm.augment_in_batches() else "worker"
        dm.trainer = None   # the next configuration's fit attaches its own (this one's loader workers can go)
    seconds = window.t1 - window.t0
    if trainer.global_step < warmup + steps or seconds <= 0 or not window.images:
        raise RuntimeError(f"{cfg['method_key']} / {variant}: trained {trainer.global_step} of {warmup + steps} steps "
                           f"(is the training split smaller than {warmup + steps} full batches of {dm.batch_size}?)")
    ips = window.images / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else math.nan
    train_images = len(dm.tables["train"])
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "precision": str(trainer.precision),
            "channels_last": bool(model.channels_last_arg or (model.channels_last_arg is None and device.type == "cuda")),
            "torch_compile": bool(model.torch_compile_cfg), "augment_on": augment_on,
            "batch_size": dm.batch_size, "input_size": model.image_size, "steps": steps,
            "warmup_s": window.t0 - window.fit_t0, "images_per_s": ips, "steps_per_s": steps / seconds,
            "gpu_util_pct": window.utilisation, "peak_gpu_mem_mb": peak, "train_images": train_images,
            "epoch_s": train_images / ips, "celeba_full_epoch_s": CELEBA_FULL_TRAIN / ips,
            "note": "" if sampler.source or device.type != "cuda" else "no utilisation source (pynvml / nvidia-smi)"}


# ------------------------------------------------------------------------------------------------
# the plan: suite configs, datasets, rows
# ------------------------------------------------------------------------------------------------
def suite_configs(celeba_root: Path, work: Path, smoke: bool, models: list[str]) -> dict[str, dict[str, Any]]:
    """The ``celeba_h100`` run configs (seed 0) of ``models``, pointed at ``celeba_root``."""
    from facebench.benchmarks.suite import load_suite

    overrides: dict[str, Any] = {"seeds": [0], "datasets.celeba.args.root": str(celeba_root),
                                 "datasets.celeba.args.cache_dir": str(work / "cache"),
                                 "datasets.celeba.args.drop_last": True}
    if smoke:
        overrides.update(SMOKE_OVERRIDES)
    suite = load_suite(SUITE, results_root=work / "results", overrides=overrides)
    configs = {r.method_key: r.config for r in suite.runs if r.dataset_key == "celeba"}
    return {m: configs[m] for m in models}


def synthfaces_config(cfg: dict[str, Any], work: Path, smoke: bool) -> dict[str, Any]:
    """``cfg`` on SynthFaces: the suite's datamodule settings, SynthFaces rendered once under
    ``work``: 5,000 images at 128 px (4,000 training images, about the CelebA subset's 4,560; a
    one-off of well under a minute on 16 cores at the render rate of RESULTS.md's full-size check),
    or 32 at 48 px for the smoke test."""
    identities, per_identity, size = (8, 4, 48) if smoke else (250, 20, 128)
    args = {k: v for k, v in cfg["dataset"]["args"].items() if k not in ("root", "max_samples")}
    args.update(root=str(work / f"synthfaces-{identities}x{per_identity}-{size}px"), n_identities=identities,
                images_per_identity=per_identity, render_size=size)
    return {**cfg, "dataset_key": "synthfaces", "dataset": {"datamodule": "synthfaces", "args": args}}


def prepared(cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The run's datamodule (set up) and method arguments, as the suite's worker derives them."""
    from facebench.benchmarks.worker import SUITE_DATAMODULE_DEFAULTS
    from facebench.datamodules.base import create_datamodule
    from facebench.lightning_modules.registry import get_method_class

    dm = create_datamodule(cfg["dataset"]["datamodule"], **{**SUITE_DATAMODULE_DEFAULTS, **cfg["dataset"]["args"]})
    dm.augment_seed = int(cfg["seed"])
    dm.prepare_data()
    dm.setup("fit")
    args = dict(cfg["method"]["args"])
    args.update(get_method_class(cfg["method"]["name"]).datamodule_kwargs(dm, args))
    return dm, args


def plan(variants: list[str]) -> list[tuple[str, str, str]]:
    """(dataset, source, variant) per model: the variants on CelebA, then SynthFaces and tensors on the device."""
    return [("celeba", "loader", v) for v in variants] + [("synthfaces", "loader", "suite"),
                                                          ("celeba", "gpu_tensors", "suite")]


def run_check(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    smoke = args.cpu_smoke
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    celeba_root = Path(args.celeba_root) if args.celeba_root else default_celeba_root()
    if not (celeba_root / "list_attr_celeba.txt").is_file():
        raise SystemExit(f"[facebench] gpu_check: {celeba_root}: no CelebA here (list_attr_celeba.txt); "
                         f"give --celeba-root")
    steps, warmup = (2, 1) if smoke else (args.steps, args.warmup)
    configs = suite_configs(celeba_root, work, smoke, args.models)
    rows: list[dict[str, Any]] = []
    for model_key, base in configs.items():
        datasets = {"celeba": base, "synthfaces": synthfaces_config(base, work, smoke)}
        if smoke:   # inductor on CPU needs a C++ compiler and minutes: the smoke test runs without it
            for cfg in datasets.values():
                cfg["method"] = {**cfg["method"], "args": {**cfg["method"]["args"], "torch_compile": False}}
        ready: dict[str, tuple[Any, dict[str, Any]]] = {}
        for dataset, source, variant in plan(args.variants):
            if dataset not in ready:
                ready[dataset] = prepared(datasets[dataset])
            dm, method_args = ready[dataset]
            label = f"{model_key} / {dataset} / {variant}" + (" / tensors on the device" if source == "gpu_tensors" else "")
            print(f"[facebench] gpu_check: {label} ...", flush=True)
            torch._dynamo.reset()
            with tempfile.TemporaryDirectory(dir=work) as run_dir:
                row = measure(datasets[dataset], dm, method_args, variant, source, steps, warmup, Path(run_dir))
            if smoke:
                row["note"] = "; ".join(filter(None, [row["note"], "CPU smoke test: compile off, tiny sizes"]))
            rows.append({"model": model_key, "dataset": dataset if source == "loader" else "gpu_tensors",
                         "variant": variant, **row})
            gc.collect()
        del ready
        gc.collect()
    return rows


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def add_ratios(rows: list[dict[str, Any]]) -> list[str]:
    """``vs_suite`` per row (its images/s over the suite setting's on the same model and data) and
    the summary lines: each setting's speed-up, the bottleneck verdict, the projected CelebA epoch."""
    lines = []
    by = {(r["model"], r["dataset"], r["variant"]): r for r in rows}
    for r in rows:
        ref = by.get((r["model"], r["dataset"], "suite"))
        r["vs_suite"] = r["images_per_s"] / ref["images_per_s"] if ref else math.nan
    for model in dict.fromkeys(r["model"] for r in rows):
        suite = by.get((model, "celeba", "suite"))
        if suite is None:
            continue
        for variant, what, column in (("no_bf16", "bf16-mixed", "precision"), ("no_channels_last", "channels_last",
                                      "channels_last"), ("no_compile", "torch.compile", "torch_compile")):
            off = by.get((model, "celeba", variant))
            if off:
                same = " (the same setting in both: not a comparison)" if off[column] == suite[column] else ""
                lines.append(f"{model}: {what} on / off = {suite['images_per_s'] / off['images_per_s']:.2f}x "
                             f"({suite['images_per_s']:,.0f} vs {off['images_per_s']:,.0f} images/s){same}")
        on_device = by.get((model, "gpu_tensors", "suite"))
        if on_device:
            ratio = suite["steps_per_s"] / on_device["steps_per_s"]
            verdict = ("the model's compute is the bottleneck (the loader keeps up)" if ratio >= GPU_BOUND_RATIO else
                       "the input pipeline is the bottleneck")
            suite["note"] = "; ".join(filter(None, [suite["note"], f"loader / on-device steps: {ratio:.2f}: {verdict}"]))
            lines.append(f"{model}: loader {suite['steps_per_s']:.2f} steps/s vs tensors on the device "
                         f"{on_device['steps_per_s']:.2f} steps/s = {ratio:.2f}: {verdict}")
        lines.append(f"{model}: one full CelebA epoch ({CELEBA_FULL_TRAIN:,} images) at the suite's settings: "
                     f"{suite['celeba_full_epoch_s'] / 60:.1f} min with the loader"
                     + (f", {on_device['celeba_full_epoch_s'] / 60:.1f} min if compute alone set the pace"
                        if on_device else ""))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m facebench.benchmarks.perf.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--celeba-root", help="CelebA-layout folder (default: ../shared/data/celeba_subset beside the repository)")
    ap.add_argument("--out", default="gpu_check.csv", help="CSV of the figures (default ./gpu_check.csv)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per configuration")
    ap.add_argument("--warmup", type=int, default=10, help="steps before the timed window (compilation, cuDNN autotuning)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="method keys of the suite")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="settings on CelebA: the suite's and each GPU setting off")
    ap.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "facebench_gpu_check"),
                    help="SynthFaces, the image caches and the runs' scratch folders")
    ap.add_argument("--cpu-smoke", action="store_true", help="no GPU: run the same code on the CPU, 2 steps, tiny sizes")
    args = ap.parse_args(argv)
    if "suite" not in args.variants:
        args.variants = ["suite", *args.variants]
    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(NO_GPU_LINE, file=sys.stderr)
        return EXIT_NO_GPU
    from facebench.benchmarks.logging_setup import configure_output
    from facebench.benchmarks.perf.common import header

    configure_output()   # Lightning's info lines only with FACEBENCH_VERBOSE=1, as in suite runs
    header(f"GPU check: the {SUITE} suite's settings" + (" (CPU smoke test: not a measurement)" if args.cpu_smoke else ""),
           {"steps": 2 if args.cpu_smoke else args.steps, "warmup": 1 if args.cpu_smoke else args.warmup})
    t0 = time.perf_counter()
    rows = run_check(args)
    lines = add_ratios(rows)
    import pandas as pd

    from facebench.core.io import write_csv

    table = pd.DataFrame(rows, columns=COLUMNS)
    write_csv(args.out, table)
    shown = table[["model", "dataset", "variant", "images_per_s", "steps_per_s", "vs_suite", "gpu_util_pct",
                   "peak_gpu_mem_mb", "warmup_s", "epoch_s", "celeba_full_epoch_s"]]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(shown.to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    for line in lines:
        print(f"   {line}")
    print(f"[facebench] gpu_check: {len(rows)} configurations in {time.perf_counter() - t0:.0f}s on "
          f"{rows[0]['device'] if rows else '?'}; figures -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
