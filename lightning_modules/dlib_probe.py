"""Identity-embedding probe: dlib's face-recognition ResNet as a frozen feature extractor and one
logistic regression per target on its 128-d descriptors (method ``dlib_probe``).

It asks the question of Baumgartner & Culpepper (sec. 1, 4.3) from the other end: how much of each
attribute survives in a representation trained only to tell identities apart (the penultimate
layer of an identity network, their "fc" branch point)? dlib's
``dlib_face_recognition_resnet_model_v1`` (a 29-layer ResNet trained with a metric loss on about 3
million faces of 7,485 identities; 99.38% on LFW) is shipped by the ``face_recognition_models``
package, with the 5-point ``shape_predictor`` it expects.

**Descriptor, per image** (dlib's documented pipeline): a face rectangle, the 5-point shape,
``dlib.get_face_chip`` (150x150, padding 0.25), ``compute_face_descriptor`` -> 128-d.

* ``face_box: hog`` (default): dlib's HOG frontal-face detector (``upsample`` times upsampled), the
  largest face; the whole image when none is found (counted as ``faces_not_found``);
* ``face_box: image``: the whole image is the face rectangle. On aligned CelebA crops this is much
  larger than the boxes the shape predictor was trained on: on 300 images of the CelebA subset,
  same-vs-different-identity AUROC of the descriptor distance was 0.60 with ``image`` against 0.99
  with ``hog``, hence the default, even for aligned data.

**Original images, not tensors.** The descriptor needs the original pixels, not the resized and
normalised network input. Every batch carries ``index``; the probe asks the trainer for the
dataset of the loader being run (``trainer.train_dataloader`` / ``val_dataloaders`` /
``test_dataloaders``: a :class:`~facebench.datamodules.base.FaceDataset` with its ``table`` and ``root``),
embeds that whole table once (``FaceDataset.read``: the original file, or the in-memory array of
datasets stored as pixels) and then indexes it. No file list enters the hyper-parameters and
nothing depends on the transform.

**Cache.** Descriptors are cached per image on disk with
:class:`~facebench.datamodules.preprocess.FileCache` (SQLite; keyed by absolute path and content SHA-1, so an
edited image is recomputed; in-memory images by content), in a namespace naming the model files'
SHA-1 and every option; under ``cache_dir`` (default ``$FACEBENCH_CACHE/dlib_embeddings`` or
``~/.cache/facebench/dlib_embeddings``).

**Probe.** ``sklearn.linear_model.LogisticRegression`` on standardised descriptors, fitted on the
training split at the end of the (single) training epoch (a
:class:`~facebench.lightning_modules.closed_form.ClosedFormTask`): one binary model per binary target and
per class of a multi-label target, one multinomial model per multi-class / ordinal target. The
standardisation is folded into the coefficients, stored as buffers ``weight [n_logits, 128]`` and
``bias [n_logits]``; logits are ``descriptor @ weight.T + bias``. A column whose training labels
hold one class predicts its prior; a class absent from training gets a logit of -20.
"""

from __future__ import annotations

import contextlib
import functools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facebench.datamodules.landmarks import dlib_model_path
from facebench.datamodules.preprocess import FileCache, default_cache_dir, sha1_file, table_keys
from facebench.core.tasks import TARGET_KINDS
from facebench.lightning_modules.closed_form import ClosedFormTask
from facebench.lightning_modules.registry import register_method

DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_DIM = 128
ABSENT_CLASS_LOGIT = -20.0


@dataclass(frozen=True)
class DescriptorConfig:
    """How a descriptor is computed (every field is part of the cache namespace)."""

    face_box: str = "hog"
    upsample: int = 1
    num_jitters: int = 0
    chip_size: int = 150
    chip_padding: float = 0.25

    def __post_init__(self) -> None:
        if self.face_box not in ("hog", "image"):
            raise ValueError(f"dlib_probe: face_box must be 'hog' or 'image', got {self.face_box!r}")

    @property
    def namespace(self) -> str:
        return "dlib-descriptor-" + "-".join([_model_digest(), *map(str, astuple(self))])


