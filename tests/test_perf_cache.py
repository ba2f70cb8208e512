"""The decoded-image cache (datamodules/cache.py), batched augmentation (datamodules/batch_augment.py)
and the GPU-path options of the base method: the cache gives bitwise the tensors of the uncached
path and is rebuilt when a source image changes; batch augmentation keeps landmarks on their pixels,
is deterministic from (seed, epoch, index) and draws what the worker path draws."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import facebench.datamodules.cache as cache_module
from facebench.datamodules.batch_augment import BatchAugment, collate_stored
from facebench.datamodules.celeba import CelebADataModule
from facebench.datamodules.synthfaces import SynthFacesConfig, generate, write_celeba
from facebench.core.tasks import TaskSpec
from facebench.datamodules.transforms import FLIP_5, FaceTransform, TransformConfig
from facebench.lightning_modules.base import FaceAttributeTask

AUGMENT = {"hflip": 0.5, "rotation": 25, "random_crop": True, "scale": (0.9, 1.1), "color_jitter": 0.2}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FACEBENCH_CACHE", str(tmp_path / "facebench_cache"))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    """SynthFaces in CelebA's layout, aligned images and in-the-wild canvases with face boxes."""
    data = generate(SynthFacesConfig(n_identities=6, images_per_identity=5, image_size=48, seed=3, wild=True, workers=1))
    return write_celeba(data, tmp_path_factory.mktemp("synth") / "celeba")


def datamodule(root: Path, cache_dir: Path, **kw) -> CelebADataModule:
    args = dict(num_workers=0, batch_size=8, verify_images="none", cache_dir=cache_dir, train_transforms=AUGMENT,
                transforms={"image_size": 40, "resize_to": 44}, split={"val_from_train": 0.0})
    args.update(kw)
    return CelebADataModule(root, **args)


