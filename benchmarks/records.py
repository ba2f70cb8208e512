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

What stays in the results folder for git (the run folders are not committed):

* ``records/<run_id>.json``: the committed record of a finished run: the exact ``facebench run``
  command, the resolved config, config hash, code hash, git commit, package versions, machine,
  timings and the test summary (:func:`write_committed_record`);
* ``records/<run_id>.test.csv.gz``: its test predictions, compact: the sample ids and one column per
  probability column of the task (``<target>``, or ``<target>/<class>``) as the shortest decimal
  that reads back to the same float16 (gzip without a time stamp: the same predictions give the
  same bytes). Labels are not kept: they are the dataset's own content (research-only licences),
  so recomputing image-level statistics from these files reads the labels from the dataset
  (:func:`committed_run_records`).
"""

from __future__ import annotations

import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from facebench.benchmarks.provenance import machine, package_versions, provenance
from facebench.benchmarks.run_folder import RECORDS, RunFolder, finished_run_dirs
from facebench.core.io import atomic_write, read_json, write_csv, write_json, write_npz, write_text
from facebench.core.tasks import TaskSpec

ID_COLUMNS = ["suite", "run_id", "method", "method_name", "dataset", "datamodule", "split", "seed"]
#: Columns of a run's rows that describe the run (settings, cost, provenance), not a metric: with
#: ``version_*`` (package versions) and ``data_*`` (the data's doubts), see :func:`is_run_column`.
RUN_COLUMNS = frozenset(ID_COLUMNS + [
    "n_samples", "input_size", "input_channels", "n_targets", "params", "trainable_params", "flops_per_image",
    "train_images_per_s", "train_images", "train_cpu_s", "train_forward_flops", "train_time_s", "eval_time_s",
    "wall_time_s", "epochs", "train_samples",
    "thresholds_tuned_on", "threshold_criterion", "config_hash", "code_hash", "git_commit"])


def is_run_column(name: str) -> bool:
    """Whether a leaderboard column describes the run rather than being a metric."""
    return name in RUN_COLUMNS or name.startswith(("version_", "data_"))
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


#: The suffix of a split scored without the items whose image duplicates a training image.
DEDUP_SUFFIX = "_dedup"


def deduplicated_splits(dm: Any, preds: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Where the data has duplicate images across splits (``data_checks``' count), each evaluated
    split again without its items whose image duplicates a training image: ``<split>_dedup``, the
    same predictions (no retraining), for the leaderboard's deduplicated scores."""
    from facebench.datamodules.duplicates import duplicates_of_training

    checks = (getattr(dm, "report", {}) or {}).get("checks") or {}
    tables = getattr(dm, "tables", {})
    if not checks.get("cross_split_duplicates") or "train" not in tables:
        return {}
    splits = [s for s in preds if s in tables and s != "train"]
    found = duplicates_of_training(tables, splits, dm.root, dm.cache_dir, dm.near_duplicates)
    out = {}
    for split, rows in found.items():
        if not rows:
            continue
        p = preds[split]
        keep = ~np.isin(p["index"], sorted(rows))
        out[f"{split}{DEDUP_SUFFIX}"] = {k: v[keep] if isinstance(v, np.ndarray) and len(v) == len(keep) else v
                                         for k, v in p.items()}
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
    preds.update(deduplicated_splits(dm, preds))
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
             "flops_per_image": flops, "train_images_per_s": getattr(model, "train_images_per_s", math.nan),
             "train_images": getattr(model, "train_images", 0), "train_cpu_s": getattr(model, "train_cpu_s", math.nan),
             "train_forward_flops": flops * getattr(model, "train_images", 0) if flops > 0 else math.nan, **timing,
             "thresholds_tuned_on": tune_on if tune_on in preds else "", "threshold_criterion": criterion,
             **provenance(cfg), **{f"data_{k}": v for k, v in (getattr(dm, "report", {}).get("checks") or {}).items()}}
    for k, v in extra.items():
        metrics[k] = v
    write_csv(run_dir / "metrics.csv", metrics)
    from facebench.lightning_modules.metrics import summarize

    test = metrics[metrics["split"] == ("test" if "test" in preds else next(iter(preds)))]
    return {k: round(v, 4) for k, v in summarize(test, task).items()}


