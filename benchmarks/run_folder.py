"""The one module that knows where a run's files are: the results folder of a suite and, in it, the
folder of each run (paths, status, lock, checkpoints). The runner, the worker, ``predict``,
``evaluate`` and the reports all go through it.

Layout of a suite's results folder::

    results/<suite>/
      suite.yaml                 the suite as it was run (after --set): what the reports read
      leaderboard.csv (test splits), leaderboard.<split>.csv (the others), leaderboard_info.json,
      tables/, subgroups.*, multitask*.*, figures/
      records/<run_id>.json      committed record of a finished run: command, config, config hash,
                                 code hash, git commit, versions, timings (benchmarks.records)
      records/<run_id>.test.csv.gz   its test predictions: sample ids + float16 probabilities
      runs/<run_id>/             the working folder of a run (git-ignored):
        config.yaml status.json task.json metrics.csv predictions_{val,test}.npz
        checkpoints/{best,last}.ckpt logs/ wandb/ lock
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from facebench.core.io import read_json, write_json, write_yaml

STATUS = "status.json"
#: The suite as it was run, in its results folder (:func:`write_suite_snapshot`).
SUITE_SNAPSHOT = "suite.yaml"
RUNS = "runs"
RECORDS = "records"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunFolder:
    """The working folder of one run (``results/<suite>/runs/<run_id>``)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def results_dir(self) -> Path:
        """The suite's results folder this run belongs to."""
        return self.path.parent.parent

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_file(self) -> Path:
        return self.path / STATUS

    @property
    def task_file(self) -> Path:
        return self.path / "task.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        """Rewritten every epoch (the final epoch once the run is done); resume starts from it."""
        return self.checkpoints / "last.ckpt"

    def predictions_file(self, split: str) -> Path:
        return self.path / f"predictions_{split}.npz"

    def config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text())

    def status(self) -> dict[str, Any]:
        return read_json(self.status_file, {}) or {}

    def is_done(self) -> bool:
        return self.status().get("state") == "done"

    def set_status(self, state: str, **extra: Any) -> None:
        """Write ``state`` (and ``extra``) to ``status.json`` atomically, keeping the other keys."""
        old = self.status()
        if state in ("running", "done"):   # an earlier attempt's error no longer describes the run
            old.pop("error", None)
            old.pop("traceback", None)
        old.update({"state": state, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
                    "pid": os.getpid(), **extra})
        write_json(self.status_file, old)

    def trained_checkpoint(self) -> Path:
        """The checkpoint a later stage (``init_from``) or ``facebench predict`` starts from: the
        selected one (``best.ckpt``), else the final epoch (``last.ckpt``, e.g. closed-form stages or
        per-network selection). A clear error when the run has neither."""
        for name in ("best.ckpt", "last.ckpt"):
            if (self.checkpoints / name).is_file():
                return self.checkpoints / name
        raise FileNotFoundError(f"{self.path}: the run has no checkpoint (did it finish?)")

    # -- the lock: one process runs a run ------------------------------------------------------------
    def acquire_lock(self) -> bool:
        """Create ``lock`` exclusively; take over a lock whose owner process on this host died."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / "lock"
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

    def release_lock(self) -> None:
        (self.path / "lock").unlink(missing_ok=True)

    def prepare(self, config: dict[str, Any], config_hash: str, force: bool = False, **status: Any) -> None:
        """Clear the folder when forced or when it holds another config, then write the config and a
        ``pending`` status carrying ``config_hash`` and ``status`` (e.g. the command that runs it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        old = self.status()
        if force or old.get("config_hash") not in (None, config_hash):
            for p in self.path.iterdir():
                if p.name != "lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            old = {}
        write_yaml(self.config_file, config)
        old.setdefault("state", "pending")
        old.update(config_hash=config_hash, **status)
        write_json(self.status_file, old)


def run_folder(results_dir: str | Path, run_id: str) -> RunFolder:
    return RunFolder(Path(results_dir) / RUNS / run_id)


def finished_runs(results_dir: str | Path) -> list[RunFolder]:
    """Run folders under ``results_dir`` (searched recursively) whose status is ``done``. A run id
    (the folder's name: method, dataset, seed) found twice, e.g. an old copy kept in a sub-folder,
    is an error naming both folders: a report would otherwise count one of them silently."""
    done = [RunFolder(p.parent) for p in sorted(Path(results_dir).rglob(STATUS))
            if (read_json(p, {}) or {}).get("state") == "done"]
    seen: dict[str, Path] = {}
    for run in done:
        if run.run_id in seen:
            raise ValueError(f"{results_dir}: run {run.run_id} is there twice ({seen[run.run_id]} and {run.path}); "
                             "move the one that should not be reported out of the results folder")
        seen[run.run_id] = run.path
    return done


def finished_run_dirs(results_dir: str | Path) -> list[Path]:
    """The paths of :func:`finished_runs`."""
    return [r.path for r in finished_runs(results_dir)]


def write_suite_snapshot(results_dir: Path, raw: dict[str, Any], source: str, overrides: dict[str, Any] | None) -> Path:
    """``results/<suite>/suite.yaml``: the suite as run (its file, after ``--set``), with where it came
    from. The reports read the suite from here, so a suite run from any path gets its tables."""
    return write_yaml(results_dir / SUITE_SNAPSHOT, {"source": str(source), "overrides": dict(overrides or {}), "suite": raw})


def read_suite_snapshot(results_dir: Path, part: str = "suite") -> dict[str, Any]:
    """The suite a results folder was produced by (``part="suite"``), or the ``--set`` overrides it
    was run with (``part="overrides"``); ``{}`` when it has no snapshot."""
    path = Path(results_dir) / SUITE_SNAPSHOT
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get(part) or {}


def suite_notes(results_dir: str | Path) -> dict[str, Any]:
    """What the reports need of the suite that produced ``results_dir`` (from its snapshot, never
    from ``benchmarks/suites/`` by name): method and dataset entries (descriptions, ``reported``
    links, ``subgroups``, ``target_subsets``) and the ``multitask`` settings (empty when absent)."""
    raw = read_suite_snapshot(Path(results_dir))
    return {"methods": raw.get("methods") or {}, "datasets": raw.get("datasets") or {}, "multitask": raw.get("multitask") or {}}
