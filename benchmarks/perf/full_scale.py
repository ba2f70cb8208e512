"""Full-size scale check (issue 13): the celeba_h100 suite's data path at CelebA's full size, on CPU.

``python -m facebench.benchmarks.perf.full_scale [--n 202599] [--fraction 8] [--size 96] [--out DIR] [--keep]
[--stages ...] [--sizes full eighth] [--mcnn-steps 20] [--json PATH]``

Writes SynthFaces in CelebA's layout at full size (``facebench synth --format celeba --n 202599``;
rendered at ``--size`` px, 96 by default: the real CelebA's 178x218 JPEGs would take ~3x the disk
and the render time, while every per-image step of the pipeline is the same), rewrites its
``list_eval_partition.txt`` to CelebA's official split sizes (162,770 / 19,867 / 19,962, scaled for
another ``--n``; images in file order, as in CelebA), and a second CelebA-layout folder listing the
first 1/``--fraction`` of every split (its own list files, the image folder a symbolic link). Then,
per size, each stage in its own subprocess (``--child``), so that its peak RSS is its own:

* ``generate`` (full size only): ``facebench synth``: wall time, images/s, disk size;
* ``inspect``: ``facebench inspect --dataset celeba --root DIR`` four times after clearing the
  per-image cache: ``--no-file-checks`` cold (parsing + the header check of every image) and warm
  (parsing, checks looked up), then with the file checks cold (+ the SHA-1 of every image for the
  duplicate groups, computed once and cached) and warm (what every later setup pays: a run's
  ``data_checks`` looks the hashes up too);
* ``cache``: the image caches the suite's runs use (MCNN / ResNet-18: resize 256, crop 227;
  majority: its 64-px input), built for every split as the suite path builds them: time and the
  size of the ``.npy`` files under ``$FACEBENCH_CACHE/image_cache``;
* ``majority``: ``facebench run celeba_h100 --only majority`` for a full epoch (it iterates the
  whole training loader and evaluates the whole val and test splits);
* ``mcnn``: ``facebench run celeba_h100 --only mcnn`` at the paper's 227 px for ``--mcnn-steps``
  training steps (``trainer.limit_train_batches``; 5 validation and 5 test batches): a full
  227-px MCNN epoch on a 2-core CPU takes hours.

The runs use the suite with CPU overrides (``trainer.accelerator=cpu trainer.precision=32-true
trainer.devices=1``, ``channels_last`` / ``torch_compile`` off, 2 workers, no pinned memory,
``augment_on: worker`` as the CPU suites; seed 0 only; results under ``--out``) and run in the
stage's process (``facebench.benchmarks.runner.run_suite(..., in_process=True, report=False)``: what
``facebench run --in-process`` does, without the leaderboard), so the training process is the child
and its DataLoader workers are its children. Printed per run: the time of the work (imports and
process start-up excluded, then included), the training loop's images/s (epoch start to the last
batch, validation excluded; ``steady``: from the first batch on, i.e. without worker start-up), the
run's own recorded figures, the peak RSS of the training process (``getrusage(RUSAGE_SELF)``) and of
its largest child (``RUSAGE_CHILDREN``), and the largest descendant's sampled RSS / PSS / private /
anonymous memory (:class:`DescendantMemory`: a forked worker's ``getrusage`` RSS starts at its
parent's, and its RSS counts the memory-mapped cache pages it touched, shared page-cache pages).

Everything goes under ``--out`` (default ``/tmp/facebench_full_scale``: about 12 GB at 96 px, 9 GB of
it image caches; ``$FACEBENCH_CACHE`` points there for the children) and is deleted at the end unless
``--keep``; the figures are written to ``--json`` too. Stages can be re-run alone on kept data
(``--stages``). Figures and the commands: ``benchmarks/perf/RESULTS.md``, "Full-size scale check".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from facebench.benchmarks.perf.common import peak_rss_mb

#: CelebA's official split sizes (list_eval_partition.txt of the full release).
OFFICIAL_SPLIT = (162_770, 19_867, 19_962)
STAGES = ("generate", "inspect", "cache", "majority", "mcnn")
#: ``facebench inspect`` runs after the per-image cache is cleared: setup with the header check of
#: every image (cold, then warm), then with the SHA-1 of every image (cold, then warm).
INSPECT_SEQUENCE = (("inspect_no_file_checks_cold", "0"), ("inspect_no_file_checks_warm", "0"),
                    ("inspect_hashes_cold", "1"), ("inspect_hashes_warm", "1"))
#: The celeba_h100 suite on CPU (what every run of this script overrides).
CPU_OVERRIDES = ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1", "seeds=[0]",
                 "datasets.celeba.args.num_workers=2", "datasets.celeba.args.pin_memory=false",
                 "datasets.celeba.args.augment_on=worker",
                 "methods.mcnn.args.channels_last=false", "methods.mcnn.args.torch_compile=false"]


def split_counts(n: int) -> list[int]:
    """CelebA's official split sizes scaled to ``n`` images (exact at 202,599)."""
    total = sum(OFFICIAL_SPLIT)
    train, val = round(n * OFFICIAL_SPLIT[0] / total), round(n * OFFICIAL_SPLIT[1] / total)
    return [train, val, n - train - val]


