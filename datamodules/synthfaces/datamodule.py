"""The ``synthfaces`` datamodule: SynthFaces generated once into a cache folder in CelebA's layout
and read through the CelebA loader, plus the simulated raters' votes and the exact landmarks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from facebench.datamodules.base import register_datamodule
from facebench.datamodules.celeba import CelebADataModule
from facebench.core.tasks import TaskSpec
from facebench.datamodules.preprocess import default_cache_dir
from facebench.datamodules.synthfaces.config import SynthFacesConfig, SynthFacesData
from facebench.datamodules.synthfaces.generate import generate
from facebench.datamodules.synthfaces.geometry import landmarks5_from_68
from facebench.datamodules.synthfaces.priors import SYNTHFACES_VERSION
from facebench.datamodules.synthfaces.writers import write_celeba, write_lines
from facebench.datamodules.table import SampleTable


@register_datamodule("synthfaces")
class SynthFacesDataModule(CelebADataModule):
    """SynthFaces, the embedded dataset: rendered once into ``<cache>/synthfaces-<hash>/`` in CelebA's
    official layout (identity-disjoint 80/10/10 partition, 5-point landmarks, identities, wild
    canvases + face boxes when ``wild``) and read with the CelebA loader, plus the simulated raters'
    votes (``rater_votes.csv``, read with the multi-rater loader) so agreement metrics and the human
    ceiling work on it. Aligned images carry exact (sub-pixel) landmarks: the 5 CelebA points, or
    the 68 iBUG points with ``landmark_points: 68`` (LACNN's k = 68).

    The cache key is the generator config; generation is locked (``fcntl``) so concurrent runs of a
    suite generate once.
    """

    expected_files = {
        "(nothing)": ("generated on first use into <cache_dir>/synthfaces-<hash>/ in CelebA's layout "
                      "(list_attr_celeba.txt, list_eval_partition.txt, identity_CelebA.txt, "
                      "list_landmarks_align_celeba.txt, img_align_celeba/) plus rater_votes.csv; root: "
                      "write it there instead"),
    }

    def __init__(self, root: str | os.PathLike | None = None, *, n_identities: int = 300, images_per_identity: int = 10,
                 render_size: int = 64, synth_seed: int = 0, wild: bool = False, wild_size: int | None = None,
                 n_raters: int = 3,
                 rater_error: Mapping[str, float] | None = None, bad_rater_fraction: float = 0.0,
                 landmark_points: int = 5, generate_workers: int | None = None, **kwargs: Any):
        if landmark_points not in (5, 68):
            raise ValueError(f"synthfaces: landmark_points must be 5 or 68, got {landmark_points}")
        self.synth_config = SynthFacesConfig(
            n_identities=n_identities, images_per_identity=images_per_identity, image_size=render_size,
            seed=synth_seed, wild=wild or kwargs.get("in_the_wild", False), wild_size=wild_size, n_raters=n_raters,
            rater_error=dict(rater_error) if rater_error else None,
            bad_rater_fraction=bad_rater_fraction, workers=generate_workers)
        if root is None:
            key = {f.name: getattr(self.synth_config, f.name) for f in fields(SynthFacesConfig) if f.name != "workers"}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
            root = default_cache_dir() / f"synthfaces-{SYNTHFACES_VERSION}-{digest}"
        self.landmark_points = landmark_points
        super().__init__(root, **kwargs)

    def prepare_data(self) -> None:
        import fcntl

        assert self.root is not None
        if (self.root / "list_attr_celeba.txt").is_file():
            return
        self.root.parent.mkdir(parents=True, exist_ok=True)
        with open(self.root.parent / f".{self.root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (self.root / "list_attr_celeba.txt").is_file():
                t0 = time.time()
                data = generate(self.synth_config)
                write_celeba(data, self.root, overwrite=True)
                _write_landmarks68(data, self.root)
                print(f"[facebench] SynthFaces: {len(data)} images at {self.synth_config.image_size}px -> {self.root} "
                      f"({time.time() - t0:.0f}s)", flush=True)

    def load_tables(self) -> tuple[TaskSpec, dict[str, SampleTable]]:
        from facebench.datamodules.multirater import MultiRaterDataModule

        self.prepare_data()
        task, tables = super().load_tables()
        raters = MultiRaterDataModule(self.root, ratings_file="rater_votes.csv", metadata_file=None,
                                      image_dir=self.image_dir if not self.in_the_wild else "img_align_celeba",
                                      traits={n: {"classes": ["0", "1"]} for n in task.names}, rater_filter=False,
                                      duplicate_rows=self.duplicate_rows)
        _, vote_tables = raters.load_tables()
        votes = next(iter(vote_tables.values()))
        row_of = {Path(p).name: i for i, p in enumerate(votes.paths)}
        for tab in tables.values():
            rows = np.array([row_of[Path(p).name] for p in tab.paths], dtype=np.int64)
            tab.votes = {n: v[rows] for n, v in votes.votes.items()}
            if not self.in_the_wild:   # exact float landmarks (the CelebA file rounds them to pixels)
                lm68 = _read_landmarks68(self.root)[np.array([int(Path(p).stem) - 1 for p in tab.paths], dtype=np.int64)]
                tab.landmarks = lm68 if self.landmark_points == 68 else np.stack([landmarks5_from_68(x) for x in lm68])
        task = TaskSpec(tuple(dataclasses.replace(t, has_votes=True) for t in task.targets), name=self.registered_name)
        return task, tables


LANDMARKS68_FILE = "list_landmarks68_synthfaces.txt"


def _write_landmarks68(data: SynthFacesData, root: Path) -> None:
    """The exact 68 landmarks of the aligned images, one row per image (136 numbers, x y pairs)."""
    names = [f"{i + 1:06d}.jpg" for i in range(len(data))]
    lines = [str(len(data)), " ".join(f"{a}{k}" for k in range(68) for a in ("x", "y"))]
    lines += [name + " " + " ".join(f"{v:.2f}" for v in lm.reshape(-1)) for name, lm in zip(names, data.landmarks68)]
    write_lines(root / LANDMARKS68_FILE, lines)


def _read_landmarks68(root: Path) -> np.ndarray:
    from facebench.datamodules.formats import read_table_file

    _, _, values = read_table_file(root / LANDMARKS68_FILE, 136, count_line=True, header=(), parse=float,
                                   what="landmark coordinates", dtype=np.float64)
    return values.reshape(-1, 68, 2).astype(np.float32)
