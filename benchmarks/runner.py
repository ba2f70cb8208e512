"""Run a suite: every pending run in its own worker process (``facebench.benchmarks.worker``), finished runs
skipped, killed runs resumed from their last checkpoint, then the leaderboard.

Concurrency: each run directory has a ``lock`` file created exclusively (``O_EXCL``) by the process
that runs it; a lock left by a dead process on this host is taken over. ``--shard i/n`` gives each
machine a disjoint set of run chains, so processes sharing a results folder never write the same
file. Launched under torchrun or SLURM (``WORLD_SIZE`` > 1 in the environment) the runs execute in
this process on every rank, and Lightning picks up the cluster environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facebench.core.io import read_json, write_json, write_yaml
from facebench.benchmarks.suite import RunSpec, Suite, load_suite, matches, parse_shard, select
from facebench.benchmarks.worker import STATUS


@dataclass
class RunOutcome:
    run: RunSpec
    state: str
    seconds: float = 0.0
    message: str = ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(run_dir: Path) -> bool:
    """Create ``run_dir/lock`` exclusively; take over a lock whose owner process on this host died."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / "lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return True
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()
            except (OSError, ValueError):
                host, pid = "", "0"
            if host == socket.gethostname() and not _pid_alive(int(pid)):
                lock.unlink(missing_ok=True)   # stale: its owner was killed
                continue
            return False
    return False


def release_lock(run_dir: Path) -> None:
    (run_dir / "lock").unlink(missing_ok=True)


def _distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _summary_line(outcome: RunOutcome) -> str:
    st = read_json(Path(outcome.message) / STATUS, {}) if outcome.state == "done" and outcome.message else {}
    s = st.get("summary") or {}
    parts = [f"{k.removeprefix('mean_')} {v:.4f}" for k, v in s.items() if k in
             ("mean_accuracy", "mean_balanced_accuracy", "mean_auroc")]
    mark = {"done": "done", "cached": "cached", "failed": "FAILED", "incompatible": "skipped (incompatible)",
            "blocked": "blocked", "busy": "busy (another process)", "stale": "stale"}.get(outcome.state, outcome.state)
    extra = "  ".join(parts) if parts else (outcome.message if outcome.state not in ("done", "cached") else "")
    return f"[facebench] {mark:<8} {outcome.run.run_id:<48} {extra}  ({outcome.seconds:.0f}s)"


def run_one(suite: Suite, run: RunSpec, force: bool = False, in_process: bool = False) -> RunOutcome:
    run_dir = suite.run_dir(run)
    status = read_json(run_dir / STATUS, {}) or {}
    if status.get("state") in ("done", "incompatible") and not force:
        if status.get("config_hash") == run.config_hash:
            return RunOutcome(run, "cached", message=str(run_dir))
        return RunOutcome(run, "stale", message=f"config changed since this run finished; --force re-runs it ({run_dir})")
    if run.depends_on:
        parent = read_json(suite.results_dir / "runs" / run.depends_on / STATUS, {}) or {}
        if parent.get("state") != "done":
            return RunOutcome(run, "blocked", message=f"needs {run.depends_on} ({parent.get('state', 'not run')})")
    distributed = _distributed_launch()
    if distributed:
        return _run_distributed(suite, run, run_dir, force)
    if not acquire_lock(run_dir):
        return RunOutcome(run, "busy", message=str(run_dir / "lock"))
    t0 = time.time()
    try:
        _prepare_run_dir(run, run_dir, status, force)
        if in_process:
            from facebench.benchmarks.worker import execute

            execute(run_dir)
        else:
            # the worker runs in this directory, so relative dataset roots mean the same in both processes
            subprocess.run([sys.executable, "-m", "facebench.benchmarks.worker", str(run_dir)])
    finally:
        release_lock(run_dir)
    return _outcome(run, run_dir, t0)


def _prepare_run_dir(run: RunSpec, run_dir: Path, status: dict[str, Any], force: bool) -> None:
    """Clear a run directory that is forced or holds another config, then write config and status."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if force or status.get("config_hash") not in (None, run.config_hash):
        for p in run_dir.iterdir():
            if p.name != "lock":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_yaml(run_dir / "config.yaml", run.config)
    st = {} if force else (read_json(run_dir / STATUS, {}) or {})
    st.setdefault("state", "pending")
    st["config_hash"] = run.config_hash
    write_json(run_dir / STATUS, st)


def _run_distributed(suite: Suite, run: RunSpec, run_dir: Path, force: bool) -> RunOutcome:
    """Launched by torchrun / SLURM: every rank executes the run in-process; rank 0 owns the files.
    A barrier after each run keeps the ranks in step (all see rank 0's final status)."""
    import torch.distributed as dist

    from facebench.benchmarks.worker import execute

    t0 = time.time()
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank == 0:
        _prepare_run_dir(run, run_dir, read_json(run_dir / STATUS, {}) or {}, force)
    execute(run_dir, cfg=run.config)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return _outcome(run, run_dir, t0)


def _outcome(run: RunSpec, run_dir: Path, t0: float) -> RunOutcome:
    st = read_json(run_dir / STATUS, {}) or {}
    state = st.get("state", "failed")
    if state == "running":       # the worker died without writing its end state
        state, st["error"] = "failed", "worker process exited while running (killed?); re-run to resume"
    return RunOutcome(run, state, time.time() - t0, message=str(run_dir) if state == "done" else st.get("error", ""))


def run_suite(name: str = "quick", *, only: list[str] | None = None, shard: str | None = None, force: bool = False,
              results_root: str | None = None, overrides: dict[str, Any] | None = None, in_process: bool = False,
              report: bool = True) -> list[RunOutcome]:
    suite = load_suite(name, results_root=results_root, overrides=overrides)
    runs = select(suite.runs, only, parse_shard(shard) if shard else None)
    print(f"[facebench] suite {suite.name}: {len(runs)} run(s) -> {suite.results_dir}", flush=True)
    outcomes = []
    for run in runs:
        print(f"[facebench] start    {run.run_id}", flush=True)
        # --force re-runs what --only names; the earlier stages it brings along only run if not done
        outcome = run_one(suite, run, force=force and (not only or matches(run, only)), in_process=in_process)
        outcomes.append(outcome)
        print(_summary_line(outcome), flush=True)
    failed = [o for o in outcomes if o.state in ("failed", "blocked")]
    if report and shard:   # other shards may still be writing: one report once all are done
        print(f"[facebench] shard {shard} done; run `facebench report {suite.results_dir}` once every shard has finished")
    elif report and int(os.environ.get("RANK", "0")) == 0:
        from facebench.benchmarks.report import build_reports

        build_reports(suite.results_dir, suite_name=suite.name, command=" ".join(["facebench"] + sys.argv[1:]))
    if failed:
        print(f"[facebench] {len(failed)} run(s) did not finish: " + ", ".join(o.run.run_id for o in failed), flush=True)
    return outcomes
