"""Facial landmark providers: where ``SampleTable.landmarks`` come from when a method needs them.

* ``dataset``: the dataset's own landmark files (CelebA's 5 points, SynthFaces' points); an error
  when the dataset has none.
* ``dlib68``: dlib's 68-point iBUG-300W shape predictor (the model file shipped by the
  ``face_recognition_models`` package, located without importing that package, whose ``__init__``
  needs the removed ``pkg_resources``). The face box comes from dlib's HOG face detector
  (``detector: hog``, the largest face; the whole image when none is found, counted) or is the
  whole image (``detector: image``, for aligned crops). LACNN (sec. 3.1) uses a 68-point localiser
  (TCDCN) and notes any other can replace it.

Datamodule argument: ``landmark_provider: dlib68`` or ``{name: dlib68, detector: image, upsample: 1}``.
Predictions are computed once per image and cached on disk (:class:`~facebench.datamodules.preprocess.FileCache`,
keyed by file and content: a changed image is recomputed).
"""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from facebench.datamodules.preprocess import FileCache, table_keys
from facebench.datamodules.table import DatasetFiles, SampleTable


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Path of a model file of ``face_recognition_models`` (found without importing the package)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the face_recognition_models package is not installed (pip install face-recognition-models)")
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} is missing from face_recognition_models at {list(spec.submodule_search_locations)}")


class LandmarkProvider:
    """Fills a table's landmarks ``float32 [N, K, 2]`` (x, y in source pixels)."""

    name = ""
    n_points = 0

    def landmarks(self, table: Any, root: Path, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, dict[str, int]]:
        raise NotImplementedError


class DatasetLandmarks(LandmarkProvider):
    """The dataset's own landmark annotations."""

    name = "dataset"

    def landmarks(self, table: Any, root: Path, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, dict[str, int]]:
        if table.landmarks is None:
            raise ValueError("landmark_provider 'dataset': this dataset has no landmark files; use landmark_provider: dlib68")
        return table.landmarks, {"images": len(table)}


_DLIB: dict[str, Any] = {}


def _dlib_models() -> tuple[Any, Any]:
    import dlib

    if "predictor" not in _DLIB:
        _DLIB["detector"] = dlib.get_frontal_face_detector()
        _DLIB["predictor"] = dlib.shape_predictor(str(dlib_model_path()))
    return _DLIB["detector"], _DLIB["predictor"]


def dlib68(image: np.ndarray, detector: str = "hog", upsample: int = 1) -> tuple[np.ndarray, bool]:
    """68 landmarks ``float32 [68, 2]`` of the largest face, and whether a face was detected (with
    ``detector="image"`` or when HOG finds none, the whole image is the face box)."""
    import dlib

    det, predictor = _dlib_models()
    img = np.ascontiguousarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image, dtype=np.uint8)
    h, w = img.shape[:2]
    rect, found = dlib.rectangle(0, 0, w - 1, h - 1), False
    if detector == "hog":
        faces = det(img, upsample)
        if len(faces):
            rect, found = max(faces, key=lambda r: r.width() * r.height()), True
    shape = predictor(img, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32), found


def _dlib68_job(job: tuple[Any, str, int]) -> tuple[np.ndarray, bool] | None:
    from facebench.datamodules.formats import DatasetFormatError
    from facebench.datamodules.image_files import load_image

    source, detector, upsample = job
    try:
        image = load_image(source) if isinstance(source, str) else source
    except (DatasetFormatError, FileNotFoundError):
        return None
    return dlib68(image, detector, upsample)


class Dlib68Landmarks(LandmarkProvider):
    """dlib's 68-point predictor (see the module docstring); ``workers`` processes when many images
    are missing from the cache."""

    name = "dlib68"
    n_points = 68

    def __init__(self, detector: str = "hog", upsample: int = 1, workers: int | None = None):
        if detector not in ("hog", "image"):
            raise ValueError(f"landmark_provider dlib68: detector must be 'hog' or 'image', got {detector!r}")
        self.detector, self.upsample = detector, int(upsample)
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)

    def landmarks(self, table: Any, root: Path, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, dict[str, int]]:
        keys = table_keys(table, root)
        out = np.zeros((len(table), 68, 2), dtype=np.float32)
        stats = {"images": len(table), "faces_not_found": 0, "unreadable": 0}
        with FileCache(cache_dir, f"dlib68-{self.detector}-{self.upsample}") as cache:
            known = cache.get_many(keys)
            missing = [i for i, k in enumerate(keys) if k not in known]
            jobs = [(table.arrays[i] if table.arrays is not None else keys[i], self.detector, self.upsample) for i in missing]
            if self.workers > 1 and len(jobs) > 200:
                with ProcessPoolExecutor(self.workers) as pool:
                    results = list(pool.map(_dlib68_job, jobs, chunksize=32))
            else:
                results = [_dlib68_job(j) for j in jobs]
            for i, res in zip(missing, results):
                if res is not None:
                    cache.put(keys[i], res)
                    known[keys[i]] = res
        for i, key in enumerate(keys):
            res = known.get(key)
            if res is None:
                stats["unreadable"] += 1
                out[i] = np.nan
                continue
            out[i], found = res
            stats["faces_not_found"] += int(self.detector == "hog" and not found)
        return out, stats


PROVIDERS: dict[str, type[LandmarkProvider]] = {"dataset": DatasetLandmarks, "dlib68": Dlib68Landmarks}


def create_landmark_provider(spec: str | dict[str, Any]) -> LandmarkProvider:
    """``"dlib68"`` or ``{name: dlib68, detector: image, ...}`` -> a provider."""
    args = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = args.pop("name", None)
    if name not in PROVIDERS:
        raise ValueError(f"landmark_provider: unknown provider {name!r}; available: {', '.join(PROVIDERS)}")
    try:
        return PROVIDERS[name](**args)
    except TypeError as exc:
        raise ValueError(f"landmark_provider {name}: {exc}") from None


def fill_landmarks(tables: dict[str, SampleTable], files: DatasetFiles, spec: str | dict[str, Any]) -> dict[str, Any]:
    """Set ``landmarks`` of every table from the provider ``spec``; returns the provider's name and
    counts (the datamodule's ``report["landmarks"]``)."""
    provider = create_landmark_provider(spec)
    totals: dict[str, int] = {}
    for tab in tables.values():
        tab.landmarks, stats = provider.landmarks(tab, files.root, files.cache_dir)
        for k, v in stats.items():
            totals[k] = totals.get(k, 0) + v
    return {"provider": provider.name, **totals}