def official_partition(root: Path) -> list[int]:
    """Rewrite ``list_eval_partition.txt``: the first images train, the next val, the rest test."""
    names = [ln.split()[0] for ln in (root / "list_eval_partition.txt").read_text().splitlines() if ln.strip()]
    counts = split_counts(len(names))
    codes = [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
    (root / "list_eval_partition.txt").write_text("".join(f"{f} {c}\n" for f, c in zip(names, codes)))
    return counts


def subset(root: Path, out: Path, fraction: int) -> list[int]:
    """A CelebA-layout folder listing the first ``1/fraction`` of each split of ``root`` (list files
    rewritten, ``img_align_celeba`` a symbolic link to ``root``'s)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    part = [ln.split() for ln in (root / "list_eval_partition.txt").read_text().splitlines() if ln.strip()]
    keep: set[str] = set()
    counts = []
    for code in ("0", "1", "2"):
        names = [f for f, c in part if c == code]
        keep.update(names[:-(-len(names) // fraction)])
        counts.append(-(-len(names) // fraction))
    for name, head in (("list_attr_celeba.txt", 2), ("list_landmarks_align_celeba.txt", 2),
                       ("list_eval_partition.txt", 0), ("identity_CelebA.txt", 0)):
        if not (root / name).is_file():
            continue
        lines = (root / name).read_text().splitlines()
        rows = [ln for ln in lines[head:] if ln.split(maxsplit=1)[:1] and ln.split(maxsplit=1)[0] in keep]
        top = ([str(len(rows))] + lines[1:2]) if head else []
        (out / name).write_text("\n".join(top + rows) + "\n")
    os.symlink((root / "img_align_celeba").resolve(), out / "img_align_celeba")
    return counts


def disk_mb(path: Path) -> float:
    """Disk usage of a file or folder (allocated blocks; symbolic links not followed), MiB."""
    if path.is_file():
        return path.stat().st_blocks * 512 / 2**20
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*")) / 2**20


class DescendantMemory(threading.Thread):
    """Samples (every ``interval`` s, from ``/proc``) the memory of every descendant of this process
    (DataLoader workers, cache-build and render pools) and keeps the largest per-process RSS, PSS
    (shared pages divided among their users), USS (private pages, the memory-mapped cache pages only
    this process touched included) and anonymous memory (heap, pages shared copy-on-write with the
    parent: no file pages), MiB. ``getrusage`` gives the exact peak RSS, but a forked worker's RSS
    starts at its parent's (the pages they share) and counts the cache pages it maps, so PSS and
    anonymous memory are what show whether a worker's own memory grows with the dataset. Linux only."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.peak = interval, {"rss": 0.0, "pss": 0.0, "uss": 0.0, "anon": 0.0}
        self._done = threading.Event()

    @staticmethod
    def descendants(root: int) -> list[int]:
        """Process ids of every descendant of ``root`` (from each process's parent in ``/proc``)."""
        parent: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
        out, todo = [], [root]
        while todo:
            cur = todo.pop()
            kids = [p for p, pp in parent.items() if pp == cur]
            out += kids
            todo += kids
        return out

    @staticmethod
    def memory(pid: int) -> dict[str, float]:
        """RSS, PSS, USS and anonymous memory of ``pid`` (``/proc/<pid>/smaps_rollup``), MiB."""
        kb: dict[str, float] = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    kb[parts[0].rstrip(":")] = float(parts[1])
        return {"rss": kb.get("Rss", 0) / 1024, "pss": kb.get("Pss", 0) / 1024,
                "uss": (kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0)) / 1024,
                "anon": kb.get("Anonymous", 0) / 1024}

    def run(self) -> None:
        me = os.getpid()
        while not self._done.wait(self.interval):
            for pid in self.descendants(me):
                try:
                    m = self.memory(pid)
                except (OSError, ValueError):
                    continue
                for k, v in m.items():
                    self.peak[k] = max(self.peak[k], v)

    def stop(self) -> dict[str, float]:
        self._done.set()
        self.join(timeout=5)
        return dict(self.peak)


