"""Cost of the per-task gradients of a gradient weighting, as ratios to equal weights (issue 22).

``python -m facebench.benchmarks.perf.mtl_gradients [--part step run both] [--tasks 10 20 40] [--rounds 3]``
``[--quick]``

**Step** (``--part step``): one training step of ``mtl_cnn`` (width 0.125, 64x64, batch 64, random
images and labels, one task per attribute over the first 10 / 20 / 40 CelebA attributes), PCGrad
computed five ways, each as a ratio to ``equal``'s step on the same model and batch:

* ``loop``: the per-task gradients on the shared parameters, one backward pass per task (``mtl:
  {gradients: parameters, jacobian: loop}``; what the CPU default ``auto`` picks);
* ``batched``: the same rows from one vectorised backward pass (``jacobian: batched``);
* ``representation``: the rows on the trunk's output (``gradients: representation``; MGDA-UB);
* ``torchjd``: torchjd's own Jacobian backward on the same model and batch
  (``torchjd.autojac.mtl_backward`` over the trunk's output, then ``jac_to_grad`` with torchjd's
  ``PCGrad``), outside facebench's objective.

A step is forward, the weighting's combination, backward and Adam's step. Time: every variant's
model in one process (one thread), warm-up steps, then ``--rounds`` rounds in which each variant runs
``--steps`` steps, in an order rotated every round; the ratio to equal is taken per round (process
CPU time, robust to other jobs on a shared machine) and the median over rounds is printed, with the
wall-time ratio. Memory: a fresh subprocess per variant and number of tasks, the growth of the peak
RSS over two steps (``weighting_cost``'s method), as a ratio to equal's.

**Run** (``--part run``): the training time (``train_time_s`` of the run's status: Lightning's fit,
data loading and the loop included) of ``facebench run`` on SynthFaces, 12 batches of 64 at 64 px,
one epoch, ``mtl_cnn`` width 0.125, 40 tasks: ``equal``, ``pcgrad`` (parameters) and ``pcgrad``
(representation), each a separate ``facebench run --only KEY --force`` subprocess with
``OMP_NUM_THREADS=1``, interleaved over ``--rounds`` rounds (rotated order), ratio to equal per round,
median printed. ``--quick``: 4 tasks in the step part, 1 batch and 1 round in the run part (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from facebench.benchmarks.perf.common import header, median
from facebench.benchmarks.perf.weighting_cost import _current_rss_mb, _peak_rss_mb

VARIANTS = ("equal", "loop", "batched", "representation", "torchjd")
MTL = {"equal": {"weighting": "equal"},
       "loop": {"weighting": "pcgrad", "gradients": "parameters", "jacobian": "loop"},
       "batched": {"weighting": "pcgrad", "gradients": "parameters", "jacobian": "batched"},
       "representation": {"weighting": "pcgrad", "gradients": "representation"},
       "torchjd": {"weighting": "equal"}}      # the model only: torchjd's backward replaces the objective
WIDTH = 0.125


class Stepper:
    """One variant's model, optimiser and two random batches; :meth:`step` runs one training step."""

    def __init__(self, variant: str, n_tasks: int, batch_size: int = 64):
        import torch

        from facebench.core.tasks import TaskSpec
        from facebench.datamodules.celeba import CELEBA_ATTRIBUTES
        from facebench.lightning_modules.mtl_cnn import MultiTaskCNN

        torch.manual_seed(0)
        task = TaskSpec.binary_attributes(list(CELEBA_ATTRIBUTES[:n_tasks]), name="celeba")
        self.variant = variant
        self.model = MultiTaskCNN(task, width=WIDTH, mtl={**MTL[variant], "tasks": "targets"})
        self.model.train()
        self.opt = self.model.configure_optimizers()
        g = torch.Generator().manual_seed(1)
        self.batches = [{"image": torch.randn(batch_size, 3, 64, 64, generator=g),
                         "label": torch.randint(0, 2, (batch_size, n_tasks), generator=g)} for _ in range(2)]
        self.count = 0
        if variant == "torchjd":
            from torchjd.aggregation import PCGrad

            self.aggregator = PCGrad()

    def _torchjd_step(self, batch: dict[str, Any]) -> Any:
        from torchjd.autojac import jac_to_grad, mtl_backward

        import torch.nn.functional as F

        net = self.model.networks[0]
        h = net.trunk(batch["image"])
        logits = net.head(h)[:, self.model.logit_order]
        y = batch["label"].float()   # every label present: the per-attribute loss of target_losses, one graph each
        losses = [F.binary_cross_entropy_with_logits(logits[:, k], y[:, k]) for k in range(y.shape[1])]
        self.opt.zero_grad(set_to_none=True)
        mtl_backward(losses, features=h, retain_graph=True)   # one Linear holds every head: keep its graph; heads: their task's gradient; trunk: the Jacobian in .jac
        jac_to_grad(list(net.trunk.parameters()), self.aggregator)
        return sum(losses)

    def step(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one training step."""
        import torch

        batch = self.batches[self.count % 2]
        t0, c0 = time.perf_counter(), time.process_time()
        if self.variant == "torchjd":
            loss = self._torchjd_step(batch)
        else:
            loss, _ = self.model.training_loss(batch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        self.opt.step()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if not torch.isfinite(loss):
            raise RuntimeError(f"{self.variant}: non-finite loss")
        self.count += 1
        return wall, cpu


def time_steps(n_tasks: int, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    import torch

    torch.set_num_threads(1)
    steppers = {v: Stepper(v, n_tasks) for v in VARIANTS}
    for s in steppers.values():
        for _ in range(args.warmup):
            s.step()
    out = {v: {"cpu": [], "wall": [], "cpu_ratio": [], "wall_ratio": []} for v in VARIANTS}
    names = list(VARIANTS)
    for r in range(args.rounds):
        this = {}
        for v in names[r % len(names):] + names[:r % len(names)]:
            times = [steppers[v].step() for _ in range(args.steps)]
            this[v] = (median([t[0] for t in times]), median([t[1] for t in times]))
        for v in names:
            out[v]["wall"].append(this[v][0])
            out[v]["cpu"].append(this[v][1])
            out[v]["wall_ratio"].append(this[v][0] / this["equal"][0])
            out[v]["cpu_ratio"].append(this[v][1] / this["equal"][1])
    return out


def memory_child(variant: str, n_tasks: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    stepper = Stepper(variant, n_tasks)
    before = _current_rss_mb()
    stepper.step()
    stepper.step()
    return {"step_peak_growth_mb": max(0.0, _peak_rss_mb() - before)}


def run_memory_child(variant: str, n_tasks: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "facebench.benchmarks.perf.mtl_gradients", "--memory-child", variant, str(n_tasks)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_part(args: argparse.Namespace) -> None:
    header("PCGrad's per-task gradients: one training step, ratio to equal",
           {"model": f"mtl_cnn width {WIDTH}, 64x64, batch 64, random inputs", "threads": 1,
            "time": f"{args.rounds} rounds x {args.steps} steps per variant after {args.warmup} warm-up, one process",
            "memory": "fresh subprocess per variant (step peak RSS growth)"})
    for n_tasks in args.tasks:
        with ThreadPoolExecutor(max_workers=2) as pool:
            memory = dict(zip(VARIANTS, pool.map(lambda v: run_memory_child(v, n_tasks), VARIANTS)))
        timing = time_steps(n_tasks, args)
        eq, eq_mem = timing["equal"], memory["equal"]["step_peak_growth_mb"]
        print(f"\n-- {n_tasks} tasks; equal: {1000 * median(eq['cpu']):.0f} ms CPU / {1000 * median(eq['wall']):.0f} ms wall "
              f"per step, step memory {eq_mem:.0f} MiB; load average {os.getloadavg()[0]:.1f}")
        print(f"   {'variant':<15} {'CPU ratio':>9} {'wall ratio':>10} {'CPU ms':>7} {'step MiB':>8} {'mem ratio':>9}   per-round CPU ratios")
        for v in VARIANTS:
            t, mem = timing[v], memory[v]["step_peak_growth_mb"]
            print(f"   {v:<15} {median(t['cpu_ratio']):>9.2f} {median(t['wall_ratio']):>10.2f} {1000 * median(t['cpu']):>7.0f} "
                  f"{mem:>8.0f} {mem / eq_mem if eq_mem > 0 else float('nan'):>9.2f}   "
                  + ", ".join(f"{x:.2f}" for x in t["cpu_ratio"]), flush=True)


RUN_KEYS = ("equal", "pcgrad_parameters", "pcgrad_representation")


def suite_yaml(batches: int) -> str:
    """The probe suite: SynthFaces, ``batches`` batches of 64 at 64 px, one epoch, mtl_cnn width 0.125,
    one task per attribute (40)."""
    tasks = "targets"
    methods = {"equal": {"weighting": "equal", "tasks": tasks},
               "pcgrad_parameters": {"weighting": "pcgrad", "tasks": tasks, "gradients": "parameters"},
               "pcgrad_representation": {"weighting": "pcgrad", "tasks": tasks, "gradients": "representation"}}
    import yaml

    suite = {"name": "mtl_gradients_probe", "description": "per-task gradient cost probe (benchmarks/perf/mtl_gradients.py)",
             "seeds": [0],
             "trainer": {"max_epochs": 1, "limit_train_batches": batches, "accelerator": "cpu", "devices": 1,
                         "precision": "32-true"},
             "datasets": {"synthfaces": {"datamodule": "synthfaces", "args": {
                 "n_identities": 300, "images_per_identity": 10, "render_size": 64, "batch_size": 64, "num_workers": 1}}},
             "methods": {k: {"method": "mtl_cnn", "args": {"width": WIDTH, "mtl": m}} for k, m in methods.items()}}
    return yaml.safe_dump(suite, sort_keys=False)


def train_time(folder: Path, key: str) -> float:
    status = json.loads((folder / "mtl_gradients_probe" / "runs" / f"{key}--synthfaces--s0" / "status.json").read_text())
    return float(status["timing"]["train_time_s"])


def run_part(args: argparse.Namespace) -> dict[str, list[float]]:
    n_tasks, batches, rounds = (40, 1, 1) if args.quick else (40, 12, args.rounds)
    header(f"facebench run: training time of PCGrad over {n_tasks} tasks as a ratio to equal",
           {"data": f"SynthFaces, {batches} batches of 64 at 64 px, 1 epoch", "model": f"mtl_cnn width {WIDTH}",
            "processes": "one facebench run --only KEY --force per run, OMP_NUM_THREADS=1", "rounds": rounds})
    work = Path(tempfile.mkdtemp(prefix="mtl_gradients_"))
    suite = work / "suite.yaml"
    suite.write_text(suite_yaml(batches))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {k: [] for k in RUN_KEYS}
    ratios: dict[str, list[float]] = {k: [] for k in RUN_KEYS}
    keys = list(RUN_KEYS)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            cmd = [sys.executable, "-m", "facebench.benchmarks.cli", "run", str(suite), "--only", key, "--force",
                   "--results", str(work / "results")]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
            if proc.returncode != 0 and not (work / "results" / "mtl_gradients_probe" / "runs" / f"{key}--synthfaces--s0"
                                             / "status.json").is_file():
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            times[key].append(train_time(work / "results", key))
        for key in keys:
            ratios[key].append(times[key][-1] / times["equal"][-1])
        print(f"   round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.1f} s ({ratios[k][-1]:.2f}x)" for k in keys)
              + f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    for key in keys:
        print(f"   {key:<24} median training time {median(times[key]):7.1f} s   ratio to equal {median(ratios[key]):.2f}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["step", "run", "both"], default="both")
    ap.add_argument("--tasks", type=int, nargs="+", default=[10, 20, 40])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke test: small and one round")
    ap.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "TASKS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child[0], int(args.memory_child[1]))))
        return 0
    if args.quick:
        args.tasks, args.rounds, args.steps, args.warmup = [4], 1, 1, 0
    if args.part in ("step", "both"):
        step_part(args)
    if args.part in ("run", "both"):
        run_part(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
