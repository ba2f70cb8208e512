"""Cost of one training step per multi-task weighting, as a ratio to ``equal`` (issue 15).

``python -m benchmarks.perf.weighting_cost [--tasks 10 20 40] [--width 0.125] [--rounds 3]``
``[--steps 5] [--warmup 2] [--weightings equal pcgrad ...]``

The model is fixed and small: ``mtl_cnn`` (the CelebA-40 protocol's CNN, :mod:`lightning_modules.mtl_cnn`)
at a CPU ``--width`` (default that of ``benchmarks/suites/mtl_celeba.yaml``), 64x64 inputs, batches of
64 random images with random binary labels, ``mtl: {weighting: NAME, tasks: targets}`` over the first
10, 20 and 40 CelebA attributes (one task per attribute). A step is what a Lightning training step
does without the loop: the method's ``training_loss`` (the weighting's combination; gradient
methods take one backward pass per task to the shared trunk), ``backward``, the optimiser step of
``configure_optimizers`` (Adam) and ``on_train_batch_end`` (FAMO's loss measurement after the step).

Each (weighting, number of tasks) runs in a **fresh subprocess** (one thread, ``torch.set_num_threads``):
``--warmup`` steps, then ``--steps`` timed steps, the median reported. Memory: torch has no CPU
allocator statistics and ``tracemalloc`` does not see tensor storage, so the child reports its peak
resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, a high-water mark) and the growth
of that peak over the RSS measured right before the first step (``/proc/self/statm``): the memory
the steps themselves add (activations kept for the per-task backward passes, the ``K x P`` gradient
matrix, optimiser state) on top of the imports and the model.

Ratios: every round runs all weightings once, in an order rotated by one each round (so load
changes on a shared machine fall on different weightings), and each weighting's ratio in a round
is its step time over ``equal``'s in the same round; the median over rounds is printed (and the
median absolute step times, for scale).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any

from benchmarks.perf.common import header, median

#: The ``mtl_celeba`` suite's width (benchmarks/suites/mtl_celeba.yaml).
DEFAULT_WIDTH = 0.125


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    scale = 1 / 1024 if platform.system() == "Linux" else 1 / 1024 / 1024   # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(weighting: str, n_tasks: int, width: float, batch_size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Time ``steps`` training steps after ``warmup`` in this (fresh) process."""
    import torch

    from datamodules.celeba import CELEBA_ATTRIBUTES
    from datamodules.core.tasks import TaskSpec
    from lightning_modules.mtl_cnn import MultiTaskCNN

    torch.set_num_threads(1)
    torch.manual_seed(0)
    task = TaskSpec.binary_attributes(list(CELEBA_ATTRIBUTES[:n_tasks]), name="celeba")
    model = MultiTaskCNN(task, width=width, mtl={"weighting": weighting, "tasks": "targets"})
    model.train()
    opt = model.configure_optimizers()
    g = torch.Generator().manual_seed(1)
    batches = [{"image": torch.randn(batch_size, 3, 64, 64, generator=g),
                "label": torch.randint(0, 2, (batch_size, n_tasks), generator=g),
                "index": torch.arange(batch_size)} for _ in range(2)]
    rss_before = _current_rss_mb()
    times = []
    for step in range(warmup + steps):
        batch = batches[step % len(batches)]
        t0 = time.perf_counter()
        loss, _ = model.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.on_train_batch_end(None, batch, step)
        times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{weighting}: non-finite loss at step {step}")
    peak = _peak_rss_mb()
    return {"weighting": weighting, "tasks": n_tasks, "step_s": median(times[warmup:]), "peak_rss_mb": peak,
            "step_peak_growth_mb": max(0.0, peak - rss_before), "params": model.parameter_count(),
            "shared_params": sum(p.numel() for p in model.shared_parameters())}


def run_child(weighting: str, n_tasks: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.perf.weighting_cost", "--child", weighting, str(n_tasks),
           "--width", str(args.width), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--weightings", nargs="+", default=None, help="default: every registered weighting")
    ap.add_argument("--width", type=float, default=DEFAULT_WIDTH)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("WEIGHTING", "TASKS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.width, args.batch_size, args.steps, args.warmup)))
        return 0

    from lightning_modules.weighting import weighting_names

    names = args.weightings or sorted(weighting_names())
    names = ["equal"] + [n for n in names if n != "equal"]
    header("multi-task weightings: one training step, ratio to equal (fresh subprocess per configuration)",
           {"model": f"mtl_cnn width {args.width}, 64x64, batch {args.batch_size}, random inputs",
            "tasks": "first N CelebA attributes, one task each (tasks: targets)", "threads per child": 1,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
            "steps": f"{args.steps} timed after {args.warmup} warm-up, median", "rounds": args.rounds})
    for n_tasks in args.tasks:
        results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        ratios: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                results[name].append(run_child(name, n_tasks, args))
            base = results["equal"][-1]["step_s"]
            for name in names:
                ratios[name].append(results[name][-1]["step_s"] / base)
        eq = results["equal"]
        eq_time = median([x["step_s"] for x in eq])
        eq_mem = median([x["step_peak_growth_mb"] for x in eq])
        print(f"\n-- {n_tasks} tasks ({eq[0]['params']:,} parameters, {eq[0]['shared_params']:,} shared); "
              f"equal: {1000 * eq_time:.0f} ms/step, step memory {eq_mem:.0f} MiB, peak RSS "
              f"{median([x['peak_rss_mb'] for x in eq]):.0f} MiB")
        print(f"   {'weighting':<12} {'time ratio':>10} {'ms/step':>8} {'step mem MiB':>13} {'mem ratio':>9} "
              f"{'peak RSS MiB':>12}   per-round ratios")
        for name in names:
            mem = median([x["step_peak_growth_mb"] for x in results[name]])
            line = (f"   {name:<12} {median(ratios[name]):>10.2f} {1000 * median([x['step_s'] for x in results[name]]):>8.0f} "
                    f"{mem:>13.0f} {mem / eq_mem if eq_mem > 0 else float('nan'):>9.2f} "
                    f"{median([x['peak_rss_mb'] for x in results[name]]):>12.0f}   "
                    + ", ".join(f"{v:.2f}" for v in ratios[name]))
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