# ------------------------------------------------------------------------------------------------
# children: one stage each, in a fresh process
# ------------------------------------------------------------------------------------------------
def child_generate(root: Path, n: int, size: int) -> dict[str, Any]:
    from facebench.datamodules.synthfaces.cli import main as synth

    rc = synth(["--format", "celeba", "--out", str(root), "--n", str(n), "--seed", "0", "--size", str(size),
                "--overwrite"])
    return {"rc": rc}


def child_inspect(root: Path, file_checks: bool) -> dict[str, Any]:
    from facebench.benchmarks.cli import main as cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(["inspect", "--dataset", "celeba", "--root", str(root), *([] if file_checks else ["--no-file-checks"])])
    text = buf.getvalue()
    return {"rc": rc, "output_lines": text.count("\n"), "first_lines": text.splitlines()[:4]}


def _suite_runs(root: Path, results: Path) -> dict[str, Any]:
    from facebench.benchmarks.overrides import parse_sets
    from facebench.benchmarks.suite import load_suite

    sets = parse_sets(CPU_OVERRIDES + [f"datasets.celeba.args.root={root}", f"results_dir={results}"])
    return {r.method_key: r.config for r in load_suite("celeba_h100", overrides=sets).runs}


def child_cache(root: Path, results: Path) -> dict[str, Any]:
    """Build the image caches of the suite's runs (every split) exactly as their loaders do."""
    from facebench.benchmarks.worker import SUITE_DATAMODULE_DEFAULTS
    from facebench.datamodules.base import create_datamodule
    from facebench.lightning_modules.registry import create_method

    out: dict[str, Any] = {}
    for key in ("majority", "mcnn"):
        cfg = _suite_runs(root, results)[key]
        dm = create_datamodule(cfg["dataset"]["datamodule"], **{**SUITE_DATAMODULE_DEFAULTS, **cfg["dataset"]["args"]})
        dm.setup("fit")
        args = {**cfg["method"]["args"], **({"pixel_mean": [0.5, 0.5, 0.5]} if key == "mcnn" else {})}
        model = create_method(cfg["method"]["name"], dm.task, **args)
        dm.configure_input(model.image_size, model.in_chans, train_defaults=model.default_train_transforms)
        for split in dm.tables:
            geometry = dm.stored_geometry(dm.train_cfg if split == "train" else dm.eval_cfg)
            t0 = time.perf_counter()
            stored = dm.stored_images(split, geometry, build=True)
            out[f"{key}/{split}"] = {"seconds": time.perf_counter() - t0, "images": len(dm.tables[split]),
                                     "geometry": geometry.describe(), "cached": stored is not None,
                                     "file": str(stored.pixels_path) if stored is not None else None,
                                     "mb": disk_mb(stored.pixels_path) if stored is not None else 0.0,
                                     "shape": list(stored.pixels.shape) if stored is not None else None}
    return out