# ------------------------------------------------------------------------------------------------
# committed records: what a results folder keeps of a finished run for git
# ------------------------------------------------------------------------------------------------
def probability_columns(task: TaskSpec) -> list[str]:
    """One name per probability column of the task (its logit layout): ``<target>`` for a binary
    target, ``<target>/<class>`` for each class of the others."""
    cols: list[str] = []
    for t in task.targets:
        cols += [t.name] if t.kind == "binary" else [f"{t.name}/{c}" for c in t.classes]
    return cols


def record_path(results_dir: str | Path, run_id: str, suffix: str = ".json") -> Path:
    return Path(results_dir) / RECORDS / f"{run_id}{suffix}"


def _float16_text(values: np.ndarray) -> list[str]:
    flat = np.asarray(values, dtype=np.float16).ravel()
    return [np.format_float_positional(v, unique=True, trim="-") for v in flat]


def write_compact_predictions(path: Path, ids: np.ndarray, probs: np.ndarray, columns: list[str]) -> Path:
    """Ids and float16 probabilities as a gzip'd CSV (deterministic bytes)."""
    if probs.shape[1] != len(columns):
        raise ValueError(f"{path}: {probs.shape[1]} probability columns for {len(columns)} names")
    text = _float16_text(probs)
    width = len(columns)
    buf = io.StringIO()
    pd.DataFrame({"id": [str(i) for i in ids]}).assign(
        **{c: text[j::width] for j, c in enumerate(columns)}).to_csv(buf, index=False)
    return atomic_write(path, lambda f: f.write(gzip.compress(buf.getvalue().encode("utf-8"), mtime=0)))


def read_compact_predictions(path: Path) -> pd.DataFrame:
    """The ids (column ``id``, text) and probabilities of :func:`write_compact_predictions`."""
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=["nan"])


def write_committed_record(run: RunFolder, status: dict[str, Any], split: str = "test") -> list[Path]:
    """``records/<run_id>.json`` and ``records/<run_id>.<split>.csv.gz`` of a finished run."""
    cfg = run.config()
    task = TaskSpec.from_dict(json.loads(run.task_file.read_text()))
    prov = provenance(cfg)
    record = {"run_id": run.run_id, "suite": cfg.get("suite"), "method": cfg.get("method_key"),
              "dataset": cfg.get("dataset_key"), "seed": cfg.get("seed"), "command": status.get("command", ""),
              "config_hash": status.get("config_hash", prov["config_hash"]), "code_hash": prov["code_hash"],
              "git_commit": prov["git_commit"], "versions": package_versions(), "machine": machine(),
              "started": status.get("started"), "finished": status.get("finished"), "summary": status.get("summary"),
              "timing": status.get("timing"), "config": cfg, "task": task.to_dict()}
    out = [write_json(record_path(run.results_dir, run.run_id), record)]
    if run.predictions_file(split).is_file():
        p = load_predictions(run.path, split)
        if "probs" in p and p["probs"].ndim == 2 and p["probs"].shape[1] == task.n_logits:
            out.append(write_compact_predictions(record_path(run.results_dir, run.run_id, f".{split}.csv.gz"),
                                                 p["ids"], p["probs"], probability_columns(task)))
    return out


