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


def process_tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process, its live descendants (e.g. DataLoader workers) and
    its children that already exited, read from ``/proc`` (Linux); elsewhere, this process and its
    reaped children (``resource``)."""
    pid = os.getpid() if pid is None else pid
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        total, todo = 0.0, [pid]
        while todo:
            p = todo.pop()
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / tick      # utime, stime, cutime, cstime
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children")
                if children.is_file():
                    todo += [int(c) for c in children.read_text().split()]
        return total
    except (OSError, ValueError, IndexError):
        import resource

        return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))


class RunLoggingCallback(L.Callback):
    """Measures training throughput (images per second over the training steps, data loading
    included) and cost: stores ``train_images_per_s``, ``train_images`` (images trained on in this
    process, all ranks) and ``train_cpu_s`` (CPU seconds of the training, DataLoader workers
    included, this process's rank; :func:`process_tree_cpu_seconds`) on the module."""

    def __init__(self) -> None:
        self.images = 0
        self.seconds = 0.0
        self._t0: float | None = None
        self._cpu0: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cpu0 = process_tree_cpu_seconds()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._cpu0 is not None:
            pl_module.train_cpu_s = process_tree_cpu_seconds() - self._cpu0

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
        pl_module.train_images = self.images


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
