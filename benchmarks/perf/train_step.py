"""Training-step throughput of MCNN: the suite's Lightning path versus a plain PyTorch loop.

``python -m facebench.benchmarks.perf.train_step [--steps 20] [--warmup 2] [--repeats 5] [--batch-size 100]``

Same model (``mcnn`` at the CPU suite's 96x96 input, Conv1 stride 3, as in
``benchmarks/suites/celeba.yaml``), same initial weights, same batches (a few real training
batches of the CelebA subset, or SynthFaces, held in memory and cycled, so the data pipeline costs
the same nothing in both), same optimiser (the method's ``configure_optimizers``: SGD, momentum).

* Lightning: ``facebench.benchmarks.worker.build_trainer`` with the suite defaults (callbacks: checkpointing,
  epoch seeding, throughput logging; the CSV logger; per-step loss logging), ``max_steps``, no
  validation;
* plain: ``logits -> loss -> zero_grad -> backward -> step`` in a ``for`` loop.

Images/second are timed from the start of the first step after ``--warmup`` to the end of the last
(so Lightning's per-step work between steps is inside the window; its one-off setup and the final
checkpoint are not, they are printed separately). Overhead = 1 - lightning / plain (target <= 10%).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from facebench.benchmarks.perf.common import MCNN_INPUT, SCRATCH, celeba_root, header, median


class StepWindow(L.Callback):
    """Wall time from the start of training step ``first`` to the end of the last step."""

    def __init__(self, first: int):
        self.first, self.t0, self.t1, self.images = first, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.first:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step > self.first:
            self.images += int(batch["image"].shape[0])
            self.t1 = time.perf_counter()


def real_batches(n_batches: int, batch_size: int) -> tuple[list[dict[str, torch.Tensor]], Any, str]:
    from facebench.datamodules.celeba import CelebADataModule

    root, what = celeba_root()
    dm = CelebADataModule(root, batch_size=batch_size, num_workers=0, verify_images="none", image_cache=True,
                          cache_dir=SCRATCH / "cache", transforms=dict(MCNN_INPUT),
                          train_transforms={"random_crop": True, "hflip": 0.5})
    it = iter(dm.train_dataloader())
    batches = [{k: v for k, v in next(it).items() if k in ("image", "label", "index")} for _ in range(n_batches)]
    return batches, dm.task, what


def as_loader(batches: list[dict[str, torch.Tensor]], steps: int) -> DataLoader:
    cycled = [batches[i % len(batches)] for i in range(steps)]
    return DataLoader(cycled, batch_size=None, shuffle=False, num_workers=0)


def lightning_run(model: Any, loader: DataLoader, steps: int, warmup: int) -> dict[str, float]:
    from facebench.benchmarks.suite import DEFAULT_TRAINER
    from facebench.benchmarks.worker import build_trainer

    window = StepWindow(warmup)
    with tempfile.TemporaryDirectory(dir=SCRATCH) as run_dir:
        cfg = {"suite": "perf", "run_id": "mcnn--perf--s0", "method_key": "mcnn", "dataset_key": "perf", "seed": 0,
               "trainer": {**DEFAULT_TRAINER, "max_epochs": 1, "max_steps": steps, "limit_val_batches": 0,
                           "accelerator": "cpu", "enable_progress_bar": False},
               "early_stopping": None, "logging": {}}
        trainer = build_trainer(cfg, Path(run_dir), model.monitor)
        trainer.callbacks.append(window)
        t0 = time.perf_counter()
        trainer.fit(model, train_dataloaders=loader)
        total = time.perf_counter() - t0
    return {"images_per_s": window.images / (window.t1 - window.t0), "fit_s": total,
            "outside_window_s": total - (window.t1 - window.t0)}


def plain_run(model: Any, loader: DataLoader, steps: int, warmup: int) -> dict[str, float]:
    cfg = dict(model.optimizer_cfg)   # the optimiser configure_optimizers builds (its scheduler steps per epoch)
    opt = getattr(torch.optim, cfg.pop("name"))(model.optimizer_parameters(), **cfg)
    model.train()
    images, t0, t1 = 0, 0.0, 0.0
    for step, batch in enumerate(loader):
        if step == warmup:
            t0 = time.perf_counter()
        loss = model.compute_loss(model.logits(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            images += int(batch["image"].shape[0])
            t1 = time.perf_counter()
    return {"images_per_s": images / (t1 - t0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from facebench.lightning_modules.mcnn import MCNN

    SCRATCH.mkdir(parents=True, exist_ok=True)
    batches, task, what = real_batches(4, args.batch_size)
    torch.manual_seed(0)
    reference = MCNN(task, input_size=MCNN_INPUT["image_size"], conv1_stride=3, pixel_mean=[0.5, 0.42, 0.38])
    header("training step: MCNN through the suite's Lightning path vs a plain PyTorch loop",
           {"data": what, "model": f"mcnn 96x96 conv1_stride 3, {reference.parameter_count():,} parameters",
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "threads": args.threads})
    results: dict[str, list[dict[str, float]]] = {"plain": [], "lightning": []}
    for _ in range(args.repeats):
        for kind in ("plain", "lightning"):
            model = copy.deepcopy(reference)
            loader = as_loader(batches, args.steps)
            run = plain_run if kind == "plain" else lightning_run
            results[kind].append(run(model, loader, args.steps, args.warmup))
    plain = median([r["images_per_s"] for r in results["plain"]])
    light = median([r["images_per_s"] for r in results["lightning"]])
    runs = {k: ", ".join(f"{r['images_per_s']:.1f}" for r in v) for k, v in results.items()}
    print(f"   plain PyTorch loop   {plain:7.1f} images/s   (runs: {runs['plain']})")
    print(f"   Lightning (suite)    {light:7.1f} images/s   (runs: {runs['lightning']})")
    print(f"   overhead             {100 * (1 - light / plain):+.1f}%   (target <= 10%)")
    print(f"   Lightning one-off setup + final checkpoint: {median([r['outside_window_s'] for r in results['lightning']]):.1f}s per fit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
