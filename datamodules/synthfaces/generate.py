"""Generating a SynthFaces dataset in memory: ``generate`` (rendered in chunks on a process pool),
``take`` (the first N images) and ``identity_split`` (the seeded identity-disjoint partition).

Determinism and speed: identity traits depend on ``(seed, identity)`` and everything else of image
``i`` on ``(seed, i)``, so results are identical for any number of workers.  Images are rendered
3x supersampled (2x above 96 px) with PIL and downsampled with LANCZOS, in chunks on a process pool
(``workers``, default ``os.cpu_count()``) started with ``forkserver`` (``spawn`` where unavailable),
so it is safe to call from threaded or CUDA processes.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np

from facebench.datamodules.synthfaces.config import SynthFacesConfig, SynthFacesData
from facebench.datamodules.synthfaces.geometry import landmarks5_from_68
from facebench.datamodules.synthfaces.priors import ATTRIBUTE_NAMES, STREAM_SPLIT
from facebench.datamodules.synthfaces.render import render_one
from facebench.datamodules.synthfaces.generative_model import IdentityTraits, bad_rater_columns, sample_identity, simulate_raters

#: Images per chunk of work (min, max).
CHUNK_RANGE = (16, 256)


def _render_range(task: tuple[int, int, int, int, int, int | None]) -> dict[str, np.ndarray]:
    """Worker: render images [start, stop) and stack the results."""
    seed, start, stop, per_identity, size, wild_size = task
    cache: dict[int, IdentityTraits] = {}
    rows = []
    for i in range(start, stop):
        ident_id = i // per_identity
        if ident_id not in cache:
            cache[ident_id] = sample_identity(seed, ident_id)
        rows.append(render_one(seed, i, per_identity, size, wild_size, cache[ident_id]))
    out = {
        "images": np.stack([r["image"] for r in rows]),
        "attributes": np.stack([r["labels"] for r in rows]),
        "landmarks68": np.stack([r["lm68"] for r in rows]).astype(np.float32),
        "rotation": np.array([r["rotation"] for r in rows], np.float32),
    }
    if wild_size is not None:
        out["wild_images"] = np.stack([r["wild"] for r in rows])
        out["wild_boxes"] = np.stack([r["wild_box"] for r in rows]).astype(np.float32)
        out["wild_landmarks68"] = np.stack([r["wild_lm68"] for r in rows]).astype(np.float32)
    return out


def _spawn_safe() -> bool:
    """Spawned workers re-import ``__main__``; impossible when it is a script fed on stdin."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _pool_context() -> mp.context.BaseContext:
    """A start method that is safe in threaded / CUDA parents: forkserver (which forks workers from
    a clean server that imported this module once) where available, else spawn."""
    if "forkserver" in mp.get_all_start_methods() and __name__ != "__main__":
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context("spawn")


def generate(config: SynthFacesConfig) -> SynthFacesData:
    """Render the dataset described by ``config`` (deterministic for a seed, any worker count)."""
    config.validate()
    n = config.n_images
    wild_size = config.resolved_wild_size if config.wild else None
    workers = config.workers or os.cpu_count() or 1
    workers = max(1, min(workers, math.ceil(n / CHUNK_RANGE[0])))
    chunk = int(np.clip(math.ceil(n / (workers * 4)), *CHUNK_RANGE))
    tasks = [(config.seed, s, min(s + chunk, n), config.images_per_identity, config.image_size, wild_size)
             for s in range(0, n, chunk)]
    cat: dict[str, np.ndarray] = {}

    def place(task: tuple, part: dict[str, np.ndarray]) -> None:
        """Copy a chunk into the whole arrays as it arrives (the chunks never all exist at once:
        a full-size CelebA at 96 px is 5.6 GB of pixels, twice that with a final concatenation)."""
        for key, values in part.items():
            if key not in cat:
                cat[key] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
            cat[key][task[1]:task[2]] = values

    if workers == 1 or not _spawn_safe():
        for t in tasks:
            place(t, _render_range(t))
    else:
        with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
            for t, part in zip(tasks, pool.map(_render_range, tasks)):
                place(t, part)
    attributes = cat["attributes"]
    return SynthFacesData(
        config=config,
        attribute_names=ATTRIBUTE_NAMES,
        images=cat["images"],
        attributes=attributes,
        identity=np.arange(n, dtype=np.int64) // config.images_per_identity,
        landmarks68=cat["landmarks68"],
        landmarks5=landmarks5_from_68(cat["landmarks68"]).astype(np.float32),
        rater_votes=simulate_raters(config, attributes),
        wild_images=cat.get("wild_images"),
        wild_boxes=cat.get("wild_boxes"),
        wild_landmarks68=cat.get("wild_landmarks68"),
        wild_landmarks5=None if wild_size is None else landmarks5_from_68(cat["wild_landmarks68"]).astype(np.float32),
        rotation=cat["rotation"],
        bad_raters=bad_rater_columns(config),
    )


def take(data: SynthFacesData, n: int) -> SynthFacesData:
    """The first ``n`` images of ``data`` (the last identity may then have fewer images)."""
    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[:n]

    return SynthFacesData(
        config=data.config, attribute_names=data.attribute_names, images=data.images[:n],
        attributes=data.attributes[:n], identity=data.identity[:n], landmarks68=data.landmarks68[:n],
        landmarks5=data.landmarks5[:n], rater_votes=data.rater_votes[:n], wild_images=cut(data.wild_images),
        wild_boxes=cut(data.wild_boxes), wild_landmarks68=cut(data.wild_landmarks68),
        wild_landmarks5=cut(data.wild_landmarks5), rotation=cut(data.rotation), bad_raters=data.bad_raters,
    )


def identity_split(identity: np.ndarray, seed: int, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """Partition (0 train, 1 val, 2 test) per image; identities assigned by a seeded permutation."""
    ids = np.unique(identity)
    fr = np.asarray(split_fractions, float)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError("split_fractions must be three non-negative numbers")
    bounds = np.rint(np.cumsum(fr) / fr.sum() * len(ids)).astype(int)
    perm = np.random.default_rng([seed, STREAM_SPLIT]).permutation(ids)
    part_of = {}
    for part, (a, b) in enumerate(zip(np.concatenate([[0], bounds[:-1]]), bounds)):
        for i in perm[a:b]:
            part_of[int(i)] = part
    return np.array([part_of[int(i)] for i in identity], np.int64)
