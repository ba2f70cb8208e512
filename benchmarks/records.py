"""Result records of a finished run, the only thing reports read.

* ``predictions_<split>.npz``: ``probs`` (task logit layout), ``labels``, ``index``, ``ids`` (the
  sample paths), ``votes/<target>`` when raters exist, exact ages (NaN unknown) when the
  datamodule's tables carry them: ``age`` from ``extra["age"]`` (every binned age target), and
  ``age/<target>`` from ``extra[<target>]`` for a binned ordinal target of that name;
* ``task.json``: the task description;
* ``metrics.csv``: long format, one row per (split, target, class, metric) with the run's identity
  (suite, method, dataset, seed) and provenance (config hash, git commit, package versions, wall
  time, parameters, FLOPs per image, training images per second). Binary thresholds are tuned on
  the ``evaluation.tune_thresholds_on`` split (default ``val``) with
  :func:`~facebench.lightning_modules.metrics.tune_thresholds` and applied on every split (``*@tuned``
  metrics, the thresholds as ``threshold@tuned``); rater agreement rows come from the votes. The
  data's doubts (``facebench inspect``'s counts, put in ``dm.report["checks"]`` by the worker:
  skipped files, duplicate-image groups across splits, repeated / conflicting label rows, items
  ``dedupe`` dropped) are columns ``data_<count>`` of every row, and so of the leaderboard.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facebench.core.io import write_csv, write_npz, write_text
from facebench.benchmarks.provenance import provenance
from facebench.core.tasks import TaskSpec

ID_COLUMNS = ["suite", "run_id", "method", "method_name", "dataset", "datamodule", "split", "seed"]
TUNE_SPLIT = "val"
THRESHOLD_CRITERION = "balanced_accuracy"


def load_predictions(run_dir: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(run_dir / f"predictions_{split}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@dataclass
class RunRecord:
    """A finished run's identity, task and predictions on one split, read from its folder."""

    run_dir: Path
    method: str
    method_name: str
    dataset: str
    datamodule: str
    seed: int
    task: TaskSpec
    predictions: dict[str, np.ndarray]


def finished_run_dirs(results_dir: str | Path) -> list[Path]:
    """Run folders under ``results_dir`` (searched recursively) whose status is ``done``. A run id
    (the folder's name: method, dataset, seed) found twice, e.g. an old copy kept in a sub-folder,
    is an error naming both folders: a report would otherwise count one of them silently."""
    from facebench.core.io import read_json
    from facebench.benchmarks.worker import STATUS

    done = [p.parent for p in sorted(Path(results_dir).rglob(STATUS)) if (read_json(p, {}) or {}).get("state") == "done"]
    seen: dict[str, Path] = {}
    for run_dir in done:
        if run_dir.name in seen:
            raise ValueError(f"{results_dir}: run {run_dir.name} is there twice ({seen[run_dir.name]} and {run_dir}); "
                             "move the one that should not be reported out of the results folder")
        seen[run_dir.name] = run_dir
    return done


def load_run_record(run_dir: Path, split: str = "test") -> RunRecord | None:
    """The :class:`RunRecord` of ``run_dir`` on ``split`` (``None`` when that split was not saved)."""
    import yaml

    if not (run_dir / f"predictions_{split}.npz").is_file() or not (run_dir / "task.json").is_file():
        return None
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    task = TaskSpec.from_dict(json.loads((run_dir / "task.json").read_text()))
    return RunRecord(run_dir, cfg["method_key"], cfg["method"]["name"], cfg["dataset_key"], cfg["dataset"]["datamodule"],
                     int(cfg["seed"]), task, load_predictions(run_dir, split))


