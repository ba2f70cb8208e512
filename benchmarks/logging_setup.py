"""Loggers of a run: a CSV log always, Weights & Biases offline by default; and how much the
libraries print (:func:`configure_output`).

W&B settings come from the suite's ``logging.wandb`` (``enabled``, ``mode``: offline | online,
``project`` (default: ``facebench-<suite>``), ``entity``, ``tags``). The group is
``<method>--<dataset>`` so seeds of one pair sit together. Offline mode never touches the network;
``online`` with no network falls back to offline after ``init_timeout`` seconds instead of failing.

Output: by default a run shows what the user needs (progress, stage, figures, paths); Lightning's
informational lines ("GPU available", tips, "Restoring states ..."), library warnings nobody can act
on and W&B's own messages are shown only with ``facebench run --verbose``, which sets
``FACEBENCH_VERBOSE=1`` for the worker processes. Every warning shown is one line,
``[facebench] warning: <message>`` (no source line, no category); a warning is a library's when the
code that raised it is a third-party package (Lightning, torch, timm, W&B, ...): facebench's own
warnings and those of the user's modules (plugins) always show.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

#: Environment variable carrying ``--verbose`` to the worker processes.
VERBOSE_ENV = "FACEBENCH_VERBOSE"
#: Lightning's informational loggers (``rank_zero_info``: "GPU available", "TPU available", the
#: litlogger tip, "Restoring states from the checkpoint", "`Trainer.fit` stopped", CUDA devices).
LIGHTNING_INFO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                          "lightning.pytorch.utilities", "lightning.pytorch.accelerators.cuda")
#: Warnings from library code that a facebench user cannot act on: (message regex, category).
QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Lightning's own _pytree uses torch's deprecated LeafSpec
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # closed-form methods (majority, dlib probe, the LNets+ANet classifiers) have nothing to optimise
    (r"`LightningModule.configure_optimizers` returned `None`", UserWarning),
    # the frozen layers of an earlier stage stay in eval mode by design (FaceAttributeTask.frozen_modules)
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
)


def set_verbose(verbose: bool) -> None:
    """Ask this process and the workers it starts for the libraries' full output."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _warning_origin() -> str:
    """The module whose code called ``warnings.warn`` (the first frame above the warnings machinery)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__") in ("warnings", __name__):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def is_library_module(module: str, filename: str = "") -> bool:
    """A third-party package (installed under site-packages, or Python's own library), not facebench
    and not the user's modules."""
    if module == "facebench" or module.startswith("facebench."):
        return False
    top = sys.modules.get(module.split(".")[0])
    path = getattr(top, "__file__", None) or filename or ""
    return "site-packages" in path or "dist-packages" in path or path.startswith(sys.base_prefix)


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:
    """``warnings.showwarning``: one ``[facebench] warning: ...`` line; library warnings only when verbose."""
    origin = _warning_origin()
    library = is_library_module(origin, filename)
    if library and not is_verbose():
        return
    text = " ".join(str(message).split())
    where = f" ({origin.split('.')[0]})" if library else ""
    try:
        print(f"[facebench] warning{where}: {text}", file=file or sys.stderr, flush=True)
    except (OSError, ValueError):   # a closed stream: nothing to show it on
        pass


def configure_warnings() -> None:
    """Every warning as one ``[facebench] warning: ...`` line (:func:`show_warning`)."""
    warnings.showwarning = show_warning


def configure_output(verbose: bool | None = None) -> None:
    """Warnings as one line each (:func:`configure_warnings`); unless verbose (default:
    :func:`is_verbose`), keep Lightning's info lines, library warnings (those of :data:`QUIET_WARNINGS`
    are not even recorded) and W&B's messages out of the run's output."""
    configure_warnings()
    if is_verbose() if verbose is None else verbose:
        return
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    os.environ.setdefault("WANDB_SILENT", "true")


def build_loggers(cfg: dict[str, Any], run_dir: Path) -> list[Logger]:
    from lightning.pytorch.loggers import CSVLogger

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
    quiet = not is_verbose()
    if quiet:
        os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"

    class FacebenchWandbLogger(WandbLogger):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            # Lightning always passes ``anonymous`` (None), which W&B warns has no effect: leave it out
            self._wandb_init.pop("anonymous", None)

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
        settings=wandb.Settings(init_timeout=float(wcfg.get("init_timeout", 60)), silent=quiet),
    )


def _stable_id(cfg: dict[str, Any]) -> str:
    from facebench.benchmarks.provenance import config_hash

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
