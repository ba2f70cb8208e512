"""Benchmark suites: YAML files listing datasets, methods, seeds and trainer settings, expanded into
runs (one per method x dataset x seed, minus exclusions; grids expand a method into variants;
``init_from`` chains runs into multi-stage recipes).

Schema (every key is checked; an unknown key names itself and the allowed ones)::

    name: quick                      # results go to results/<name>/ unless results_dir is given
    description: ...
    results_dir: /some/folder        # optional
    seeds: [0, 1, 2]
    plugins: [mymethods]             # your modules, imported first (they register methods); see README
    trainer: {max_epochs: 5, accelerator: auto, devices: 1, precision: 32-true, ...}  # lightning.Trainer kwargs
    early_stopping: {monitor: val/loss, mode: min, patience: 5}   # optional, per method too
    logging: {wandb: {enabled: true, mode: offline, project: facebench, tags: [...]}}
    datasets:
      synth: {datamodule: synthfaces, args: {...}}                # registered datamodule + kwargs
    methods:
      resnet18: {method: timm, args: {backbone: resnet18}, trainer: {...}, datamodule_args: {...}}
      mcnn_aux: {method: mcnn_aux, init_from: mcnn}             # a later stage of the 'mcnn' run
      mine: {method: mymethods.tinycnn:TinyCNN}                  # an import path (or an entry point name)
      sem: {method: semantic_cnn, grid: {depth: [1, 2, 3]}}      # -> sem[depth=1], sem[depth=2], ...
    matrix:
      exclude: [{method: "sem*", dataset: celeba}]               # fnmatch patterns
    evaluation: {splits: [test], tune_thresholds_on: val, threshold_criterion: ..., checkpoint: best | last}
    multitask: {baseline: single_task, metrics: [f1, accuracy]}  # report only: Δm% vs that method key

Datasets also take ``description``, ``subgroups`` and ``target_subsets`` (read by the reports);
methods ``description``, ``reported`` (the paper's figures the leaderboard compares with),
``budget`` (the name of the compute family the method is trained in, e.g. ``rgb64``: the
cross-suite leaderboard ranks rows within a family) and ``report`` (copied into each run's config;
no report reads it at present).

Before anything runs, the keys, the trainer arguments, the early-stopping values, the ``timm``
backbones and every method's and dataset's arguments are checked (:mod:`facebench.benchmarks.suite_checks`).
"""

from __future__ import annotations

import copy
import fnmatch
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facebench.benchmarks.provenance import config_hash
from facebench.benchmarks.suite_checks import check_early_stopping, check_method_arguments, check_trainer, load_plugins
from facebench.benchmarks.run_folder import RunFolder, run_folder
from facebench.core.paths import results_root as default_results_root
from facebench.core.plugins import plugins_from_env

SUITES_DIR = Path(__file__).resolve().parent / "suites"

SUITE_KEYS = {"name", "description", "results_dir", "seeds", "trainer", "early_stopping", "logging", "datasets",
              "methods", "matrix", "evaluation", "multitask", "plugins"}
DATASET_KEYS = {"datamodule", "args", "description", "subgroups", "target_subsets"}
METHOD_KEYS = {"method", "args", "trainer", "datamodule_args", "init_from", "grid", "datasets", "description",
               "early_stopping", "report", "reported", "budget"}
MATRIX_KEYS = {"exclude"}
LOGGING_KEYS = {"wandb", "csv"}
WANDB_KEYS = {"enabled", "mode", "project", "entity", "tags", "log_model"}
EARLY_STOPPING_KEYS = {"monitor", "mode", "patience", "min_delta"}
EVALUATION_KEYS = {"splits", "tune_thresholds_on", "threshold_criterion", "checkpoint"}
#: Which checkpoint a run evaluates (``evaluation.checkpoint``).
EVALUATION_CHECKPOINTS = ("best", "last")
MULTITASK_KEYS = {"baseline", "metrics", "min_positives", "baseline_floor"}

DEFAULT_TRAINER = {"max_epochs": 10, "accelerator": "auto", "devices": 1, "precision": "32-true",
                   "log_every_n_steps": 10, "num_sanity_val_steps": 0, "enable_model_summary": False}


class SuiteConfigError(ValueError):
    """A suite file is wrong: the message names the file, the key and what is allowed."""


