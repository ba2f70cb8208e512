"""Shared test fixtures: an isolated cache folder, one intra-op thread, the real-data location, a small
SynthFaces set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated datasets and per-image caches of the tests go to a temporary folder, never to
    the user's ``~/.cache/facebench`` (subprocesses inherit it through the environment)."""
    cache = tmp_path_factory.mktemp("facebench-cache")
    old = os.environ.get("FACEBENCH_CACHE")
    os.environ["FACEBENCH_CACHE"] = str(cache)
    os.environ.setdefault("WANDB_SILENT", "true")
    yield cache
    if old is None:
        os.environ.pop("FACEBENCH_CACHE", None)
    else:
        os.environ["FACEBENCH_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tests on tiny tensors: on a busy 2-core machine
    oversubscribed OpenMP threads make them many times slower (use: ``pytestmark =
    pytest.mark.usefixtures("one_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shared_data(name: str) -> Path:
    """A folder of ``../shared/data``; the calling test is skipped (with the reason) when absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="session")
def synth_celeba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SynthFaces set in CelebA's official layout (24 identities x 5 images, 32 px)."""
    from synth import synth_celeba_at

    return synth_celeba_at(tmp_path_factory.mktemp("synth") / "celeba", n_identities=24, images_per_identity=5,
                           image_size=32, seed=3)
