"""Epoch time at 1x, 2x and 4x the dataset size, and peak memory.

``python -m facebench.benchmarks.perf.scaling [--method majority|mcnn] [--factors 1 2 4] [--workers 2]``

The CelebA subset's training split (or SynthFaces) listed 1, 2 and 4 times (symbolic links under
``$FACEBENCH_PERF_DIR``, default ``/tmp/facebench_perf``), each size trained for ``--epochs`` epochs through
the suite's path (``facebench.benchmarks.worker``: the datamodule with the suite defaults, so the image cache
is on, ``build_trainer`` with its callbacks and logger) in a fresh process, so that peak memory is
per size. The cache is built before the epochs (a one-off, printed separately). Printed per size:
the last epoch's seconds (``--epochs``, default 2: the first includes DataLoader worker start-up),
seconds per 1000 images (flat = linear), and the peak RSS (``resource.getrusage``) of the training
process and of its largest DataLoader worker (memory-mapped cache pages count in a worker's RSS
while they are in the page cache: they are shared file pages, not copies), and
``torch.cuda.max_memory_allocated`` on a GPU.

``--method majority`` (default) makes the epoch data-bound (no gradient step): it shows the data
pipeline's scaling; ``--method mcnn`` (96x96, the CPU suite's MCNN) adds the training compute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from facebench.benchmarks.perf.common import MCNN_INPUT, SCRATCH, celeba_root, header, peak_rss_mb, scaled_copy

METHOD_ARGS: dict[str, dict[str, Any]] = {
    "majority": {},
    "mcnn": {"input_size": MCNN_INPUT["image_size"], "conv1_stride": 3, "pixel_mean": [0.5, 0.42, 0.38]},
}


def child(factor: int, method: str, workers: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """``epochs`` epochs at ``factor`` x the training split, in this (fresh) process."""
    import lightning as L
    import torch

    class EpochTimes(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    from facebench.benchmarks.callbacks import RunLoggingCallback
    from facebench.benchmarks.suite import DEFAULT_TRAINER
    from facebench.benchmarks.worker import SUITE_DATAMODULE_DEFAULTS, build_trainer
    from facebench.datamodules.base import create_datamodule
    from facebench.lightning_modules.registry import create_method

    root = scaled_copy(celeba_root()[0], factor)
    dm = create_datamodule("celeba", **{**SUITE_DATAMODULE_DEFAULTS, "root": str(root), "batch_size": batch_size,
                                        "num_workers": workers, "cache_dir": str(SCRATCH / "cache")})
    dm.setup("fit")
    model = create_method(method, dm.task, **METHOD_ARGS[method])
    dm.configure_input(model.image_size, model.in_chans, train_defaults=model.default_train_transforms)
    t0 = time.perf_counter()
    dm.train_dataloader()   # builds the image cache (once per size; later runs reuse it)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=SCRATCH) as run_dir:
        cfg = {"suite": "perf", "run_id": f"{method}--x{factor}--s0", "seed": 0, "early_stopping": None, "logging": {},
               "trainer": {**DEFAULT_TRAINER, "max_epochs": epochs, "limit_val_batches": 0, "enable_progress_bar": False,
                           "enable_checkpointing": True}}
        trainer = build_trainer(cfg, Path(run_dir), model.monitor, model.gradient_trained)
        timer = EpochTimes()
        trainer.callbacks.append(timer)
        t0 = time.perf_counter()
        trainer.fit(model, datamodule=dm)
        fit_s = time.perf_counter() - t0
    logger = next(c for c in trainer.callbacks if isinstance(c, RunLoggingCallback))
    out = {"factor": factor, "images": len(dm.tables["train"]), "epoch_s": timer.times[-1], "epochs_s": timer.times,
           "suite_images_per_s": pl_module_rate(model, logger), "fit_s": fit_s,
           "cache_build_s": build_s, "cache": dm.report.get("image_cache", {}), **peak_rss_mb()}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def pl_module_rate(model: Any, logger: Any) -> float:
    """The throughput the suite records (``RunLoggingCallback``: all epochs, worker start-up included)."""
    return float(getattr(model, "train_images_per_s", logger.images / max(logger.seconds, 1e-9)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", choices=sorted(METHOD_ARGS), default="majority")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per size; the last one is reported")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, args.method, args.workers, args.batch_size, args.epochs)), flush=True)
        return 0
    root, what = celeba_root()
    header("epoch time and peak memory at 1x / 2x / 4x the training split",
           {"data": what, "method": args.method, "workers": args.workers, "batch_size": args.batch_size,
            "epochs": f"{args.epochs} per size, the last reported"})
    rows = []
    for f in args.factors:
        env = {**os.environ, "FACEBENCH_WANDB": "0"}
        proc = subprocess.run([sys.executable, "-m", "facebench.benchmarks.perf.scaling", "--child", str(f), "--method", args.method,
                               "--workers", str(args.workers), "--batch-size", str(args.batch_size),
                               "--epochs", str(args.epochs)],
                              capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"size {f}x failed")
        rows.append(json.loads(line[7:]))
    base = rows[0]["epoch_s"] / rows[0]["images"]
    print(f"   {'size':>5} {'images':>7} {'epoch s':>8} {'s/1000 img':>10} {'vs 1x':>6} {'peak RSS main':>14} "
          f"{'peak RSS worker':>16} {'cache build s':>14}")
    for r in rows:
        per = r["epoch_s"] / r["images"]
        print(f"   {r['factor']:>4}x {r['images']:>7} {r['epoch_s']:>8.1f} {1000 * per:>10.2f} {per / base:>6.2f} "
              f"{r['self']:>11.0f} MiB {r['children']:>13.0f} MiB {r['cache_build_s']:>14.1f}")
        print(f"        all epochs: {', '.join(f'{v:.1f}s' for v in r['epochs_s'])}; "
              f"suite-recorded train_images_per_s {r['suite_images_per_s']:.0f}")
        if "cuda_max_allocated_mb" in r:
            print(f"        torch.cuda.max_memory_allocated: {r['cuda_max_allocated_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
