"""Run a suite: every pending run in its own worker process (``facebench.benchmarks.worker``),
finished runs skipped, killed runs resumed from their last checkpoint, then the leaderboard.

Results are never silently replaced:

* a suite run with ``--set`` overrides writes to its own folder, ``results/<suite>+set-<hash>``
  (unless ``--results`` names one), so a smoke test never touches the suite's committed results;
* a run whose config differs from the one that produced the results folder's run of the same id
  (an edited suite file) stops the command before any work, naming the runs, unless ``--force``;
* the leaderboard keeps the committed rows of runs that are not in the local run folders
  (:mod:`facebench.benchmarks.report`);
* into the source checkout's ``results/``, a code tree with uncommitted changes is refused unless
  ``--allow-dirty`` (the rows then carry ``+dirty``): a committed result names the commit that
  made it.

Concurrency: each run folder has a ``lock`` file created exclusively by the process that runs it
(:class:`~facebench.benchmarks.run_folder.RunFolder`); a lock left by a dead process on this host
is taken over. ``--shard i/n`` gives each machine a disjoint set of run chains. Launched under
torchrun or SLURM (``WORLD_SIZE`` > 1 in the environment) the runs execute in this process on every
rank, and Lightning picks up the cluster environment.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facebench.benchmarks.provenance import config_hash, tree_state
from facebench.benchmarks.records import committed_config_hash
from facebench.benchmarks.run_folder import RunFolder, write_suite_snapshot
from facebench.benchmarks.suite import RunSpec, Suite, SuiteConfigError, load_suite, matches, parse_shard, select
from facebench.core.paths import SOURCE_ROOT


@dataclass
class RunOutcome:
    run: RunSpec
    state: str
    seconds: float = 0.0
    message: str = ""


def _distributed_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _summary_line(outcome: RunOutcome) -> str:
    st = RunFolder(Path(outcome.message)).status() if outcome.state == "done" and outcome.message else {}
    s = st.get("summary") or {}
    parts = [f"{k.removeprefix('mean_')} {v:.4f}" for k, v in s.items() if k in
             ("mean_accuracy", "mean_balanced_accuracy", "mean_auroc")]
    mark = {"done": "done", "cached": "cached", "failed": "FAILED", "incompatible": "skipped (incompatible)",
            "blocked": "blocked", "busy": "busy (another process)", "stale": "stale"}.get(outcome.state, outcome.state)
    extra = "  ".join(parts) if parts else (outcome.message if outcome.state not in ("done", "cached") else "")
    return f"[facebench] {mark:<8} {outcome.run.run_id:<48} {extra}  ({outcome.seconds:.0f}s)"


def run_one(suite: Suite, run: RunSpec, force: bool = False, in_process: bool = False, command: str = "") -> RunOutcome:
    folder = suite.run_folder(run)
    status = folder.status()
    if status.get("state") in ("done", "incompatible") and not force:
        if status.get("config_hash") == run.config_hash:
            return RunOutcome(run, "cached", message=str(folder.path))
        return RunOutcome(run, "stale", message=f"config changed since this run finished; --force re-runs it ({folder.path})")
    if run.depends_on:
        parent = suite.run_folder(run.depends_on).status()
        if parent.get("state") != "done":
            return RunOutcome(run, "blocked", message=f"needs {run.depends_on} ({parent.get('state', 'not run')})")
    if _distributed_launch():
        return _run_distributed(suite, run, folder, force, command)
    if not folder.acquire_lock():
        return RunOutcome(run, "busy", message=str(folder.path / "lock"))
    t0 = time.time()
    try:
        folder.prepare(run.config, run.config_hash, force, command=command)
        if in_process:
            from facebench.benchmarks.worker import execute

            execute(folder.path)
        else:
            # the worker runs in this directory, so relative dataset roots mean the same in both processes
            subprocess.run([sys.executable, "-m", "facebench.benchmarks.worker", str(folder.path)])
    finally:
        folder.release_lock()
    return _outcome(run, folder, t0)


def _run_distributed(suite: Suite, run: RunSpec, folder: RunFolder, force: bool, command: str) -> RunOutcome:
    """Launched by torchrun / SLURM: every rank executes the run in-process; rank 0 owns the files.
    A barrier after each run keeps the ranks in step (all see rank 0's final status)."""
    import torch.distributed as dist

    from facebench.benchmarks.worker import execute

    t0 = time.time()
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    if rank == 0:
        folder.prepare(run.config, run.config_hash, force, command=command)
    execute(folder.path, cfg=run.config)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return _outcome(run, folder, t0)


def _outcome(run: RunSpec, folder: RunFolder, t0: float) -> RunOutcome:
    st = folder.status()
    state = st.get("state", "failed")
    if state == "running":       # the worker died without writing its end state
        state, st["error"] = "failed", "worker process exited while running (killed?); re-run to resume"
    return RunOutcome(run, state, time.time() - t0, message=str(folder.path) if state == "done" else st.get("error", ""))


def overrides_folder(suite_name: str, overrides: dict[str, Any]) -> str:
    """The results folder name of a suite run with ``--set`` overrides: ``<suite>+set-<hash>``."""
    return f"{suite_name}+set-{config_hash(overrides)[:8]}"


def _in_source_results(results_dir: Path) -> bool:
    return SOURCE_ROOT is not None and (results_dir.resolve() == (SOURCE_ROOT / "results").resolve()
                                        or (SOURCE_ROOT / "results").resolve() in results_dir.resolve().parents)


def check_replacements(suite: Suite, runs: list[RunSpec], force: bool) -> None:
    """Stop before any work when a selected run would replace a run of another config in this
    results folder: a finished local run, or a committed record (``records/<run_id>.json``)."""
    if force:
        return
    clashes = []
    for run in runs:
        local = suite.run_folder(run).status()
        old = local.get("config_hash") if local.get("state") == "done" else committed_config_hash(suite.results_dir, run.run_id)
        if old and old != run.config_hash:
            clashes.append(f"{run.run_id} (results hold config {old}, this suite gives {run.config_hash})")
    if clashes:
        raise SuiteConfigError(
            f"{suite.results_dir}: {len(clashes)} run(s) of this suite were produced by another config: "
            + "; ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
            + ". --force replaces them; --results DIR (or --set ...) writes to another folder")


def check_tree(results_dir: Path, allow_dirty: bool) -> str:
    """Refuse a code tree with uncommitted changes when writing into the source checkout's
    ``results/`` (unless ``allow_dirty``); the git commit the runs will carry."""
    state = tree_state()
    if state.dirty and _in_source_results(results_dir) and not allow_dirty:
        raise SuiteConfigError(
            f"{results_dir}: the code tree has uncommitted changes ({', '.join(state.changed[:5])}"
            f"{' ...' if len(state.changed) > 5 else ''}); commit them first so every result names the commit that "
            "made it, or pass --allow-dirty (the rows then say +dirty)")
    return state.commit


def run_suite(name: str = "quick", *, only: list[str] | None = None, shard: str | None = None, force: bool = False,
              results_root: str | None = None, overrides: dict[str, Any] | None = None, in_process: bool = False,
              report: bool = True, allow_dirty: bool = False, command: str | None = None) -> list[RunOutcome]:
    suite = load_suite(name, results_root=results_root, overrides=overrides)
    if overrides and not results_root and not suite.raw.get("results_dir"):
        # a suite changed on the command line is another experiment: its own folder, never the suite's results
        suite = load_suite(name, results_root=suite.results_dir.parent, overrides=overrides,
                           folder=overrides_folder(suite.name, overrides))
        print(f"[facebench] --set changes the suite: results go to {suite.results_dir} "
              f"(--results DIR to choose the folder)", flush=True)
    runs = select(suite.runs, only, parse_shard(shard) if shard else None)
    # --force re-runs what --only names; the earlier stages it brings along only run if not done
    forced = [r for r in runs if force and (not only or matches(r, only))]
    check_replacements(suite, [r for r in runs if r not in forced], force=False)
    commit = check_tree(suite.results_dir, allow_dirty)
    command = command or shlex.join(["facebench"] + sys.argv[1:])
    write_suite_snapshot(suite.results_dir, suite.raw, suite.source, overrides)
    print(f"[facebench] suite {suite.name}: {len(runs)} run(s) -> {suite.results_dir}"
          + (f" (code tree modified: {commit})" if commit.endswith("+dirty") else ""), flush=True)
    outcomes = []
    for run in runs:
        print(f"[facebench] start    {run.run_id}", flush=True)
        outcome = run_one(suite, run, force=run in forced, in_process=in_process, command=command)
        outcomes.append(outcome)
        print(_summary_line(outcome), flush=True)
    failed = [o for o in outcomes if o.state in ("failed", "blocked")]
    if report and shard:   # other shards may still be writing: one report once all are done
        print(f"[facebench] shard {shard} done; run `facebench report {suite.results_dir}` once every shard has finished")
    elif report and int(os.environ.get("RANK", "0")) == 0:
        from facebench.benchmarks.report import build_reports

        build_reports(suite.results_dir, suite_name=suite.name, command=command)
    if failed:
        print(f"[facebench] {len(failed)} run(s) did not finish: " + ", ".join(o.run.run_id for o in failed), flush=True)
    return outcomes