def child_run(root: Path, results: Path, method: str, steps: int) -> dict[str, Any]:
    """``facebench run celeba_h100 --only METHOD`` in this process, with a training-loop timer."""
    import lightning as L

    import facebench.benchmarks.worker as worker
    import facebench.datamodules.base as base
    from facebench.benchmarks.overrides import parse_sets
    from facebench.benchmarks.runner import run_suite

    class LoopTimer(L.Callback):
        """Training loop time: epoch start to the last batch's end (validation excluded)."""

        def __init__(self) -> None:
            self.images, self.first_images, self.t0, self.first, self.last = 0, 0, 0.0, 0.0, 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.last = time.perf_counter()
            self.images += int(batch["image"].shape[0])
            if not self.first:
                self.first, self.first_images = self.last, self.images

    timer, seen = LoopTimer(), {}
    build, create = worker.build_trainer, base.create_datamodule

    def build_trainer(*a: Any, **k: Any) -> Any:
        trainer = build(*a, **k)
        trainer.callbacks.append(timer)
        return trainer

    def create_datamodule(*a: Any, **k: Any) -> Any:
        seen["dm"] = create(*a, **k)
        return seen["dm"]

    worker.build_trainer, base.create_datamodule = build_trainer, create_datamodule
    sets = CPU_OVERRIDES + [f"datasets.celeba.args.root={root}", f"results_dir={results}"]
    if method == "mcnn":
        sets += ["methods.mcnn.trainer.max_epochs=1", f"trainer.limit_train_batches={steps}",
                 "trainer.limit_val_batches=5", "trainer.limit_test_batches=5"]
    outcomes = run_suite("celeba_h100", only=[method], force=True, overrides=parse_sets(sets), in_process=True,
                         report=False)
    run_dir = results / "runs" / f"{method}--celeba--s0"
    status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").is_file() else {}
    rec: dict[str, Any] = {}
    if (run_dir / "metrics.csv").is_file():
        import pandas as pd

        row = pd.read_csv(run_dir / "metrics.csv").iloc[0]
        rec = {k: float(row[k]) for k in ("train_time_s", "eval_time_s", "wall_time_s", "train_images_per_s")
               if k in row}
    dm = seen.get("dm")
    loop = timer.last - timer.t0
    steady = timer.last - timer.first
    return {"outcomes": [o.state for o in outcomes], "state": status.get("state"), "error": status.get("error"),
            "records": rec,
            "train_images": timer.images, "loop_s": loop, "images_per_s": timer.images / loop if loop > 0 else None,
            "steady_images_per_s": (timer.images - timer.first_images) / steady if steady > 0 else None,
            "first_batch_s": timer.first - timer.t0,
            "splits": {s: len(t) for s, t in dm.tables.items()} if dm is not None else {},
            "image_cache": dm.report.get("image_cache") if dm is not None else None}


def run_child(stage: str, *args: str, env: dict[str, str]) -> dict[str, Any]:
    """``--child STAGE ARGS`` in a fresh process: its result, wall time and peak RSS."""
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", "facebench.benchmarks.perf.full_scale", "--child", stage, *args],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        raise SystemExit(f"stage {stage} {' '.join(args)} failed (exit code {proc.returncode})")
    return {**json.loads(line[7:]), "wall_s": wall, "load_before": load0, "load_after": os.getloadavg()[0]}


