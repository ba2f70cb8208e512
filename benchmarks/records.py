"""Result records of a finished run, the only thing reports read.

* ``predictions_<split>.npz``: ``probs`` (task logit layout), ``labels``, ``index``, ``ids`` (the
  sample paths), ``votes/<target>`` when raters exist;
* ``task.json``: the task description;
* ``metrics.csv``: long format, one row per (split, target, class, metric) with the run's identity
  (suite, method, dataset, seed) and provenance (config hash, git commit, package versions, wall
  time, parameters, FLOPs per image, training images per second).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.io import write_csv, write_npz, write_text
from benchmarks.provenance import provenance
from datamodules.tasks import TaskSpec

ID_COLUMNS = ["suite", "run_id", "method", "method_name", "dataset", "datamodule", "split", "seed"]


def load_predictions(run_dir: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(run_dir / f"predictions_{split}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def evaluate_run(task: TaskSpec, preds: dict[str, dict[str, np.ndarray]], model: Any = None) -> pd.DataFrame:
    """All metrics of a run from its predictions (one long table over splits)."""
    from lightning_modules.metrics import evaluate

    frames = []
    for split, p in preds.items():
        custom = model.evaluate_predictions(split, p) if model is not None else None
        df = custom if custom is not None else evaluate(task, p["probs"], p["labels"])
        df.insert(0, "split", split)
        df["n_samples"] = len(p["labels"])
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_records(run_dir: Path, cfg: dict[str, Any], model: Any, dm: Any, collected: dict[str, dict[str, np.ndarray]],
                  timing: dict[str, float]) -> dict[str, Any]:
    task: TaskSpec = model.task
    write_text(run_dir / "task.json", task.to_json())
    preds: dict[str, dict[str, np.ndarray]] = {}
    for split, c in collected.items():
        ids = np.asarray(dm.tables[split].paths)[c["index"]] if split in dm.tables else c["index"].astype(str)
        arrays = {**c, "ids": ids.astype(str)}
        write_npz(run_dir / f"predictions_{split}.npz", **arrays)
        preds[split] = arrays
    try:
        flops = model.flops_per_image()
    except Exception:  # noqa: BLE001  (a method whose forward cannot be traced still gets its results)
        flops = -1
    metrics = evaluate_run(task, preds, model)
    if metrics.empty:
        write_csv(run_dir / "metrics.csv", metrics)
        return {}
    ident = {"suite": cfg["suite"], "run_id": cfg["run_id"], "method": cfg["method_key"], "method_name": cfg["method"]["name"],
             "dataset": cfg["dataset_key"], "datamodule": cfg["dataset"]["datamodule"], "seed": cfg["seed"]}
    for k, v in reversed(list(ident.items())):
        metrics.insert(0, k, v)
    extra = {"params": model.parameter_count(), "trainable_params": model.parameter_count(trainable_only=True),
             "flops_per_image": flops, "train_images_per_s": getattr(model, "train_images_per_s", math.nan), **timing,
             **provenance(cfg)}
    for k, v in extra.items():
        metrics[k] = v
    write_csv(run_dir / "metrics.csv", metrics)
    test = metrics[metrics["split"] == ("test" if "test" in preds else next(iter(preds)))]
    return {f"mean_{m}": round(float(v), 4) for m, v in test.groupby("metric")["value"].mean().items()}
