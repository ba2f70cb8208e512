"""CPU cost of one training epoch of each method of a suite, from two short probes (for the budget a
suite's header states).

``python -m facebench.benchmarks.perf.suite_epoch_cost SUITE [--only KEY ...] [--batches 2 8] [--steps-per-epoch N]``

For every method key, ``facebench run SUITE --only KEY --force --results <temporary folder> --set
seeds=[0] trainer.max_epochs=1 trainer.limit_train_batches=B`` (and the same under
``methods.KEY.trainer``, which a method's own trainer block would otherwise override) runs twice, with the two ``--batches``
values, one thread (``OMP_NUM_THREADS=1``), never into ``results/``. The CPU time (user + system) of
each run and its children (data-loading workers) gives the cost of one training step, ``(c(B2) -
c(B1)) / (B2 - B1)``, and the fixed cost of a run (start-up, one validation and test pass, records),
``c(B1) - B1 * step``. An epoch is projected as ``steps_per_epoch * step`` plus one validation pass
(part of the fixed cost, not separated here). Printed per key: step, fixed, projected epoch (CPU
seconds) and the load average during the probes (CPU time hardly moves with the load; wall time does).
``--quick``: the first key only, 1 and 2 batches.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from facebench.benchmarks.perf.common import header


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def probe_overrides(key: str, batches: int) -> list[str]:
    """The ``--set`` values of a probe: one seed, one epoch of ``batches`` training batches, also
    under the method's own trainer block (which overrides the suite's)."""
    return ["seeds=[0]", "trainer.max_epochs=1", f"trainer.limit_train_batches={batches}",
            f"methods.{key}.trainer.max_epochs=1", f"methods.{key}.trainer.limit_train_batches={batches}"]


def probe(suite: str, key: str, batches: int, results: Path) -> float:
    """CPU seconds of one ``facebench run`` of ``key`` limited to ``batches`` training batches."""
    cmd = [sys.executable, "-m", "facebench.benchmarks.cli", "run", suite, "--only", key, "--force", "--results", str(results),
           "--set", *probe_overrides(key, batches)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return children_cpu() - before


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite")
    ap.add_argument("--only", nargs="+", help="method keys (default: every method of the suite)")
    ap.add_argument("--batches", type=int, nargs=2, default=[2, 8])
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="default: the suite's training split / batch size")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    from facebench.benchmarks.suite import suite_path

    import yaml

    path = suite_path(args.suite)
    raw = yaml.safe_load(path.read_text())
    keys = args.only or list(raw["methods"])
    b1, b2 = args.batches
    if args.quick:
        keys, b1, b2 = keys[:1], 1, 2
    header(f"per-epoch CPU cost of {args.suite}'s methods (probes of {b1} and {b2} batches, one thread)",
           {"suite_file": path, "steps_per_epoch": args.steps_per_epoch or "given per line (the suite's split)"})
    with tempfile.TemporaryDirectory(prefix="epoch_cost_") as tmp:
        for key in keys:
            c1 = probe(str(path), key, b1, Path(tmp))
            c2 = probe(str(path), key, b2, Path(tmp))
            step = max(0.0, (c2 - c1) / (b2 - b1))
            fixed = c1 - b1 * step
            line = f"   {key:<16} step {step:6.2f} s   fixed {fixed:6.1f} s"
            if args.steps_per_epoch:
                line += f"   epoch ~{args.steps_per_epoch * step:7.0f} s (+ one validation pass)"
            print(line + f"   load average {os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
