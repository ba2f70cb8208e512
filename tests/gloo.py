"""DDP on CPU for tests: run a function on ``world`` gloo processes, get rank 0's return value."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch


def _worker(rank: int, world: int, init_file: str, fn: Callable, args: tuple, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        if rank == 0:
            torch.save(result, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_on_gloo(fn: Callable[..., Any], *args: Any, tmp_path: Path, world: int = 2) -> Any:
    """``fn(rank, world, *args)`` on ``world`` spawned processes joined by gloo; ``fn`` must be a
    module-level function (spawn pickles it by name)."""
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), fn, args, str(out)), nprocs=world, join=True)
    return torch.load(out, weights_only=False)