def committed_records(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{run_id: record}`` of every ``records/*.json`` of a results folder."""
    folder = Path(results_dir) / RECORDS
    return {p.name[:-len(".json")]: read_json(p) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def committed_config_hash(results_dir: str | Path, run_id: str) -> str | None:
    """The config hash of the committed record of ``run_id`` (``None`` when there is none)."""
    rec = read_json(record_path(results_dir, run_id), None)
    return rec.get("config_hash") if rec else None


def _run_dataset(config: dict[str, Any]) -> Any:
    """The dataset a run's config names (its datamodule and arguments), set up."""
    from facebench.datamodules.base import create_datamodule

    dm = create_datamodule(config["dataset"]["datamodule"], **config["dataset"]["args"])
    dm.prepare_data()
    dm.setup("test")
    return dm


def _dataset_rows(dm: Any, config: dict[str, Any], split: str, ids: Sequence[str]) -> tuple[Any, list[int]]:
    """The ``split`` table of a run's dataset ``dm`` and the rows of ``ids`` (sample ids: source paths
    relative to the root) in it. A clear error when the split is not there or an id is not in it."""
    table = dm.tables.get(split)
    if table is None:
        raise FileNotFoundError(f"{config['dataset']['datamodule']}: no {split} split")
    position = {sid: i for i, sid in enumerate(table.sample_ids())}
    missing = [i for i in ids if i not in position]
    if missing:
        raise ValueError(f"{config.get('run_id')}: {len(missing)} predicted ids are not in the dataset's {split} split "
                         f"(first: {missing[0]})")
    return table, [position[i] for i in ids]


def dataset_labels(config: dict[str, Any], split: str, ids: np.ndarray) -> np.ndarray:
    """The labels of ``ids`` in ``split`` of the dataset a run's config names, in the task's label layout."""
    table, rows = _dataset_rows(_run_dataset(config), config, split, ids)
    return table.labels[rows]


def dataset_images(config: dict[str, Any], ids_by_split: dict[str, Sequence[str]]) -> dict[str, list[Path]]:
    """Per split, the image files a run read for its ``ids``: the source images, or with ``wild`` the
    composited canvases (the ids name the sources; the canvases are found in, or rebuilt into, the
    cache). The dataset is set up once for all the splits."""
    dm = _run_dataset(config)
    root = dm.files.root
    out = {}
    for split, ids in ids_by_split.items():
        table, rows = _dataset_rows(dm, config, split, ids)
        out[split] = [root / table.paths[r] for r in rows]      # a canvas path is absolute: root / it is itself
    return out


def committed_run_records(results_dir: str | Path, split: str = "test", skip: set[str] | None = None) -> list[RunRecord]:
    """:class:`RunRecord` of every committed record with kept predictions (not in ``skip``), the
    labels read from the run's dataset. Runs whose dataset is not on this machine are left out with
    a one-line note."""
    out = []
    for run_id, rec in committed_records(results_dir).items():
        path = record_path(results_dir, run_id, f".{split}.csv.gz")
        if run_id in (skip or set()) or not path.is_file():
            continue
        task = TaskSpec.from_dict(rec["task"])
        df = read_compact_predictions(path)
        ids = df["id"].to_numpy(dtype=str)
        try:
            labels = dataset_labels(rec["config"], split, ids)
        except (FileNotFoundError, ValueError, OSError) as exc:
            print(f"[facebench] {run_id}: image-level statistics need its dataset's labels ({exc})")
            continue
        probs = df[probability_columns(task)].to_numpy(dtype=np.float32)
        cfg = rec["config"]
        out.append(RunRecord(path, cfg["method_key"], cfg["method"]["name"], cfg["dataset_key"], cfg["dataset"]["datamodule"],
                             int(cfg["seed"]), task, {"probs": probs, "labels": labels, "ids": ids}))
    return out


def run_records(results_dir: str | Path, split: str = "test") -> list[RunRecord]:
    """The :class:`RunRecord` of every run of a results folder on ``split``: its local run folders,
    then the committed records (``records/``, labels from the dataset) of the runs without one."""
    local = [r for r in (load_run_record(d, split) for d in finished_run_dirs(results_dir)) if r is not None]
    have = {r.run_dir.name for r in local}
    return local + committed_run_records(results_dir, split, skip=have)