def child_main(stage: str, args: list[str]) -> int:
    """One stage in this process: its result, the time of its work (imports excluded) and memory."""
    root = Path(args[0]) if args else Path(".")
    if stage == "machine":
        from facebench.benchmarks.perf.common import machine

        print("RESULT " + json.dumps(machine()), flush=True)
        return 0
    if stage != "generate":
        import lightning  # noqa: F401  (imports outside the timed work)

        import facebench.benchmarks.runner  # noqa: F401
        import facebench.datamodules.all  # noqa: F401
    sampler = DescendantMemory()
    sampler.start()
    t0 = time.perf_counter()
    if stage == "generate":
        out = child_generate(root, int(args[1]), int(args[2]))
    elif stage == "inspect":
        out = child_inspect(root, args[1] == "1")
    elif stage == "cache":
        out = child_cache(root, Path(args[1]))
    else:
        out = child_run(root, Path(args[1]), stage, int(args[2]))
    work = time.perf_counter() - t0
    children = sampler.stop()
    rss = peak_rss_mb()
    print("RESULT " + json.dumps({**out, "work_s": work, "rss_self_mb": rss["self"], "rss_children_mb": rss["children"],
                                  **{f"child_{k}_mb": v for k, v in children.items()}}, default=str), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------------
def report(stage: str, r: dict[str, Any]) -> None:
    rss = (f"peak RSS main {r['rss_self_mb']:,.0f} MiB, largest child {r['rss_children_mb']:,.0f} MiB "
           f"(sampled: RSS {r['child_rss_mb']:,.0f}, PSS {r['child_pss_mb']:,.0f}, private {r['child_uss_mb']:,.0f}, "
           f"anonymous {r.get('child_anon_mb', 0):,.0f})")
    print(f"   {stage:<30} {r['work_s']:8.1f} s ({r['wall_s']:.0f} s with start-up)   {rss}   "
          f"(load {r['load_before']:.1f} -> {r['load_after']:.1f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=sum(OFFICIAL_SPLIT))
    ap.add_argument("--fraction", type=int, default=8)
    ap.add_argument("--size", type=int, default=96, help="render size of SynthFaces (px)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/facebench_full_scale"))
    ap.add_argument("--json", type=Path, default=Path("/tmp/facebench_full_scale.json"))
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--sizes", nargs="+", choices=("full", "eighth"), default=["full", "eighth"])
    ap.add_argument("--mcnn-steps", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the generated data, caches and results")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child[0], args.child[1:])
    out = args.out.absolute()
    full, eighth = out / "celeba_full", out / f"celeba_1of{args.fraction}"
    env = {**os.environ, "FACEBENCH_CACHE": str(out / "cache"), "FACEBENCH_WANDB": "0"}
    results: dict[str, Any] = json.loads(args.json.read_text()) if args.json.is_file() else {}
    # this process stays small (no torch): a child's RSS counts the pages it shares with it at fork
    results["machine"] = {k: v for k, v in run_child("machine", env=env).items()
                          if k not in ("wall_s", "load_before", "load_after")}
    print(f"== full-size scale check: SynthFaces CelebA layout, {args.n:,} images at {args.size} px")
    for k, v in {**results["machine"], "out": out, "stages": " ".join(args.stages), "sizes": " ".join(args.sizes),
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")}.items():
        print(f"   {k}: {v}")
    out.mkdir(parents=True, exist_ok=True)
    if "generate" in args.stages:
        r = run_child("generate", str(full), str(args.n), str(args.size), env=env)
        r.update(images=args.n, images_per_s=args.n / r["work_s"], disk_mb=disk_mb(full),
                 images_mb=disk_mb(full / "img_align_celeba"), files=len(os.listdir(full / "img_align_celeba")),
                 split=official_partition(full))
        results["generate"] = r
        report("generate", r)
        print(f"      {r['images_per_s']:.0f} images/s, {r['disk_mb']:,.0f} MiB on disk ({r['files']:,} files); "
              f"official split {r['split']}", flush=True)
    if "eighth" in args.sizes and ("generate" in args.stages or not (eighth / "list_attr_celeba.txt").is_file()):
        results["eighth_split"] = subset(full, eighth, args.fraction)
    for size in args.sizes:
        root, res = (full, out / "results_full") if size == "full" else (eighth, out / "results_eighth")
        store = results.setdefault(size, {})
        if "inspect" in args.stages:
            (out / "cache" / "per_image_cache.sqlite").unlink(missing_ok=True)   # cold: nothing verified or hashed
            for label, checks in INSPECT_SEQUENCE:
                store[label] = run_child("inspect", str(root), checks, env=env)
                report(f"{size}: {label}", store[label])
        if "cache" in args.stages:
            store["cache"] = run_child("cache", str(root), str(res), env=env)
            report(f"{size}: cache build", store["cache"])
            for k, v in store["cache"].items():
                if isinstance(v, dict):
                    print(f"      {k:<16} {v['images']:>7,} images {v['geometry']:<18} {v['seconds']:7.1f} s "
                          f"{v['mb']:9,.0f} MiB  shape {v['shape']}", flush=True)
        for method in ("majority", "mcnn"):
            if method in args.stages:
                r = store[method] = run_child(method, str(root), str(res), str(args.mcnn_steps), env=env)
                report(f"{size}: {method}", r)
                print(f"      state {r['state']} {r['error'] or ''}; {r['train_images']:,} training images in "
                      f"{r['loop_s']:.1f} s = {r['images_per_s'] or 0:.0f} images/s "
                      f"(steady {r['steady_images_per_s'] or 0:.0f}, first batch {r['first_batch_s']:.1f} s); "
                      f"records {r['records']}; splits {r['splits']}", flush=True)
        args.json.write_text(json.dumps(results, indent=1, default=str))
    args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"   figures -> {args.json}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
        print(f"   deleted {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
