"""``facebench evaluate``: score predictions made elsewhere (an external model, a paper's released
outputs) against a dataset split, as one run of the leaderboard.

    facebench evaluate preds_test.csv --suite celeba --dataset celeba --method my_model
    facebench evaluate preds_val.csv preds_test.csv --split val test --dataset celeba --root data/celeba

The CSV format is :mod:`facebench.benchmarks.prediction_csv`'s (what ``facebench predict`` writes).
The dataset is a suite's dataset entry (``--suite`` + ``--dataset KEY``, plus the method's
``datamodule_args`` when ``--method`` is one of the suite's method keys) or a registered datamodule
(``--dataset NAME`` with ``--root`` and ``--set key=value``). The predictions go through the
trained runs' own record writer (:func:`facebench.benchmarks.records.write_records`: the same
metrics, thresholds tuned on ``val`` when val predictions are given, the same columns), into a run
folder ``results/<suite or --name>/runs/<method>--<dataset>--s<seed>/`` that ``facebench report``
reads like any other. What only a trained model has (input size, parameters, FLOPs, training time)
is left blank. A finished run folder is never replaced without ``--force``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    from facebench.core.tasks import TaskSpec

#: ``method.name`` of an evaluated run's config (the leaderboard's ``method_name`` column).
METHOD_NAME = "predictions"
#: Settings a predictions-only run does not have: blank (NaN) in its records.
MODEL_COLUMNS = ("input_size", "input_channels")


@dataclass
class PredictionsOnly:
    """What the record writer reads of a model, for predictions made elsewhere: the task, no network."""

    task: "TaskSpec"
    image_size: int = 0
    in_chans: int = 0
    train_images_per_s: float = math.nan

    def parameter_count(self, trainable_only: bool = False) -> float:
        return math.nan

    def flops_per_image(self) -> int:
        return -1   # the records' "unknown"

    def evaluate_predictions(self, split: str, arrays: dict[str, np.ndarray]) -> None:
        return None   # the standard task metrics


@dataclass
class DatasetChoice:
    """The dataset split the predictions are scored on, and where the run folder goes."""

    key: str
    datamodule: str
    args: dict[str, Any]
    results_dir: Path
    suite: str
    evaluation: dict[str, Any] = field(default_factory=dict)


def choose_dataset(dataset: str, *, suite: str | None = None, method: str | None = None, root: str | None = None,
                   sets: dict[str, Any] | None = None, results: str | None = None, name: str | None = None) -> DatasetChoice:
    """A suite's dataset entry (``suite`` given) or a registered datamodule with ``root`` and ``sets``."""
    import yaml

    from facebench.core.paths import results_root

    extra = {**({"root": root} if root else {}), **(sets or {})}
    if suite:
        from facebench.benchmarks.suite import SuiteConfigError, suite_path

        path = suite_path(suite)
        raw = yaml.safe_load(path.read_text()) or {}
        datasets = raw.get("datasets") or {}
        if dataset not in datasets:
            raise SuiteConfigError(f"{path}: no dataset {dataset!r} in the suite; its datasets: {', '.join(datasets)}")
        entry = datasets[dataset]
        method_entry = (raw.get("methods") or {}).get(method or "", {}) or {}
        args = {**(entry.get("args") or {}), **(method_entry.get("datamodule_args") or {}), **extra}
        suite_name = raw.get("name") or path.stem
        folder = Path(raw["results_dir"]) if raw.get("results_dir") and not results else results_root(results) / (name or suite_name)
        return DatasetChoice(dataset, entry["datamodule"], args, folder.resolve(), suite_name, raw.get("evaluation") or {})
    from facebench.datamodules.base import get_datamodule_class

    get_datamodule_class(dataset).check_config(extra)
    return DatasetChoice(dataset, dataset, extra, (results_root(results) / (name or "evaluate")).resolve(), name or "evaluate")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate_predictions(files: Sequence[tuple[str | Path, str]], choice: DatasetChoice, method: str, seed: int = 0,
                         id_column: str | None = None, force: bool = False, command: str = "") -> Path:
    """Score ``files`` (``(csv, split)`` pairs) on ``choice``'s dataset; write and return the run folder."""
    from facebench.benchmarks.prediction_csv import read_predictions
    from facebench.benchmarks.provenance import config_hash
    from facebench.benchmarks.records import write_records
    from facebench.benchmarks.run_folder import run_folder
    from facebench.datamodules.base import create_datamodule
    from facebench.datamodules.describe import warn_single_class_targets

    started = time.time()
    splits = [s for _, s in files]
    if len(set(splits)) != len(splits):
        raise ValueError(f"facebench evaluate: one predictions file per split, got splits {splits}")
    run_id = f"{method}--{choice.key}--s{seed}"
    folder = run_folder(choice.results_dir, run_id)
    if folder.is_done() and not force:
        raise ValueError(f"{folder.path} holds a finished run ({folder.config().get('method', {}).get('name')}); "
                         f"--force replaces it, or give another --method / --seed")
    dm = create_datamodule(choice.datamodule, **choice.args)
    dm.prepare_data()
    dm.setup("test")
    missing = [s for s in splits if s not in dm.tables]
    if missing:
        raise ValueError(f"{choice.datamodule} has no {missing[0]!r} split; splits: {', '.join(dm.tables)}")
    task = dm.task
    collected: dict[str, dict[str, np.ndarray]] = {}
    for path, split in files:
        table = dm.tables[split]
        probs = read_predictions(path, task, table.sample_ids(), split=split, dataset=choice.key, root=dm.root,
                                 id_column=id_column)
        collected[split] = {"probs": probs, "labels": table.labels, "index": np.arange(len(table)),
                            **{f"votes/{k}": v for k, v in table.votes.items()}}
    warn_single_class_targets(dm, splits)
    cfg = {"suite": choice.suite, "run_id": run_id, "method_key": method, "dataset_key": choice.key, "seed": seed,
           "method": {"name": METHOD_NAME, "args": {"files": {s: str(Path(p).resolve()) for p, s in files},
                                                    "sha256": {s: _sha256(Path(p)) for p, s in files}}},
           "dataset": {"datamodule": choice.datamodule, "args": choice.args}, "trainer": {}, "early_stopping": None,
           "logging": {}, "evaluation": choice.evaluation, "init_from": None, "report": True}
    folder.prepare(cfg, config_hash(cfg), force=True, command=command)
    eval_start = time.time()
    timing = {"train_time_s": math.nan, "eval_time_s": 0.0, "wall_time_s": 0.0, "epochs": math.nan,
              "train_samples": math.nan}
    summary = write_records(folder.path, cfg, PredictionsOnly(task), dm, collected, timing=timing)
    timing.update(eval_time_s=time.time() - eval_start, wall_time_s=time.time() - started)
    _blank_model_columns(folder.metrics_file, timing)
    folder.set_status("done", started=time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                      finished=time.strftime("%Y-%m-%dT%H:%M:%S"), summary=summary, timing=timing)
    from facebench.benchmarks import records

    if hasattr(records, "write_committed_record"):   # the committed record beside the leaderboard
        records.write_committed_record(folder, folder.status())
    return folder.path