def evaluate_run(task: TaskSpec, preds: dict[str, dict[str, np.ndarray]], model: Any = None,
                 tune_on: str | None = TUNE_SPLIT, criterion: str = THRESHOLD_CRITERION) -> pd.DataFrame:
    """All metrics of a run from its predictions (one long table over splits). Binary thresholds
    are tuned on ``tune_on`` (when that split was evaluated) and applied on every split."""
    from facebench.lightning_modules.metrics import ages_of, evaluate, tune_thresholds, votes_of

    tuned = None
    if tune_on and tune_on in preds and "probs" in preds[tune_on] and task.binary_columns()[0]:
        tuned = tune_thresholds(task, preds[tune_on]["probs"], preds[tune_on]["labels"], criterion)
    frames = []
    for split, p in preds.items():
        custom = model.evaluate_predictions(split, p) if model is not None else None
        df = custom if custom is not None else evaluate(task, p["probs"], p["labels"], tuned_thresholds=tuned,
                                                        votes=votes_of(p), ages=ages_of(p, task))
        df.insert(0, "split", split)
        df["n_samples"] = len(p["labels"])
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def exact_ages(dm: Any, split: str, index: np.ndarray, task: TaskSpec) -> dict[str, np.ndarray]:
    """Exact ages of the evaluated samples from the datamodule's table: ``age`` from
    ``extra["age"]``, ``age/<target>`` from ``extra[<target>]`` of a binned ordinal target."""
    table = getattr(dm, "tables", {}).get(split)
    if table is None:
        return {}
    out = {"age": np.asarray(table.extra["age"], dtype=np.float64)[index]} if "age" in table.extra else {}
    for t in task.targets:
        if t.kind == "ordinal" and t.bin_edges is not None and t.name != "age" and t.name in table.extra:
            out[f"age/{t.name}"] = np.asarray(table.extra[t.name], dtype=np.float64)[index]
    return out


def write_records(run_dir: Path, cfg: dict[str, Any], model: Any, dm: Any, collected: dict[str, dict[str, np.ndarray]],
                  timing: dict[str, float]) -> dict[str, Any]:
    task: TaskSpec = model.task
    write_text(run_dir / "task.json", task.to_json())
    preds: dict[str, dict[str, np.ndarray]] = {}
    for split, c in collected.items():
        ids = dm.tables[split].sample_ids()[c["index"]] if split in dm.tables else c["index"].astype(str)
        arrays = {**c, "ids": ids.astype(str), **exact_ages(dm, split, c["index"], task)}
        write_npz(run_dir / f"predictions_{split}.npz", **arrays)
        preds[split] = arrays
    try:
        flops = model.flops_per_image()
    except Exception:  # noqa: BLE001  (a method whose forward cannot be traced still gets its results)
        flops = -1
    evaluation = cfg.get("evaluation") or {}
    tune_on = evaluation.get("tune_thresholds_on", TUNE_SPLIT)
    criterion = evaluation.get("threshold_criterion", THRESHOLD_CRITERION)
    metrics = evaluate_run(task, preds, model, tune_on=tune_on, criterion=criterion)
    if metrics.empty:
        write_csv(run_dir / "metrics.csv", metrics)
        return {}
    ident = {"suite": cfg["suite"], "run_id": cfg["run_id"], "method": cfg["method_key"], "method_name": cfg["method"]["name"],
             "dataset": cfg["dataset_key"], "datamodule": cfg["dataset"]["datamodule"], "seed": cfg["seed"]}
    for k, v in reversed(list(ident.items())):
        metrics.insert(0, k, v)
    extra = {"input_size": int(model.image_size), "input_channels": int(model.in_chans), "n_targets": len(task.targets),
             "params": model.parameter_count(), "trainable_params": model.parameter_count(trainable_only=True),
             "flops_per_image": flops, "train_images_per_s": getattr(model, "train_images_per_s", math.nan), **timing,
             "thresholds_tuned_on": tune_on if tune_on in preds else "", "threshold_criterion": criterion,
             **provenance(cfg), **{f"data_{k}": v for k, v in (getattr(dm, "report", {}).get("checks") or {}).items()}}
    for k, v in extra.items():
        metrics[k] = v
    write_csv(run_dir / "metrics.csv", metrics)
    from facebench.lightning_modules.metrics import summarize

    test = metrics[metrics["split"] == ("test" if "test" in preds else next(iter(preds)))]
    return {k: round(v, 4) for k, v in summarize(test, task).items()}
