"""Lightning callbacks the runner adds to every run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class EpochSeeder(L.Callback):
    """Re-seed torch's global RNG from (seed, epoch) at the start of every training epoch, so that
    dropout noise does not depend on what ran before; together with the sampler's (seed, epoch)
    order a run resumed from an epoch checkpoint repeats the uninterrupted run exactly."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 1_000_003 + trainer.current_epoch * 7919 + trainer.global_rank)


class RunLoggingCallback(L.Callback):
    """Measures training throughput (images per second over the training steps, data loading
    included) and stores it on the module as ``train_images_per_s``."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._t0: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.images += int(batch["image"].shape[0]) * trainer.world_size

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None
        pl_module.train_images_per_s = self.images / self.seconds if self.seconds > 0 else float("nan")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a run killed while saving keeps its
    previous ``last.ckpt`` intact, so it can always resume."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
