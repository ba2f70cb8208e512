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
        def log_run_records(self, directory: Path, summary: dict[str, Any] | None = None) -> None:
            """Per-target metric table, ROC figures and the test summary of the finished run; then
            close the W&B run so the offline run directory is complete."""
            import pandas as pd

            metrics = directory / "metrics.csv"
            if metrics.is_file():
                df = pd.read_csv(metrics)
                keep = [c for c in ("split", "target", "class", "metric", "value") if c in df.columns]
                self.experiment.log({"results/metrics": wandb.Table(dataframe=df[keep])})
            for png in sorted(directory.glob("figures/*.png")):
                self.experiment.log({f"figures/{png.stem}": wandb.Image(str(png))})
            if summary:
                self.experiment.summary.update({f"test/{k}": v for k, v in summary.items()})
            self.experiment.finish()

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


def read_offline_wandb(run_file: str | Path) -> dict[str, Any]:
    """Read an offline W&B run file (``offline-run-*/run-*.wandb``: W&B's LevelDB-style log of
    protobuf records) and return ``{"history": {key: [values]}, "summary": {key: value}}``; lets tests
    and users check what an offline run logged without syncing it."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    block, header = 32768, 7
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file}: not a W&B run file")
    pos, pending = 7, b""
    history: dict[str, list[Any]] = {}
    summary: dict[str, Any] = {}
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        payload = data[pos + header:pos + header + length]
        pos += header + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (1, 2) else pending + payload
        if kind not in (1, 4):
            continue
        rec = pb.Record()
        rec.ParseFromString(pending)
        pending = b""
        which = rec.WhichOneof("record_type")
        if which == "history":
            for item in rec.history.item:
                history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
        elif which == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"history": history, "summary": summary}
