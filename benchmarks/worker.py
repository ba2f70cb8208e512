"""Execute one run of a suite: ``python -m facebench.benchmarks.worker RUN_DIR``.

The run folder (:class:`~facebench.benchmarks.run_folder.RunFolder`) holds ``config.yaml`` (written
by the runner). The worker trains with Lightning (resuming from ``checkpoints/last.ckpt`` when a
killed run left one), evaluates the best checkpoint on the validation and test splits, writes the
result records and the committed record (``records/<run_id>.json`` and its compact test
predictions). With ``devices > 1`` Lightning re-launches this same command once per extra rank
(DDP); only rank 0 writes records. Status is written atomically to ``status.json`` at every
transition.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from facebench.benchmarks.run_folder import RunFolder

#: Datamodule arguments of every suite run unless its config sets them: the decoded-image cache
#: (``auto``: on for file-backed splits of at least 1000 images that fit on disk; see
#: :mod:`facebench.datamodules.cache`). Tests and library use keep the datamodule's own default (off).
SUITE_DATAMODULE_DEFAULTS: dict[str, Any] = {"image_cache": "auto"}
#: ``1``: refuse data whose duplicate images span splits (``facebench run --strict``; workers inherit it).
STRICT_DATA_ENV = "FACEBENCH_STRICT_DATA"


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def build_trainer(cfg: dict[str, Any], run_dir: Path, monitor: tuple[str, str], gradient_trained: bool = True):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    from facebench.benchmarks.callbacks import AtomicCheckpointIO, EpochSeeder, RunLoggingCallback
    from facebench.benchmarks.logging_setup import build_loggers

    trainer_cfg = dict(cfg["trainer"])
    if not gradient_trained:   # nothing for DDP to synchronise: one process does it
        trainer_cfg.update(devices=1, num_nodes=1)
        trainer_cfg.pop("strategy", None)
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor[0], mode=monitor[1],
                        save_last=True, save_top_k=1, enable_version_counter=False),
        # last.ckpt rewritten every epoch. ``save_last=True`` alone is not enough: Lightning (>= 2.4) writes it
        # only with a new top-k checkpoint, i.e. at the last *improvement* (plus once at the end of a fit that
        # saved nothing, which closed-form stages without an optimiser step rely on); resume, the per-network
        # selection and ``evaluation: {checkpoint: last}`` need the final epoch.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        EpochSeeder(int(cfg["seed"])),
        RunLoggingCallback(),
    ]
    es = cfg.get("early_stopping")
    if es:
        callbacks.append(EarlyStopping(monitor=es.get("monitor", monitor[0]), mode=es.get("mode", monitor[1]),
                                       patience=int(es.get("patience", 5)), min_delta=float(es.get("min_delta", 0.0))))
    interactive = sys.stdout.isatty() and trainer_cfg.pop("enable_progress_bar", True)
    if interactive:
        callbacks.append(RichProgressBar(leave=False))
    trainer_cfg.setdefault("enable_progress_bar", bool(interactive))
    if int(trainer_cfg.get("devices", 1) if str(trainer_cfg.get("devices", 1)).isdigit() else 2) > 1 \
            or int(trainer_cfg.get("num_nodes", 1)) > 1:
        trainer_cfg.setdefault("strategy", "ddp")
    return L.Trainer(default_root_dir=str(run_dir), callbacks=callbacks, logger=build_loggers(cfg, run_dir),
                     use_distributed_sampler=False, plugins=[AtomicCheckpointIO()], **trainer_cfg)


def trained_samples(trainer: Any, dm: Any) -> int:
    """Training images one epoch saw: the training split, or fewer under ``limit_train_batches``
    (or ``fast_dev_run``): batches per rank x batch size x ranks, at most the split."""
    import math

    n = len(dm.tables["train"]) if "train" in dm.tables else 0
    batches = trainer.num_training_batches
    if not isinstance(batches, (int, float)) or not math.isfinite(batches):
        return n
    return int(min(n, batches * dm.batch_size * max(trainer.world_size, 1)))


def execute(run_dir: Path, cfg: dict[str, Any] | None = None) -> int:
    import lightning as L
    import torch

    from facebench.benchmarks.logging_setup import configure_output
    from facebench.benchmarks.records import write_committed_record, write_records
    from facebench.datamodules.base import create_datamodule
    from facebench.lightning_modules.base import NonFiniteLossError
    from facebench.lightning_modules.registry import IncompatibleTaskError, create_method, get_method_class
    from facebench.core.plugins import import_plugins
    from facebench.datamodules.describe import warn_single_class_targets

    folder = RunFolder(run_dir)
    if cfg is None:
        cfg = folder.config()
    configure_output()   # Lightning's info lines and library warnings only with --verbose (FACEBENCH_VERBOSE=1)
    rank_zero = _is_rank_zero()
    started = time.time()
    if rank_zero:
        folder.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        L.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
        torch.set_float32_matmul_precision("high")
        import_plugins(cfg.get("plugins"))   # the suite's plugin modules register their methods
        method_cls = get_method_class(cfg["method"]["name"])
        dm = create_datamodule(cfg["dataset"]["datamodule"], **{**SUITE_DATAMODULE_DEFAULTS, **cfg["dataset"]["args"]})
        dm.augment_seed = int(cfg["seed"])
        if rank_zero or int(os.environ.get("LOCAL_RANK", "0")) == 0:
            dm.prepare_data()
        dm.setup("fit")
        dm.report["checks"] = dm.data_checks()   # facebench inspect's counts of doubts, into the run records
        if os.environ.get(STRICT_DATA_ENV) == "1":
            from facebench.datamodules.describe import require_disjoint_splits

            require_disjoint_splits(dm, cfg["dataset_key"])
        args = dict(cfg["method"]["args"])
        args.update(method_cls.datamodule_kwargs(dm, args))
        if cfg.get("init_from"):
            args["init_checkpoint"] = str(RunFolder(run_dir.parent / cfg["init_from"]).trained_checkpoint())
        model = create_method(cfg["method"]["name"], dm.task, **args)
        dm.configure_input(model.image_size, model.in_chans, landmarks=model.needs_landmarks or None,
                           train_defaults=model.default_train_transforms)
        splits = (cfg.get("evaluation") or {}).get("splits", ["val", "test"])
        splits = [s for s in splits if s in dm.tables]
        model.eval_split_names = splits
        warn_single_class_targets(dm, splits)   # a target with one class in a split: which metrics are undefined there
        trainer = build_trainer(cfg, run_dir, model.monitor, model.gradient_trained)
        last = folder.last_checkpoint
        fit_start = time.time()
        trainer.fit(model, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
        train_time = time.time() - fit_start
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if (model.evaluation_checkpoint == "last" or (cfg.get("evaluation") or {}).get("checkpoint") == "last") \
                and last.is_file():
            best = ""   # per-network selection (the last checkpoint holds every network's best weights) or the
            #             suite's ``evaluation: {checkpoint: last}`` (the final epoch of a fixed schedule)
        ckpt_path = best if best and Path(best).is_file() else (str(last) if last.is_file() else None)
        eval_start = time.time()
        trainer.test(model, dataloaders=[dm.eval_dataloader(s) for s in splits], ckpt_path=ckpt_path, verbose=False)
        eval_time = time.time() - eval_start
        if trainer.is_global_zero:
            timing = {"train_time_s": train_time, "eval_time_s": eval_time, "wall_time_s": time.time() - started,
                      "epochs": trainer.current_epoch, "train_samples": trained_samples(trainer, dm)}
            summary = write_records(run_dir, cfg, model, dm, model.collected, timing=timing)
            folder.set_status("done", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), summary=summary,
                              best_checkpoint=ckpt_path, timing=timing)
            write_committed_record(folder, folder.status())
            for lg in trainer.loggers:
                if hasattr(lg, "log_run_records"):   # W&B: the run's metric table and ROC / reliability figures
                    try:
                        from facebench.benchmarks.figures import write_figures

                        write_figures(run_dir, run_dir / "figures")
                        lg.log_run_records(run_dir, summary)
                    except Exception as exc:  # noqa: BLE001  (logging never costs a finished run)
                        print(f"[facebench] W&B logging of records failed: {exc}", file=sys.stderr)
        return 0
    except IncompatibleTaskError as exc:
        if rank_zero:
            folder.set_status("incompatible", error=str(exc))
        return 3
    except NonFiniteLossError as exc:
        if rank_zero:
            folder.set_status("failed", error=str(exc))
        print(f"[facebench] {cfg['run_id']}: {exc}", file=sys.stderr)
        return 4
    except Exception as exc:  # noqa: BLE001  (recorded, the suite goes on)
        if rank_zero:
            folder.set_status("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
        from facebench.datamodules.formats import DatasetFormatError

        if isinstance(exc, (DatasetFormatError, FileNotFoundError)):   # data errors: one line (traceback: status.json)
            print(f"[facebench] {cfg['run_id']}: {exc}", file=sys.stderr)
        else:
            traceback.print_exc()
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m facebench.benchmarks.worker RUN_DIR", file=sys.stderr)
        return 2
    return execute(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
