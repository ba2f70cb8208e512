"""Shared helpers of the performance scripts in ``benchmarks/perf/`` (not tests: they print figures).

Data: the real CelebA subset at ``../shared/data/celeba_subset`` beside the repository when present,
else SynthFaces written in CelebA's layout under ``/tmp`` (generated once). ``scaled_copy`` makes a
CelebA-layout folder with every image listed ``k`` times (symbolic links, nothing copied) for the
1x / 2x / 4x epoch-time figure.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
SHARED_CELEBA = REPO.parent / "shared" / "data" / "celeba_subset"
SCRATCH = Path(os.environ.get("FACEBENCH_PERF_DIR", "/tmp/facebench_perf"))
#: The CPU-sized MCNN geometry of benchmarks/suites/celeba.yaml: 96x96 crops of 108 px (256/227).
MCNN_INPUT = {"image_size": 96, "resize_to": 108}


def celeba_root(synth_identities: int = 100) -> tuple[Path, str]:
    """(dataset folder, description): the real CelebA subset, else SynthFaces in CelebA layout."""
    if (SHARED_CELEBA / "list_attr_celeba.txt").is_file():
        return SHARED_CELEBA, f"real CelebA subset ({SHARED_CELEBA})"
    out = SCRATCH / f"synthfaces_celeba_{synth_identities}"
    if not (out / "list_attr_celeba.txt").is_file():
        from facebench.datamodules.synthfaces import SynthFacesConfig, generate, write_celeba

        data = generate(SynthFacesConfig(n_identities=synth_identities, images_per_identity=30, image_size=128, seed=0))
        write_celeba(data, out, overwrite=True)
    return out, f"SynthFaces in CelebA layout ({out}; the real subset is absent)"


def scaled_copy(root: Path, factor: int) -> Path:
    """A CelebA-layout folder listing every image of ``root`` ``factor`` times (train split only
    repeated; links, not copies). ``factor == 1`` returns ``root``."""
    if factor == 1:
        return root
    out = SCRATCH / f"{root.name}_x{factor}"
    if (out / "list_attr_celeba.txt").is_file():
        return out
    from facebench.datamodules.celeba import parse_attributes
    from facebench.datamodules.formats import read_table_file

    tmp = SCRATCH / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "img_align_celeba").mkdir(parents=True)
    names, files, labels = parse_attributes(root / "list_attr_celeba.txt")
    _, pfiles, parts = read_table_file(root / "list_eval_partition.txt", 1, count_line=False, header=None)
    part = dict(zip(pfiles, parts[:, 0].tolist()))
    ident: dict[str, int] = {}
    if (root / "identity_CelebA.txt").is_file():
        _, ifiles, ids = read_table_file(root / "identity_CelebA.txt", 1, count_line=False, header=None)
        ident = dict(zip(ifiles, ids[:, 0].tolist()))
    rows, prow, irow = [], [], []
    for copy in range(factor):
        for f, lab in zip(files, labels):
            if copy and part[f] != 0:
                continue   # only the training split grows
            name = f if copy == 0 else f"{Path(f).stem}_{copy}{Path(f).suffix}"
            os.symlink((root / "img_align_celeba" / f).resolve(), tmp / "img_align_celeba" / name)
            rows.append(name + " " + " ".join("1" if v == 1 else "-1" for v in lab))
            prow.append(f"{name} {part[f]}")
            irow.append(f"{name} {ident.get(f, 0)}")
    (tmp / "list_attr_celeba.txt").write_text("\n".join([str(len(rows)), " ".join(names)] + rows) + "\n")
    (tmp / "list_eval_partition.txt").write_text("\n".join(prow) + "\n")
    (tmp / "identity_CelebA.txt").write_text("\n".join(irow) + "\n")
    tmp.rename(out)
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on (the load average matters on a shared machine)."""
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "load_average": tuple(round(v, 2) for v in os.getloadavg())}


def peak_rss_mb() -> dict[str, float]:
    """Peak resident set size (``resource.getrusage``) of this process and of its largest child, MiB."""
    scale = 1 / 1024 if platform.system() == "Linux" else 1 / 1024 / 1024   # KiB on Linux, bytes on macOS
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def header(title: str, extra: dict[str, Any] | None = None) -> None:
    print(f"== {title}")
    for k, v in {**machine(), **(extra or {})}.items():
        print(f"   {k}: {v}")
