"""Cost of one training step per multi-task weighting, as a ratio to ``equal`` (issue 15).

``python -m facebench.benchmarks.perf.weighting_cost [--tasks 10 20 40] [--width 0.125] [--rounds 3]``
``[--steps 5] [--warmup 2] [--weightings equal pcgrad ...] [--memory-jobs 2]``

The model is fixed and small: ``mtl_cnn`` (the CelebA-40 protocol's CNN, :mod:`facebench.lightning_modules.mtl_cnn`)
at a CPU ``--width`` (default that of ``benchmarks/suites/mtl_celeba.yaml``), 64x64 inputs, batches of
64 random images with random binary labels, ``mtl: {weighting: NAME, tasks: targets}`` over the first
10, 20 and 40 CelebA attributes (one task per attribute). A step is what a Lightning training step
does without the loop: the method's ``training_loss`` (the weighting's combination; gradient
methods take one backward pass per task to the shared trunk), ``backward``, the optimiser step of
``configure_optimizers`` (Adam) and ``on_train_batch_end`` (FAMO's loss measurement after the step).

Time (one process per number of tasks, one thread): every weighting's model is built with the same
initial weights; ``--warmup`` steps each, then ``--rounds`` rounds, each running ``--steps`` steps of
every weighting in an order rotated by one per round (so load changes on a shared machine fall on
different weightings). Per round, a weighting's ratio is its median step time over ``equal``'s in
the same round; the median over rounds is printed. Both clocks: the CPU time of the process
(``time.process_time``: with one thread it is the compute the step costs, and hardly moves when
other jobs load the machine) and the wall time (``time.perf_counter``).

Memory (a **fresh subprocess** per weighting and number of tasks, ``--memory-jobs`` at a time):
torch has no CPU allocator statistics and ``tracemalloc`` does not see tensor storage, so the child
reports its peak resident set size after two steps, and the growth of that peak over the RSS
measured right before the first step: what the step itself adds (activations kept for the per-task
backward passes, the ``K x P`` gradient matrix, optimiser state) on top of the imports and the
model. The peak is the kernel's high-water mark of the child's address space (``VmHWM`` in
``/proc/self/status``), not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: Linux keeps ``ru_maxrss``
across ``fork`` + ``exec``, so a child would start at the parent's peak (the parent holds every
weighting's model while timing); ``ru_maxrss`` is the fallback where ``/proc`` is absent.
``--skip-timing`` measures memory only.
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from facebench.benchmarks.perf.common import header, median

#: The ``mtl_celeba`` suite's width (benchmarks/suites/mtl_celeba.yaml).
DEFAULT_WIDTH = 0.125


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """High-water mark of this process's resident set (``VmHWM``; ``ru_maxrss`` without ``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 / 1024 if platform.system() == "Linux" else 1 / 1024 / 1024   # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class Stepper:
    """One weighting's model, optimiser and random batches; :meth:`step` runs one training step."""

    def __init__(self, weighting: str, n_tasks: int, width: float, batch_size: int):
        import torch

        from facebench.datamodules.celeba import CELEBA_ATTRIBUTES
        from facebench.core.tasks import TaskSpec
        from facebench.lightning_modules.mtl_cnn import MultiTaskCNN

        torch.manual_seed(0)
        task = TaskSpec.binary_attributes(list(CELEBA_ATTRIBUTES[:n_tasks]), name="celeba")
        self.name = weighting
        self.model = MultiTaskCNN(task, width=width, mtl={"weighting": weighting, "tasks": "targets"})
        self.model.train()
        self.opt = self.model.configure_optimizers()
        g = torch.Generator().manual_seed(1)
        self.batches = [{"image": torch.randn(batch_size, 3, 64, 64, generator=g),
                         "label": torch.randint(0, 2, (batch_size, n_tasks), generator=g),
                         "index": torch.arange(batch_size)} for _ in range(2)]
        self.count = 0

    def step(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one training step."""
        import torch

        batch = self.batches[self.count % len(self.batches)]
        t0, c0 = time.perf_counter(), time.process_time()
        loss, _ = self.model.training_loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.model.on_train_batch_end(None, batch, self.count)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.name}: non-finite loss at step {self.count}")
        self.count += 1
        return wall, cpu


def time_steps(names: list[str], n_tasks: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per weighting: the per-round ratios to ``equal`` (CPU and wall) and the median step times."""
    import torch

    torch.set_num_threads(1)
    steppers = {n: Stepper(n, n_tasks, args.width, args.batch_size) for n in names}
    for s in steppers.values():
        for _ in range(args.warmup):
            s.step()
    out: dict[str, dict[str, Any]] = {n: {"cpu": [], "wall": [], "cpu_ratio": [], "wall_ratio": []} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        this: dict[str, tuple[float, float]] = {}
        for n in order:
            times = [steppers[n].step() for _ in range(args.steps)]
            this[n] = (median([t[0] for t in times]), median([t[1] for t in times]))
        for n in names:
            out[n]["wall"].append(this[n][0])
            out[n]["cpu"].append(this[n][1])
            out[n]["wall_ratio"].append(this[n][0] / this["equal"][0])
            out[n]["cpu_ratio"].append(this[n][1] / this["equal"][1])
    for n, s in steppers.items():
        out[n]["params"] = s.model.parameter_count()
        out[n]["shared_params"] = sum(p.numel() for p in s.model.shared_parameters())
    return out


def memory_child(weighting: str, n_tasks: int, width: float, batch_size: int) -> dict[str, float]:
    """Peak RSS after two steps in this (fresh) process, and its growth over the RSS before them."""
    import torch

    torch.set_num_threads(1)
    stepper = Stepper(weighting, n_tasks, width, batch_size)
    before = _current_rss_mb()
    stepper.step()
    stepper.step()
    peak = _peak_rss_mb()
    return {"peak_rss_mb": peak, "step_peak_growth_mb": max(0.0, peak - before)}


def run_memory_child(weighting: str, n_tasks: int, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-m", "facebench.benchmarks.perf.weighting_cost", "--memory-child", weighting, str(n_tasks),
           "--width", str(args.width), "--batch-size", str(args.batch_size)]
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
    ap.add_argument("--memory-jobs", type=int, default=2, help="memory subprocesses run at a time")
    ap.add_argument("--skip-timing", action="store_true", help="measure memory only")
    ap.add_argument("--memory-child", nargs=2, metavar=("WEIGHTING", "TASKS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child[0], int(args.memory_child[1]), args.width, args.batch_size)))
        return 0

    from facebench.lightning_modules.weighting import weighting_names

    names = args.weightings or sorted(weighting_names())
    names = ["equal"] + [n for n in names if n != "equal"]
    header("multi-task weightings: one training step, ratio to equal",
           {"model": f"mtl_cnn width {args.width}, 64x64, batch {args.batch_size}, random inputs",
            "tasks": "first N CelebA attributes, one task each (tasks: targets)", "threads": 1,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
            "time": f"{args.rounds} rounds x {args.steps} steps per weighting after {args.warmup} warm-up, one process",
            "memory": f"fresh subprocess per configuration, {args.memory_jobs} at a time"})
    for n_tasks in args.tasks:
        with ThreadPoolExecutor(max_workers=max(1, args.memory_jobs)) as pool:
            memory = dict(zip(names, pool.map(lambda n: run_memory_child(n, n_tasks, args), names)))
        timing = None if args.skip_timing else time_steps(names, n_tasks, args)
        eq_mem = memory["equal"]["step_peak_growth_mb"]
        head = f"\n-- {n_tasks} tasks; equal:"
        if timing:
            eq = timing["equal"]
            head = (f"\n-- {n_tasks} tasks ({eq['params']:,} parameters, {eq['shared_params']:,} shared); equal: "
                    f"{1000 * median(eq['cpu']):.0f} ms CPU / {1000 * median(eq['wall']):.0f} ms wall per step,")
        print(head + f" step memory {eq_mem:.0f} MiB, peak RSS {memory['equal']['peak_rss_mb']:.0f} MiB; "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"   {'weighting':<12} {'CPU ratio':>9} {'wall ratio':>10} {'CPU ms':>7} {'step MiB':>8} {'mem ratio':>9} "
              f"{'peak RSS':>8}   per-round CPU ratios")
        for n in names:
            m = memory[n]
            mem = m["step_peak_growth_mb"]
            t = timing[n] if timing else None
            cols = (f"{median(t['cpu_ratio']):>9.2f} {median(t['wall_ratio']):>10.2f} {1000 * median(t['cpu']):>7.0f}" if t
                    else f"{'':>9} {'':>10} {'':>7}")
            print(f"   {n:<12} {cols} {mem:>8.0f} {mem / eq_mem if eq_mem > 0 else float('nan'):>9.2f} {m['peak_rss_mb']:>8.0f}   "
                  + (", ".join(f"{v:.2f}" for v in t["cpu_ratio"]) if t else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
