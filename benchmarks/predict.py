"""``facebench predict --run RUN_DIR IMAGES...``: per-target probabilities for new images.

The method is rebuilt from the run's checkpoint (its hyper-parameters hold the task and every
constructor argument) and the images get the run's evaluation transform (size, channels,
normalisation). ``--detect`` first crops the largest Viola-Jones face (OpenCV Haar cascade), for
methods trained on aligned crops given unaligned photos. Output: a CSV with one row per image and
one column per probability column of the task (``<target>`` for binary targets,
``<target>/<class>`` otherwise), written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from facebench.benchmarks.records import probability_columns
from facebench.benchmarks.run_folder import RunFolder
from facebench.core.io import write_csv

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _expand(paths: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    if not out:
        raise FileNotFoundError(f"no images found in {', '.join(paths)}")
    return out


def load_run_model(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    from facebench.core.plugins import import_plugins
    from facebench.lightning_modules.registry import get_method_class

    folder = RunFolder(run_dir)
    cfg = folder.config()
    ckpt = folder.trained_checkpoint()
    import_plugins(cfg.get("plugins"))   # the run's plugin modules register its method
    cls = get_method_class(cfg["method"]["name"])
    model = cls.load_from_checkpoint(str(ckpt), map_location="cpu", init_checkpoint=None)
    model.eval()
    return model, cfg


def predict(run_dir: Path, images: Sequence[str], detect: bool = False, batch_size: int = 64) -> pd.DataFrame:
    from facebench.datamodules.image_files import load_image
    from facebench.datamodules.transforms import FaceTransform, TransformConfig

    model, cfg = load_run_model(run_dir)
    args = cfg["dataset"]["args"]
    tcfg = TransformConfig(**{**(args.get("transforms") or {}), "image_size": model.image_size, "channels": model.in_chans})
    transform = FaceTransform(tcfg, train=False)
    detector = None
    if detect:
        import cv2

        detector = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    files = _expand(images)
    rows, batch = [], []

    def flush() -> None:
        if not batch:
            return
        with torch.no_grad():
            x = torch.stack([b["image"] for b in batch])
            probs = model.probabilities({"image": x, "label": torch.zeros(len(batch), model.task.n_label_slots, dtype=torch.long)})
        rows.extend(probs.numpy())
        batch.clear()

    for f in files:
        img = load_image(f)
        box = None
        if detector is not None:
            gray = img[:, :, 0] if img.shape[2] == 1 else np.asarray(img.mean(axis=2), dtype=np.uint8)
            faces = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5)
            if len(faces):
                box = max(faces, key=lambda r: r[2] * r[3]).tolist()
        if model.needs_landmarks:
            raise ValueError(f"method {cfg['method']['name']!r} needs landmarks; predict does not compute them yet")
        batch.append(transform(img, crop_box=box))
        if len(batch) >= batch_size:
            flush()
    flush()
    df = pd.DataFrame(np.asarray(rows), columns=probability_columns(model.task))
    df.insert(0, "image", [str(f) for f in files])
    return df


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facebench predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a finished run directory (results/<suite>/runs/<run_id>)")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--out", help="output CSV (default: <run>/predictions_new.csv)")
    p.add_argument("--detect", action="store_true", help="crop the largest Viola-Jones face first")
    args = p.parse_args(argv)
    run_dir = Path(args.run)
    df = predict(run_dir, args.images, detect=args.detect)
    out = Path(args.out) if args.out else run_dir / "predictions_new.csv"
    write_csv(out, df, float_format="%.6f")
    print(f"[facebench] {len(df)} image(s) -> {out}")
    return 0