@functools.lru_cache(maxsize=1)
def _model_digest() -> str:
    return "-".join(sha1_file(dlib_model_path(name))[:12] for name in (DESCRIPTOR_MODEL, SHAPE_MODEL))


_MODELS: dict[str, Any] = {}


def _dlib_models() -> tuple[Any, Any, Any]:
    """(HOG detector, 5-point shape predictor, descriptor network), loaded once per process."""
    import dlib

    if not _MODELS:
        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["shape"] = dlib.shape_predictor(str(dlib_model_path(SHAPE_MODEL)))
        _MODELS["net"] = dlib.face_recognition_model_v1(str(dlib_model_path(DESCRIPTOR_MODEL)))
    return _MODELS["detector"], _MODELS["shape"], _MODELS["net"]


def face_descriptor(image: np.ndarray, cfg: DescriptorConfig = DescriptorConfig()) -> tuple[np.ndarray, bool]:
    """128-d descriptor ``float32`` of the (largest) face of a uint8 HxW(x1|x3) image and whether a
    face was detected (always ``False`` with ``face_box="image"``)."""
    import dlib

    detector, shape_predictor, net = _dlib_models()
    img = np.asarray(image, dtype=np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    img = np.ascontiguousarray(np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[:, :, :3])
    h, w = img.shape[:2]
    rect, found = dlib.rectangle(0, 0, w - 1, h - 1), False
    if cfg.face_box == "hog":
        faces = detector(img, cfg.upsample)
        if len(faces):
            rect, found = max(faces, key=lambda r: r.width() * r.height()), True
    chip = dlib.get_face_chip(img, shape_predictor(img, rect), size=cfg.chip_size, padding=cfg.chip_padding)
    return np.asarray(net.compute_face_descriptor(chip, cfg.num_jitters), dtype=np.float32), found


def _descriptor_job(job: tuple[Any, DescriptorConfig]) -> tuple[np.ndarray, bool] | None:
    from facebench.datamodules.formats import DatasetFormatError
    from facebench.datamodules.image_files import load_image

    source, cfg = job
    try:
        image = load_image(source) if isinstance(source, str) else source
    except (DatasetFormatError, FileNotFoundError):
        return None
    return face_descriptor(image, cfg)


def embed_table(table: Any, root: str | Path, cfg: DescriptorConfig = DescriptorConfig(),
                cache_dir: str | os.PathLike | None = None, workers: int = 1) -> tuple[np.ndarray, dict[str, int]]:
    """Descriptors ``float32 [N, 128]`` of a :class:`~facebench.datamodules.base.SampleTable`'s images (NaN
    rows for unreadable images), cached per image; ``workers`` processes for the missing ones.
    Returns the descriptors and counts: ``images``, ``cached``, ``computed``, ``faces_not_found``,
    ``unreadable``."""
    keys = table_keys(table, Path(root).absolute())
    out = np.full((len(keys), DESCRIPTOR_DIM), np.nan, dtype=np.float32)
    stats = {"images": len(keys), "cached": 0, "computed": 0, "faces_not_found": 0, "unreadable": 0}
    with FileCache(cache_dir or default_cache_dir() / "dlib_embeddings", cfg.namespace) as cache:
        known = cache.get_many(keys)
        missing = [i for i, k in enumerate(keys) if k not in known]
        stats["cached"] = len(keys) - len(missing)
        jobs = [(table.arrays[i] if table.arrays is not None else keys[i], cfg) for i in missing]
        parallel = workers > 1 and len(jobs) > 50
        with ProcessPoolExecutor(workers) if parallel else contextlib.nullcontext() as pool:
            results = pool.map(_descriptor_job, jobs, chunksize=16) if parallel else map(_descriptor_job, jobs)
            for i, res in zip(missing, results):   # stored as they arrive: an interrupted run keeps its work
                if res is not None:
                    cache.put(keys[i], res)
                    known[keys[i]] = res
                    stats["computed"] += 1
    for i, key in enumerate(keys):
        if key not in known:
            stats["unreadable"] += 1
            continue
        out[i], found = known[key]
        stats["faces_not_found"] += int(cfg.face_box == "hog" and not found)
    return out, stats


@register_method("dlib_probe")
class DlibEmbeddingProbe(ClosedFormTask):
    """dlib face descriptors + logistic regression per target (see the module docstring).

    Args:
        face_box: ``"hog"`` (detector, default) or ``"image"`` (the whole image is the face).
        upsample: HOG detector upsampling; num_jitters: dlib's test-time jittering (0 = off).
        C, class_weight, max_iter: ``LogisticRegression`` options (``class_weight: balanced``
            weighs the classes inversely to their frequency).
        cache_dir: descriptor cache folder; workers: processes computing missing descriptors.
    """

    paper = ("none: a probe of dlib's face-recognition embedding (the question of Baumgartner & Culpepper "
             "2016, sec. 1, 4.3)")
    task_kinds = frozenset(TARGET_KINDS)
    input_size = 64          # the loaders' tensors are not used: the descriptor reads the original image

    def __init__(self, task: Any, *, face_box: str = "hog", upsample: int = 1, num_jitters: int = 0, C: float = 1.0,
                 class_weight: str | None = None, max_iter: int = 2000, cache_dir: str | None = None,
                 workers: int | None = None, **kwargs: Any):
        self.descriptor_cfg = DescriptorConfig(face_box=face_box, upsample=upsample, num_jitters=num_jitters)
        self.C, self.class_weight, self.max_iter = C, class_weight, max_iter
        self.cache_dir = cache_dir or os.path.join(default_cache_dir(), "dlib_embeddings")
        self.workers = workers if workers is not None else min(2, os.cpu_count() or 1)
        super().__init__(task, **kwargs)
        self._tables: dict[int, tuple[Any, np.ndarray]] = {}
        self.embedding_stats: dict[str, int] = {}

    def configure_models(self) -> None:
        self.register_buffer("weight", torch.zeros(self.task.n_logits, DESCRIPTOR_DIM))
        self.register_buffer("bias", torch.zeros(self.task.n_logits))

    def parameter_count(self, trainable_only: bool = False) -> int:
        """The probe's coefficients (buffers; dlib's network is outside torch and not counted)."""
        return 0 if trainable_only else self.weight.numel() + self.bias.numel()

    # -- descriptors ---------------------------------------------------------------------------------
    def _current_dataset(self, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer.training:
            loaders = trainer.train_dataloader
        elif trainer.testing:
            loaders = trainer.test_dataloaders
        elif trainer.predicting:
            loaders = trainer.predict_dataloaders
        else:
            loaders = trainer.val_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        if not all(hasattr(dataset, a) for a in ("table", "root")):
            raise TypeError(f"dlib_probe reads original images through the loader's FaceDataset (table + root); "
                            f"got {type(dataset).__name__}")
        return dataset

    def table_descriptors(self, table: Any, root: str | Path) -> np.ndarray:
        """Descriptors of a whole table (computed or read from the cache once per run)."""
        if id(table) not in self._tables:
            emb, stats = embed_table(table, root, self.descriptor_cfg, self.cache_dir, self.workers)
            self._tables[id(table)] = (table, emb)
            for k, v in stats.items():
                self.embedding_stats[k] = self.embedding_stats.get(k, 0) + v
        return self._tables[id(table)][1]

    def descriptors(self, batch: dict[str, Any], dataloader_idx: int = 0) -> torch.Tensor:
        """``[B, 128]`` descriptors of a batch (``batch["embedding"]`` when given)."""
        if "embedding" in batch:
            return batch["embedding"].float()
        ds = self._current_dataset(dataloader_idx)
        emb = self.table_descriptors(ds.table, ds.root)[batch["index"].cpu().numpy()]
        return torch.from_numpy(np.nan_to_num(emb, nan=0.0)).to(self.weight.device)

    def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
        batch = super().example_batch(batch_size)
        batch["embedding"] = torch.randn(batch_size, DESCRIPTOR_DIM, device=self.device)
        return batch

    # -- probe ---------------------------------------------------------------------------------------
    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding @ self.weight.T + self.bias

    def logits(self, batch: dict[str, Any]) -> torch.Tensor:
        return self(self.descriptors(batch))

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "embedding" not in batch:
            batch = {**batch, "embedding": self.descriptors(batch, dataloader_idx)}
        super().test_step(batch, batch_idx, dataloader_idx)

    def collect(self, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The batch's descriptors and labels."""
        return self.descriptors(batch).cpu().numpy(), batch["label"].cpu().numpy()

    def fit(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """The logistic regressions on the epoch's descriptors (:func:`fit_linear_probe`)."""
        x = np.concatenate([p[0] for p in parts]).astype(np.float64)
        y = np.concatenate([p[1] for p in parts])
        weight, bias = fit_linear_probe(self.task, x, y, C=self.C, class_weight=self.class_weight, max_iter=self.max_iter)
        self.weight.copy_(torch.from_numpy(weight).to(self.weight))
        self.bias.copy_(torch.from_numpy(bias).to(self.bias))

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for k, v in self.embedding_stats.items():
            self.log(f"dlib/{k}", float(v))


def _logistic(x: np.ndarray, y: np.ndarray, C: float, class_weight: str | None, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter)
    clf.fit(x, y)
    return clf.coef_, clf.intercept_


def fit_linear_probe(task: Any, x: np.ndarray, labels: np.ndarray, *, C: float = 1.0, class_weight: str | None = None,
                     max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regressions of every target on standardised features ``x [N, D]`` (labels in the
    task's label layout, ``-1`` ignored), as one ``(weight [n_logits, D], bias [n_logits])`` pair in
    the task's logit layout acting on the raw features."""
    mean, std = x.mean(0), x.std(0) + 1e-8
    z = (x - mean) / std
    w = np.zeros((task.n_logits, x.shape[1]))
    b = np.zeros(task.n_logits)
    for t, ls, ys in zip(task.targets, task.logit_slices, task.label_slices):
        if t.is_sigmoid:
            for col, lab in zip(range(ls.start, ls.stop), range(ys.start, ys.stop)):
                keep = labels[:, lab] >= 0
                yc = labels[keep, lab]
                if len(np.unique(yc)) < 2:
                    prior = float(np.clip(yc.mean() if len(yc) else 0.5, 1e-6, 1 - 1e-6))
                    b[col] = np.log(prior / (1 - prior))
                    continue
                coef, icpt = _logistic(z[keep], yc, C, class_weight, max_iter)
                w[col], b[col] = coef[0], icpt[0]
        else:
            keep = labels[:, ys.start] >= 0
            yc = labels[keep, ys.start]
            present = np.unique(yc)
            b[ls] = ABSENT_CLASS_LOGIT
            if len(present) == 1:
                b[ls.start + int(present[0])] = 0.0
                continue
            coef, icpt = _logistic(z[keep], yc, C, class_weight, max_iter)
            if len(present) == 2:   # sklearn keeps one binary model: logits (0, s) give the same softmax
                coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
            for k, c in enumerate(present):
                w[ls.start + int(c)], b[ls.start + int(c)] = coef[k], icpt[k]
    # fold the standardisation in: w.(x - mean)/std + b = (w/std).x + (b - w.mean/std)
    w_raw = w / std[None, :]
    return w_raw.astype(np.float32), (b - w_raw @ mean).astype(np.float32)
