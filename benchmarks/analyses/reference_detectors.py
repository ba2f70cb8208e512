"""Reference face detectors of the ``wild-localization`` analysis (``benchmarks/analyses/lnets_anet.py``)
and its scoring: OpenCV's Haar cascade (Viola & Jones; ``haarcascade_frontalface_default.xml``,
shipped in the opencv wheel) and dlib's HOG + linear SVM detector (``dlib.get_frontal_face_detector``),
each reduced to its best-scoring box per image; one box scale factor per detector calibrated on
validation images (as ``lnet_s``'s ``calibrate_face_scale``); recall@IoU with misses counted.

Both detectors give scores: Haar the level weight of ``detectMultiScale3(outputRejectLevels=True)``,
HOG the SVM score of ``run``; the box of an image is the highest-scoring detection (never the one
closest to the truth), so a detector is not helped by the ground truth it is scored against.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from facebench.lightning_modules.lnets_anet import box_iou_xywh, calibrate_scale, scale_boxes

#: IoU thresholds of the table.
RECALL_THRESHOLDS: tuple[float, ...] = (0.3, 0.5, 0.7)
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


#: A detector: image -> its best box ``(x, y, w, h)`` in pixels, or ``None``.
Detector = Callable[[np.ndarray], "np.ndarray | None"]


def haar_detector(scale_factor: float = 1.1, min_neighbors: int = 3, min_size: int = 20) -> Detector:
    """OpenCV's frontal-face Haar cascade: image (``uint8 HxWx3`` RGB or ``HxWx1``) -> best box
    ``(x, y, w, h)`` in pixels by level weight, or ``None``. OpenCV's defaults except ``min_size``
    (20 px: the smallest faces of a 160 px canvas at 15 %)."""
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
    if cascade.empty():
        raise FileNotFoundError(f"OpenCV's {HAAR_CASCADE} could not be loaded from {cv2.data.haarcascades}")

    def detect(image: np.ndarray) -> np.ndarray | None:
        gray = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else (
            cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image)
        rects, _, weights = cascade.detectMultiScale3(np.ascontiguousarray(gray), scaleFactor=scale_factor,
                                                      minNeighbors=min_neighbors, minSize=(min_size, min_size),
                                                      outputRejectLevels=True)
        if len(rects) == 0:
            return None
        return np.asarray(rects[int(np.argmax(np.asarray(weights).reshape(-1)))], dtype=np.float64)

    return detect


def hog_detector(upsample: int = 2) -> Detector:
    """dlib's HOG frontal-face detector: image -> best box ``(x, y, w, h)`` by SVM score, or ``None``.
    Its window is 80 px, so ``upsample`` doublings of the image are needed for small faces (2: faces
    from about 20 px, the smallest of a 160 px canvas at 15 %)."""
    import dlib

    detector = dlib.get_frontal_face_detector()

    def detect(image: np.ndarray) -> np.ndarray | None:
        img = np.ascontiguousarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image, dtype=np.uint8)
        rects, scores, _ = detector.run(img, int(upsample), 0.0)
        if len(rects) == 0:
            return None
        r = rects[int(np.argmax(scores))]
        return np.array([r.left(), r.top(), r.width(), r.height()], dtype=np.float64)

    return detect


def detect_all(detect: Detector, images: Iterable[np.ndarray]) -> np.ndarray:
    """Best box per image, ``[N, 4]`` normalised by each image's width and height (NaN rows: no detection)."""
    rows = []
    for image in images:
        box = detect(image)
        h, w = image.shape[:2]
        rows.append(np.full(4, np.nan) if box is None else box / np.array([w, h, w, h], dtype=np.float64))
    return np.stack(rows) if rows else np.zeros((0, 4))


def calibrate_detector(pred: np.ndarray, true: np.ndarray, grid: Sequence[float] | None = None) -> float:
    """The box scale factor (about the box centres) that maximises recall@iou0.5 on the images with a
    detection (:func:`~facebench.lightning_modules.lnets_anet.calibrate_scale`; misses do not depend on it); 1.0
    when nothing was detected."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    found = np.isfinite(pred).all(1)
    if not found.any():
        return 1.0
    kwargs: dict[str, Any] = {} if grid is None else {"grid": grid}
    return calibrate_scale(pred[found], true[found], **kwargs)


def scale_detections(pred: np.ndarray, factor: float) -> np.ndarray:
    """Boxes scaled by ``factor`` about their centres (NaN rows stay NaN)."""
    pred = np.asarray(pred, dtype=np.float64)
    return scale_boxes(torch.as_tensor(pred), float(factor)).numpy()


def recall_table_row(pred: np.ndarray, true: np.ndarray, thresholds: Sequence[float] = RECALL_THRESHOLDS) -> dict[str, float]:
    """Scores of one method: ``recall@<t>`` (fraction of images whose box has IoU >= t with the true
    box; an image without a box is a miss), ``mean_iou`` (misses count 0), ``detection_rate``
    (fraction of images with a box) and ``n``."""
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    found = np.isfinite(pred).all(1)
    iou = np.zeros(len(true))
    if found.any():
        iou[found] = box_iou_xywh(pred[found], true[found])
    row = {f"recall@{t:g}": float((iou >= t).mean()) if len(iou) else float("nan") for t in thresholds}
    row.update(mean_iou=float(iou.mean()) if len(iou) else float("nan"),
               detection_rate=float(found.mean()) if len(found) else float("nan"), n=int(len(true)))
    return row