def _blank_model_columns(metrics_file: Path, timing: dict[str, float]) -> None:
    """The records' model columns a predictions-only run does not have, blank; its timings."""
    import pandas as pd

    from facebench.core.io import write_csv

    if not metrics_file.is_file():
        return
    df = pd.read_csv(metrics_file, keep_default_na=False, na_values=["nan", "NaN", ""])
    for col in MODEL_COLUMNS:
        if col in df.columns:
            df[col] = math.nan
    for col in ("eval_time_s", "wall_time_s"):
        if col in df.columns:
            df[col] = timing[col]
    write_csv(metrics_file, df)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictions", nargs="+", help="CSV file(s): an id column and one column per target "
                                                  "(facebench predict's layout), one file per --split")
    p.add_argument("--dataset", required=True, help="a dataset key of --suite, or a registered datamodule name")
    p.add_argument("--suite", help="take the dataset (and results folder) from this suite (name or YAML path)")
    p.add_argument("--root", help="dataset folder (a datamodule name without --suite)")
    p.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="datamodule arguments, e.g. attributes=[Smiling,Male]")
    p.add_argument("--split", nargs="+", default=["test"], help="the split of each file, in order (default: test); "
                   "with val predictions, binary thresholds are tuned on val as in a trained run")
    p.add_argument("--method", help="method name in the leaderboard (default: the first file's name)")
    p.add_argument("--seed", type=int, default=0, help="seed in the leaderboard (default 0)")
    p.add_argument("--id-column", help="the column holding the sample ids (default: id, path, image, image_id or file)")
    p.add_argument("--results", help="results root (default: ./results)")
    p.add_argument("--name", help="results folder under the root (default: the suite's name, else 'evaluate')")
    p.add_argument("--force", action="store_true", help="replace a finished run folder of the same method, dataset and seed")
    p.add_argument("--no-report", action="store_true", help="do not rebuild the results folder's reports")


def run(args: argparse.Namespace) -> int:
    from facebench.benchmarks.overrides import parse_sets

    if len(args.split) != len(args.predictions):
        raise ValueError(f"facebench evaluate: {len(args.predictions)} file(s) but {len(args.split)} --split value(s); "
                         f"give one split per file, in order")
    method = args.method or Path(args.predictions[0]).stem
    choice = choose_dataset(args.dataset, suite=args.suite, method=method, root=args.root, sets=parse_sets(args.set),
                            results=args.results, name=args.name)
    command = " ".join(["facebench"] + sys.argv[1:])
    run_dir = evaluate_predictions(list(zip(args.predictions, args.split)), choice, method, seed=args.seed,
                                   id_column=args.id_column, force=args.force, command=command)
    print(f"[facebench] evaluated {', '.join(args.predictions)} -> {run_dir}", flush=True)
    if not args.no_report:
        from facebench.benchmarks.report import build_reports

        build_reports(choice.results_dir, suite_name=choice.suite, command=command)
    return 0
