"""Loader throughput: the decoded-image cache versus decoding each JPEG with PIL per item.

``python -m facebench.benchmarks.perf.loader [--sizes 64 96] [--workers 2] [--repeats 3]``

Same images (the training split of the CelebA subset, or SynthFaces), same DataLoader workers,
same output size and the same training augmentation (random crop + horizontal flip, MCNN's recipe);
each figure is the median over ``--repeats`` epochs after a warm-up epoch (page cache warm for both
paths), the paths alternating so that load changes on a shared machine hit them alike. Printed:

* ``uncached``: stage 1 per item (PIL decode + pre-resize) + the warp in the workers;
* ``cached``: stage 1 read from the memory-mapped cache + the warp in the workers;
* ``cached+batch``: workers only read the cache; the warp runs on the batch (BatchAugment, here on
  the CPU in the main process: on a GPU it runs on the device);
* the ratio cached / uncached (target: at least 3x) and the one-off cache build time and size.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from facebench.benchmarks.perf.common import MCNN_INPUT, SCRATCH, celeba_root, header, median

MODES = ("uncached", "cached", "cached+batch")


def make_datamodule(root: Path, mode: str, size: int, workers: int, batch_size: int, cache_dir: Path) -> Any:
    from facebench.datamodules.celeba import CelebADataModule

    resize_to = round(size * MCNN_INPUT["resize_to"] / MCNN_INPUT["image_size"])
    return CelebADataModule(root, batch_size=batch_size, num_workers=workers, verify_images="none", cache_dir=cache_dir,
                            image_cache=mode != "uncached", augment_on="batch" if mode == "cached+batch" else "worker",
                            transforms={"image_size": size, "resize_to": resize_to},
                            train_transforms={"random_crop": True, "hflip": 0.5}, pin_memory=False)


def epoch(dm: Any, loader: Any, index: int) -> tuple[float, int]:
    """Seconds and images of one pass over ``loader`` (batch augmentation applied when configured)."""
    loader.sampler.set_epoch(index)
    n = 0
    t0 = time.perf_counter()
    for batch in loader:
        batch = dm.on_after_batch_transfer(batch, 0)
        n += int(batch["image"].shape[0])
    return time.perf_counter() - t0, n


def measure(root: Path, size: int, workers: int, batch_size: int, repeats: int, cache_dir: Path) -> dict[str, Any]:
    dms = {m: make_datamodule(root, m, size, workers, batch_size, cache_dir) for m in MODES}
    t0 = time.perf_counter()
    loaders = {m: dm.train_dataloader() for m, dm in dms.items()}   # builds the cache (once: the others reuse it)
    setup_s = time.perf_counter() - t0
    stored = dms["cached"].dataset("train").stored
    for m in MODES:
        epoch(dms[m], loaders[m], 0)   # warm-up: workers started, page cache warm
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(repeats):
        for m in MODES:
            secs, n = epoch(dms[m], loaders[m], r + 1)
            rates[m].append(n / secs)
    out = {m: median(v) for m, v in rates.items()}
    out.update(images=len(dms["cached"].tables["train"]), setup_s=setup_s, cache_mb=stored.pixels_path.stat().st_size / 2**20,
               canvas=tuple(stored.pixels.shape[1:]), ratio=out["cached"] / out["uncached"],
               ratio_batch=out["cached+batch"] / out["uncached"], all=rates)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N items of each path in this process (cProfile, top functions by own time)")
    ap.add_argument("--keep-cache", action="store_true",
                    help=f"reuse {SCRATCH / 'cache'} (default: a fresh folder, so the one-off build is timed too)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root, what = celeba_root()
    header("loader throughput: image cache vs PIL decode per item",
           {"data": what, "workers": args.workers, "batch_size": args.batch_size, "repeats": args.repeats})
    cache_dir = SCRATCH / "cache" if args.keep_cache else Path(tempfile.mkdtemp(prefix="loader-cache-", dir=SCRATCH))
    try:
        for size in args.sizes:
            report(measure(root, size, args.workers, args.batch_size, args.repeats, cache_dir), size)
            if args.profile:
                profile_items(root, size, args.batch_size, cache_dir, args.profile)
    finally:
        if not args.keep_cache:
            shutil.rmtree(cache_dir, ignore_errors=True)
    return 0


def profile_items(root: Path, size: int, batch_size: int, cache_dir: Path, n: int, top: int = 8) -> None:
    """Where one item's time goes on each path: ``dataset[i]`` for ``n`` training items in this
    process (no workers), under cProfile, the functions with the most own time."""
    import cProfile
    import pstats

    for mode in ("uncached", "cached"):
        dm = make_datamodule(root, mode, size, 0, batch_size, cache_dir)
        dm.train_dataloader()
        ds = dm.dataset("train")
        items = [i % len(ds) for i in range(n)]
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for i in items:
            ds[i]
        prof.disable()
        per_item = (time.perf_counter() - t0) / n * 1e3
        print(f"   profile {mode}: {per_item:.3f} ms per item (one process, {n} items, profiler on); top own time:")
        stats = pstats.Stats(prof).sort_stats("tottime")
        for (file, line, fn), (_, calls, tottime, _, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
            print(f"      {tottime / n * 1e3:7.3f} ms/item  {fn} ({Path(file).name}:{line}, {calls} calls)")


def report(r: dict[str, Any], size: int) -> None:
    print(f"-- output {size}x{size} ({r['images']} training images; cache canvas {r['canvas']}, {r['cache_mb']:.0f} MiB, "
          f"loader setup incl. the one-off cache build {r['setup_s']:.1f}s)")
    for m in MODES:
        print(f"   {m:<13} {r[m]:8.0f} images/s   (epochs: {', '.join(f'{v:.0f}' for v in r['all'][m])})")
    print(f"   ratio cached / uncached        {r['ratio']:.2f}x")
    print(f"   ratio cached+batch / uncached  {r['ratio_batch']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
