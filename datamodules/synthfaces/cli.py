"""The ``facebench synth`` command: render SynthFaces and write it in one of the ``WRITERS`` layouts."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Sequence

from facebench.datamodules.synthfaces.config import SynthFacesConfig
from facebench.datamodules.synthfaces.generate import generate, take
from facebench.datamodules.synthfaces.writers import WRITERS


def build_parser(formats: Sequence[str] = tuple(WRITERS)) -> argparse.ArgumentParser:
    """Argument parser of ``facebench synth``."""
    ap = argparse.ArgumentParser(prog="facebench synth", description="Render the SynthFaces dataset to disk.")
    ap.add_argument("--format", choices=sorted(formats), default="celeba", help="on-disk layout (default: celeba)")
    ap.add_argument("--out", required=True, type=Path, help="output directory (must not exist or be empty)")
    ap.add_argument("--n", required=True, type=int, help="number of images; the last identity may be partial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64, help="aligned image size in pixels")
    ap.add_argument("--per-identity", type=int, default=10, help="images per identity")
    ap.add_argument("--raters", type=int, default=3, help="simulated raters per image")
    ap.add_argument("--bad-rater-fraction", type=float, default=0.0)
    ap.add_argument("--wild", action="store_true", help="also render in-the-wild canvases")
    ap.add_argument("--wild-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``facebench synth --format celeba --out DIR --n N --seed S [...]``.

    ``n_identities = ceil(N / per_identity)``; the rendered set is truncated to exactly ``N`` images
    (so the last identity may have fewer images).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:
        argv = argv[1:]
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.n < 1 or args.per_identity < 1:
        ap.error("--n and --per-identity must be >= 1")
    config = SynthFacesConfig(
        n_identities=math.ceil(args.n / args.per_identity), images_per_identity=args.per_identity,
        image_size=args.size, seed=args.seed, wild=args.wild, wild_size=args.wild_size, n_raters=args.raters,
        bad_rater_fraction=args.bad_rater_fraction, workers=args.workers)
    try:
        config.validate()
    except ValueError as exc:
        ap.error(str(exc))
    start = time.perf_counter()
    data = take(generate(config), args.n)
    path = WRITERS[args.format](data, args.out, overwrite=args.overwrite)
    print(f"synth: wrote {len(data)} images ({config.n_identities} identities, {args.size}px"
          f"{', wild ' + str(config.resolved_wild_size) + 'px' if args.wild else ''}, {args.raters} raters) "
          f"as {args.format} to {path} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