def _check_keys(where: str, obj: Any, allowed: set[str], source: str) -> None:
    if obj is None:
        return
    if not isinstance(obj, dict):
        raise SuiteConfigError(f"{source}: {where} must be a mapping, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise SuiteConfigError(f"{source}: unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")


@dataclass
class RunSpec:
    """One training + evaluation run of a suite: its id ``<method key>--<dataset key>--s<seed>``,
    the full run ``config`` (what the worker reads), the run it starts from (``depends_on``,
    ``init_from``) and its ``chain`` (the id of the chain's first stage; a shard takes whole chains)."""

    run_id: str
    method_key: str
    dataset_key: str
    seed: int
    config: dict[str, Any]
    depends_on: str | None = None
    chain: str = ""

    @property
    def config_hash(self) -> str:
        """Hash of the run's config without where it runs (``results_dir``, ``run_dir``) and ``plugins``."""
        # ``plugins`` only says where method code comes from: adding one leaves every other run's hash as it was
        return config_hash({k: v for k, v in self.config.items() if k not in ("results_dir", "run_dir", "plugins")})


@dataclass
class Suite:
    """A loaded suite: its ``name``, the file it came from (``source``), the YAML after overrides
    (``raw``), its results folder and its runs, every run after the run it starts from."""

    name: str
    source: str
    raw: dict[str, Any]
    results_dir: Path
    runs: list[RunSpec] = field(default_factory=list)

    def run_dir(self, run: RunSpec) -> Path:
        """The path of :meth:`run_folder`."""
        return self.run_folder(run).path

    def run_folder(self, run: RunSpec | str) -> RunFolder:
        """The folder of ``run`` (a run or a run id) in this suite's results folder."""
        return run_folder(self.results_dir, run if isinstance(run, str) else run.run_id)


def suite_path(name_or_path: str) -> Path:
    """A ``.yaml`` / ``.yml`` file that exists, else the bundled suite of that name
    (``benchmarks/suites/<name>.yaml``); a :class:`SuiteConfigError` listing the bundled ones otherwise."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    candidate = SUITES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    available = sorted(q.stem for q in SUITES_DIR.glob("*.yaml"))
    raise SuiteConfigError(f"no suite {name_or_path!r}: give a YAML path or one of {', '.join(available)}")


def _grid_points(key: str, grid: dict[str, list[Any]] | None, source: str) -> list[tuple[str, dict[str, Any]]]:
    if not grid:
        return [(key, {})]
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise SuiteConfigError(f"{source}: methods.{key}.grid.{k} must be a non-empty list")
    names = list(grid)
    out = []
    for combo in itertools.product(*(grid[n] for n in names)):
        point = dict(zip(names, combo))
        label = ",".join(f"{n}={v}" for n, v in point.items())
        out.append((f"{key}[{label}]", point))
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def load_suite(name_or_path: str, results_root: str | Path | None = None, overrides: dict[str, Any] | None = None,
               folder: str | None = None) -> Suite:
    """Load, validate and expand a suite into runs. ``overrides`` maps dotted keys to values (``--set
    trainer.max_epochs=1``) and is applied before the checks. Results go to ``results_dir`` of the
    suite file, else ``<results_root>/<folder or name>`` (``results_root``: default ``./results``).
    Every error in the file is a one-line :class:`SuiteConfigError`."""
    path = suite_path(name_or_path)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark else ""
        raise SuiteConfigError(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    raw = copy.deepcopy(raw)
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    _check_keys("the suite", raw, SUITE_KEYS, source)
    _check_keys("logging", raw.get("logging"), LOGGING_KEYS, source)
    _check_keys("logging.wandb", (raw.get("logging") or {}).get("wandb"), WANDB_KEYS, source)
    _check_keys("matrix", raw.get("matrix"), MATRIX_KEYS, source)
    _check_keys("early_stopping", raw.get("early_stopping"), EARLY_STOPPING_KEYS, source)
    _check_keys("evaluation", raw.get("evaluation"), EVALUATION_KEYS, source)
    checkpoint = (raw.get("evaluation") or {}).get("checkpoint", "best")
    if checkpoint not in EVALUATION_CHECKPOINTS:
        raise SuiteConfigError(f"{source}: evaluation.checkpoint is {checkpoint!r}; expected one of {', '.join(EVALUATION_CHECKPOINTS)}")
    _check_keys("multitask", raw.get("multitask"), MULTITASK_KEYS, source)
    check_trainer("trainer", raw.get("trainer"), source, overrides)
    check_early_stopping("early_stopping", raw.get("early_stopping"), source)
    name = raw.get("name") or path.stem
    datasets, methods = raw.get("datasets") or {}, raw.get("methods") or {}
    if not datasets or not methods:
        raise SuiteConfigError(f"{source}: a suite needs at least one entry under 'datasets' and under 'methods'")
    for dk, dv in datasets.items():
        _check_keys(f"datasets.{dk}", dv, DATASET_KEYS, source)
        if "datamodule" not in dv:
            raise SuiteConfigError(f"{source}: datasets.{dk} needs 'datamodule' (a registered dataset name)")
    for mk, mv in methods.items():
        _check_keys(f"methods.{mk}", mv, METHOD_KEYS, source)
        _check_keys(f"methods.{mk}.early_stopping", mv.get("early_stopping"), EARLY_STOPPING_KEYS, source)
        check_early_stopping(f"methods.{mk}.early_stopping", mv.get("early_stopping"), source)
        check_trainer(f"methods.{mk}.trainer", mv.get("trainer"), source, overrides)
        if "method" not in mv:
            raise SuiteConfigError(f"{source}: methods.{mk} needs 'method' (a registered method name)")
        if mv.get("init_from") and mv["init_from"] not in methods:
            raise SuiteConfigError(f"{source}: methods.{mk}.init_from is {mv['init_from']!r}; allowed: {', '.join(methods)}")
        if mv.get("init_from") and methods[mv["init_from"]].get("grid"):
            raise SuiteConfigError(f"{source}: methods.{mk}.init_from points at a grid method ({mv['init_from']}); "
                                   f"give the base stage its own entry")
        for d in mv.get("datasets") or []:
            if d not in datasets:
                raise SuiteConfigError(f"{source}: methods.{mk}.datasets names {d!r}; allowed: {', '.join(datasets)}")
    _check_multitask(raw.get("multitask"), methods, source)
    check_method_arguments(methods, source, overrides)   # e.g. timm backbones, before the slow imports below
    plugins = list(dict.fromkeys(load_plugins(raw.get("plugins"), source) + load_plugins(plugins_from_env(), "--plugins")))
    _check_registered(datasets, methods, source)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise SuiteConfigError(f"{source}: seeds must be a list of integers, got {seeds!r}")
    excludes = (raw.get("matrix") or {}).get("exclude") or []
    for i, ex in enumerate(excludes):
        _check_keys(f"matrix.exclude[{i}]", ex, {"method", "dataset", "seed"}, source)
    results_dir = Path(raw.get("results_dir") or default_results_root(results_root) / (folder or name)).resolve()

    def excluded(mk: str, dk: str, seed: int) -> bool:
        for ex in excludes:
            if fnmatch.fnmatchcase(mk, str(ex.get("method", "*"))) and fnmatch.fnmatchcase(dk, str(ex.get("dataset", "*"))) \
                    and (ex.get("seed") is None or int(ex["seed"]) == seed):
                return True
        return False

    def root_of(mk: str) -> str:
        seen = [mk]
        while methods[mk].get("init_from"):
            mk = methods[mk]["init_from"]
            if mk in seen:
                raise SuiteConfigError(f"{source}: init_from forms a cycle: {' -> '.join(seen + [mk])}")
            seen.append(mk)
        return mk

    suite = Suite(name=name, source=source, raw=raw, results_dir=results_dir)
    for mk, mv in methods.items():
        for variant, point in _grid_points(mk, mv.get("grid"), source):
            for dk, dv in datasets.items():
                if mv.get("datasets") and dk not in mv["datasets"]:
                    continue
                for seed in seeds:
                    if excluded(variant, dk, seed) or excluded(mk, dk, seed):
                        continue
                    run_id = f"{variant}--{dk}--s{seed}"
                    parent = mv.get("init_from")
                    trainer = {**DEFAULT_TRAINER, **(raw.get("trainer") or {}), **(mv.get("trainer") or {})}
                    es = mv.get("early_stopping", raw.get("early_stopping"))
                    cfg = {
                        "suite": name, "run_id": run_id, "method_key": variant, "dataset_key": dk, "seed": seed,
                        "method": {"name": mv["method"], "args": {**(mv.get("args") or {}), **point}},
                        "dataset": {"datamodule": dv["datamodule"], "args": {**(dv.get("args") or {}),
                                                                             **(mv.get("datamodule_args") or {})}},
                        "trainer": trainer, "early_stopping": es,
                        "logging": raw.get("logging") or {},
                        "evaluation": raw.get("evaluation") or {},
                        "init_from": f"{parent}--{dk}--s{seed}" if parent else None,
                        "report": mv.get("report", True),
                    }
                    if plugins:   # the worker imports them before it looks the method up
                        cfg["plugins"] = plugins
                    suite.runs.append(RunSpec(run_id, variant, dk, seed, cfg, cfg["init_from"], chain=f"{root_of(mk)}--{dk}--s{seed}"))
    ids = {r.run_id for r in suite.runs}
    for r in suite.runs:
        if r.depends_on and r.depends_on not in ids:
            raise SuiteConfigError(f"{source}: run {r.run_id} starts from {r.depends_on}, which the matrix excludes")
    suite.runs = _topological(suite.runs)
    return suite


def _check_multitask(mt: dict[str, Any] | None, methods: dict[str, Any], source: str) -> None:
    """``multitask: {baseline: <method key>, metrics: [...], min_positives: 20, baseline_floor: 0.1}``
    (read by the reports only, never part of a run's config): the baseline is one of the suite's
    method keys (or grid variants); the last two set which tasks enter Δm% (benchmarks.multitask)."""
    if mt is None:
        return
    keys = [v for mk, mv in methods.items() for v, _ in _grid_points(mk, mv.get("grid"), source)]
    if mt.get("baseline") not in keys:
        raise SuiteConfigError(f"{source}: multitask.baseline is {mt.get('baseline')!r}; allowed: {', '.join(keys)}")
    metrics = mt.get("metrics", ["accuracy"])
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise SuiteConfigError(f"{source}: multitask.metrics must be a non-empty list of metric names, got {metrics!r}")
    n = mt.get("min_positives", 20)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SuiteConfigError(f"{source}: multitask.min_positives must be a whole number >= 1, got {n!r}")
    floor = mt.get("baseline_floor", 0.1)
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or floor < 0:
        raise SuiteConfigError(f"{source}: multitask.baseline_floor must be a number >= 0, got {floor!r}")


def _check_registered(datasets: dict[str, Any], methods: dict[str, Any], source: str) -> None:
    """Every dataset and method is registered and every argument is one its constructor takes."""
    from facebench.datamodules.base import get_datamodule_class
    from facebench.lightning_modules.registry import get_method_class

    for dk, dv in datasets.items():
        try:
            get_datamodule_class(dv["datamodule"]).check_config(dv.get("args") or {})
        except ValueError as exc:
            raise SuiteConfigError(f"{source}: datasets.{dk}: {exc}") from None
    for mk, mv in methods.items():
        try:
            cls = get_method_class(mv["method"])
            cls.check_config({**(mv.get("args") or {}), **{k: None for k in (mv.get("grid") or {})}})
            for dk in mv.get("datasets") or datasets:
                get_datamodule_class(datasets[dk]["datamodule"]).check_config(mv.get("datamodule_args") or {})
        except ValueError as exc:
            raise SuiteConfigError(f"{source}: methods.{mk}: {exc}") from None


def _topological(runs: list[RunSpec]) -> list[RunSpec]:
    by_id = {r.run_id: r for r in runs}
    out, done = [], set()

    def visit(r: RunSpec) -> None:
        if r.run_id in done:
            return
        if r.depends_on:
            visit(by_id[r.depends_on])
        done.add(r.run_id)
        out.append(r)

    for r in runs:
        visit(r)
    return out


def matches(run: RunSpec, only: list[str]) -> bool:
    """Whether an ``--only`` pattern (fnmatch) names the run: its id, method key or dataset key."""
    return any(fnmatch.fnmatchcase(run.run_id, p) or fnmatch.fnmatchcase(run.method_key, p)
               or fnmatch.fnmatchcase(run.dataset_key, p) for p in only)


def select(runs: list[RunSpec], only: list[str] | None = None, shard: tuple[int, int] | None = None) -> list[RunSpec]:
    """Filter runs by ``--only`` patterns (fnmatch on run id, method or dataset key; a selected run
    brings the runs it starts from) and ``--shard i/n`` (whole chains go to one shard, so stages
    that hand checkpoints on never straddle machines)."""
    chosen = runs
    if only:
        keep = {r.run_id for r in runs if matches(r, only)}
        by_id = {r.run_id: r for r in runs}
        for rid in list(keep):
            while by_id[rid].depends_on:
                rid = by_id[rid].depends_on  # type: ignore[assignment]
                keep.add(rid)
        chosen = [r for r in runs if r.run_id in keep]
    if shard:
        i, n = shard
        chains = sorted({r.chain for r in runs})
        mine = {c for k, c in enumerate(chains) if k % n == i - 1}
        chosen = [r for r in chosen if r.chain in mine]
    return chosen


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``1 <= i <= n``; a :class:`SuiteConfigError` otherwise."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SuiteConfigError(f"--shard must look like i/n (e.g. 1/4), got {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise SuiteConfigError(f"--shard {text}: need 1 <= i <= n")
    return i, n
