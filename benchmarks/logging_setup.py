"""Loggers of a run: a CSV log always, Weights & Biases offline by default.

W&B settings come from the suite's ``logging.wandb`` (``enabled``, ``mode``: offline | online,
``project`` (default: ``facebench-<suite>``), ``entity``, ``tags``). The group is
``<method>--<dataset>`` so seeds of one pair sit together. Offline mode never touches the network;
``online`` with no network falls back to offline after ``init_timeout`` seconds instead of failing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger


def build_loggers(cfg: dict[str, Any], run_dir: Path) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs", version="")]
    wcfg = (cfg.get("logging") or {}).get("wandb") or {}
    if wcfg.get("enabled", False) and os.environ.get("FACEBENCH_WANDB", "1") != "0":
        try:
            loggers.append(_wandb_logger(cfg, run_dir, wcfg))
        except Exception as exc:  # noqa: BLE001  (logging must never cost a run)
            warnings.warn(f"W&B logging disabled for {cfg['run_id']}: {type(exc).__name__}: {exc}", stacklevel=2)
    return loggers


def _wandb_logger(cfg: dict[str, Any], run_dir: Path, wcfg: dict[str, Any]) -> Logger:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    mode = wcfg.get("mode", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"

    class FacebenchWandbLogger(WandbLogger):
        def log_run_records(self, directory: Path) -> None:
            """Per-target metric table and ROC figures of the finished run."""
            import pandas as pd

            metrics = directory / "metrics.csv"
            if metrics.is_file():
                df = pd.read_csv(metrics)
                keep = [c for c in ("split", "target", "class", "metric", "value") if c in df.columns]
                self.experiment.log({"results/metrics": wandb.Table(dataframe=df[keep])})
            for png in sorted(directory.glob("figures/*.png")):
                self.experiment.log({f"figures/{png.stem}": wandb.Image(str(png))})

    return FacebenchWandbLogger(
        project=wcfg.get("project") or f"facebench-{cfg['suite']}", entity=wcfg.get("entity"),
        name=cfg["run_id"], group=f"{cfg['method_key']}--{cfg['dataset_key']}", id=_stable_id(cfg),
        tags=list(wcfg.get("tags") or []) + [cfg["method"]["name"], cfg["dataset"]["datamodule"], f"seed{cfg['seed']}"],
        config=cfg, save_dir=str(run_dir), mode=mode, resume="allow",
        settings=wandb.Settings(init_timeout=float(wcfg.get("init_timeout", 60)), silent=True),
    )


def _stable_id(cfg: dict[str, Any]) -> str:
    from benchmarks.provenance import config_hash

    return f"{cfg['suite']}-{config_hash(cfg['run_id'])}-{config_hash(cfg)}"[:64]