def every_sample(dm: CelebADataModule, split: str, train: bool, epoch: int = 0) -> dict[str, torch.Tensor]:
    ds = dm.dataset(split, train=train)
    items = [ds[epoch * len(ds) + i] for i in range(len(ds))]
    return {k: torch.stack([s[k] for s in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}


@pytest.mark.parametrize("wild", [False, True], ids=["aligned", "wild_face_box"])
def test_cache_gives_the_tensors_of_the_uncached_path(synth_root, tmp_path, monkeypatch, wild):
    monkeypatch.setattr(cache_module, "BUILD_CHUNK", 8)   # several chunks: the parallel build with 2 processes
    kw = dict(in_the_wild=wild, crop="box" if wild else "image", box_margin=1.3)
    plain = datamodule(synth_root, tmp_path, image_cache=False, **kw)
    cached = datamodule(synth_root, tmp_path, image_cache={"enabled": True, "workers": 2}, **kw)
    cached.train_dataloader(), cached.val_dataloader(), cached.test_dataloader()   # the loaders build the caches
    assert len(cached.tables["val"]) == 0   # 6 identities split 80/10/10: no validation identity
    assert all(ds is not None for ds in cached._stored.values()) and len(cached._stored) == 2
    assert cached.dataset("train").stored is not None and plain.dataset("train").stored is None
    for split, train, epoch in (("train", True, 0), ("train", True, 3), ("test", False, 0)):
        a, b = every_sample(plain, split, train, epoch), every_sample(cached, split, train, epoch)
        assert a.keys() == b.keys() and {"image", "landmarks", "label"} <= set(a)
        for k in a:
            assert torch.equal(a[k], b[k]), (split, epoch, k)
    files = sorted(p.name for p in (tmp_path / "image_cache").glob("*.npy"))
    assert len(files) == 4   # pixels + plan for train and test (the empty val split has none)
    # stage 1 stores ceil(resize_to 44 * oversample 1.25) = 55 pixels on the short side (aligned 48 px images:
    # the source, never enlarged) or on the crop-box side, with crop_context 2 around the box (wild canvases)
    plan = cached.dataset("train").stored.plan
    assert plan[:, 4:].max() <= (2 * 55 + 1 if wild else 48) and (plan[:, 4:] > 0).all()


def test_auto_skips_small_splits_and_says_why(synth_root, tmp_path):
    dm = datamodule(synth_root, tmp_path, image_cache="auto")
    dm.train_dataloader()
    assert dm.dataset("train").stored is None
    assert any("min_images" in why for why in dm.report["image_cache"].values())


def test_cache_is_rebuilt_when_a_source_image_changes(synth_root, tmp_path):
    root = tmp_path / "copy"
    import shutil

    shutil.copytree(synth_root, root)
    dm = datamodule(root, tmp_path / "c", image_cache=True)
    dm.eval_dataloader("train")
    before = every_sample(dm, "train", train=False)["image"]
    old_files = set((tmp_path / "c" / "image_cache").glob("*.npy"))
    target = root / dm.tables["train"].paths[0]
    inverted = 255 - np.asarray(Image.open(target).convert("RGB"))
    Image.fromarray(inverted).save(target, quality=95)
    os.utime(target, ns=(1, 1_000_000_000))   # even with an old mtime: the size or mtime differs

    fresh = datamodule(root, tmp_path / "c", image_cache=True)
    fresh.eval_dataloader("train")
    after = every_sample(fresh, "train", train=False)["image"]
    uncached = every_sample(datamodule(root, tmp_path / "c", image_cache=False), "train", train=False)["image"]
    assert torch.equal(after, uncached)
    assert not torch.equal(after[0], before[0]) and torch.equal(after[1:], before[1:])
    new_files = set((tmp_path / "c" / "image_cache").glob("*.npy"))
    assert len(new_files) == len(old_files) and not (new_files & old_files)   # the stale cache is gone


def test_concurrent_builders_build_once(synth_root, tmp_path, monkeypatch):
    """Two builders at once (threads here; runs of a suite are processes, the lock is the same
    ``flock``): one builds, the other waits and opens the finished file."""
    import threading

    from facebench.datamodules.cache import ImageCache, StoredGeometry

    builds = []
    real = np.lib.format.open_memmap
    monkeypatch.setattr(np.lib.format, "open_memmap",
                        lambda *a, **k: (k.get("mode") == "w+" and builds.append(a[0])) or real(*a, **k))
    dm = datamodule(synth_root, tmp_path)
    dm.setup()
    paths = dm.tables["train"].paths
    caches = [ImageCache(tmp_path, "celeba", "train", synth_root, paths, StoredGeometry(side=40, channels=3)) for _ in range(2)]
    opened = [None, None]

    def build(k: int) -> None:
        opened[k] = caches[k].build(workers=1)

    threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and opened[0].pixels_path == opened[1].pixels_path
    assert np.array_equal(opened[0].pixels, opened[1].pixels)
    assert not list((tmp_path / "image_cache").glob(".*tmp*"))   # the temporary file was renamed into place


def test_an_image_that_fails_at_build_time_gives_the_blank_sample_of_the_uncached_path(synth_root, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    dm = datamodule(root, tmp_path / "c", image_cache=True)
    dm.setup()
    (root / dm.tables["train"].paths[2]).write_bytes(b"\xff\xd8\xff garbage")
    dm.eval_dataloader("train")
    assert not dm.dataset("train").stored.usable(2)
    with pytest.warns(UserWarning, match="could not be decoded when the image cache was built"):
        s = dm.dataset("train", train=False)[2]
    assert (s["label"] == -1).all() and float(s["image"].std()) == 0.0


# ------------------------------------------------------------------------------------------------
# batch augmentation
# ------------------------------------------------------------------------------------------------
def dots_batch(n: int = 12, side: int = 56) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Black canvases with five bright dots of different grey levels at the 5 landmarks."""
    rng = np.random.default_rng(0)
    levels = np.array([250, 200, 150, 110, 70])
    images = np.zeros((n, 1, side, side), dtype=np.uint8)
    lms = np.zeros((n, 5, 2), dtype=np.float32)
    for b in range(n):
        pts = rng.uniform(16, side - 16, size=(5, 2)).round()
        while np.min([np.hypot(*(p - q)) for i, p in enumerate(pts) for q in pts[i + 1:]]) < 9:
            pts = rng.uniform(16, side - 16, size=(5, 2)).round()
        for k, (x, y) in enumerate(pts.astype(int)):
            images[b, 0, y - 1:y + 2, x - 1:x + 2] = levels[k]   # a 3x3 dot
        lms[b] = pts
    batch = {"image": torch.from_numpy(images), "stored_size": torch.tensor([[side, side]] * n),
             "crop_box": torch.full((n, 4), float("nan"), dtype=torch.float64), "angle": torch.zeros(n, dtype=torch.float64),
             "epoch": torch.full((n,), 2), "index": torch.arange(n), "landmarks": torch.from_numpy(lms),
             "label": torch.zeros(n, 1, dtype=torch.long)}
    return batch, levels


def test_batch_augment_keeps_every_landmark_under_its_dot():
    cfg = TransformConfig(image_size=48, resize_to=48, channels=1, hflip=0.5, rotation=30, scale=(0.85, 1.15),
                          jitter=3, mean=(0.0,), std=(1.0,))
    batch, levels = dots_batch()
    aug = BatchAugment(FaceTransform(cfg, train=True), seed=5)
    _, flips, _ = aug.parameters(batch)
    assert 0 < flips.sum() < len(flips)           # both flipped and unflipped samples
    out = aug(dict(batch))
    img, lm = out["image"][:, 0], out["landmarks"]
    for b in range(len(img)):
        for k in range(5):
            x, y = lm[b, k].tolist()
            src = FLIP_5[k] if flips[b] else k      # a flip re-orders the indices (left eye <-> right eye)
            value = float(img[b, round(y), round(x)]) * 255
            assert np.argmin(np.abs(levels - value)) == src and abs(value - levels[src]) < 20, (b, k, flips[b], value)
    assert set(out) == {"image", "index", "landmarks", "label"}


def test_batch_augment_is_deterministic_from_seed_epoch_index():
    cfg = TransformConfig(image_size=40, channels=1, hflip=0.5, rotation=20, random_crop=True, resize_to=46,
                          color_jitter=0.3)
    batch, _ = dots_batch(6)
    aug = BatchAugment(FaceTransform(cfg, train=True), seed=1)
    a, b = aug(dict(batch)), aug(dict(batch))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["landmarks"], b["landmarks"])
    shuffled = {k: v.flip(0) for k, v in batch.items()}   # same samples, another batch order
    assert torch.equal(aug(shuffled)["image"], a["image"].flip(0))
    later = aug({**batch, "epoch": batch["epoch"] + 1})
    assert not torch.equal(later["image"], a["image"])
    other_seed = BatchAugment(FaceTransform(cfg, train=True), seed=2)(dict(batch))
    assert not torch.equal(other_seed["landmarks"], a["landmarks"])


def test_batch_path_draws_what_the_worker_path_draws(synth_root, tmp_path):
    """Same parameters as the worker path: equal landmarks and boxes, pixels within interpolation rounding."""
    out = {}
    for mode in ("worker", "batch"):
        dm = datamodule(synth_root, tmp_path, image_cache=True, augment_on=mode, in_the_wild=True, crop="box",
                        batch_size=24)
        batch = next(iter(dm.train_dataloader()))
        out[mode] = dm.on_after_batch_transfer(batch, 0)
    w, b = out["worker"], out["batch"]
    assert set(w) == set(b)
    assert torch.allclose(w["landmarks"], b["landmarks"], atol=1e-3) and torch.allclose(w["box"], b["box"], atol=1e-3)
    diff = (w["image"] - b["image"]).abs() * 0.5 * 255   # grey levels (std 0.5)
    assert diff.mean() < 1.0 and diff.max() < 12


def test_collate_pads_images_of_varied_sizes():
    samples = [{"image": torch.ones(3, 5, 7, dtype=torch.uint8), "index": torch.tensor(0)},
               {"image": torch.ones(3, 6, 4, dtype=torch.uint8), "index": torch.tensor(1)}]
    out = collate_stored(samples)
    assert out["image"].shape == (2, 3, 6, 7) and int(out["image"][0, :, 5].sum()) == 0 and int(out["image"][1, :, :, 4:].sum()) == 0


# ------------------------------------------------------------------------------------------------
# GPU-path options of the base method
# ------------------------------------------------------------------------------------------------
class _TinyConv(FaceAttributeTask):
    def configure_models(self) -> None:
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, self.task.n_logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(image).mean(dim=(2, 3)))


def test_channels_last_and_compile_options_keep_the_outputs():
    task = TaskSpec.binary_attributes(["A", "B"], name="t")
    eager = _TinyConv(task, input_size=16)
    fast = _TinyConv(task, input_size=16, channels_last=True, torch_compile={"backend": "eager"})
    fast.load_state_dict(eager.state_dict())
    fast.setup("fit")
    assert fast.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not eager.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(fast(x), eager(x), atol=1e-5)
    assert fast.flops_per_image() == eager.flops_per_image() > 0
    with pytest.raises(ValueError, match="torch_compile"):
        _TinyConv(task, torch_compile="yes")
