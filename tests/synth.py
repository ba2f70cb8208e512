"""SynthFaces sets for tests, written in CelebA's official layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def synth_celeba_at(root: Path, split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), **config: Any) -> Path:
    """Generate SynthFaces (``SynthFacesConfig(**config)``, one worker) and write it at ``root``."""
    from facebench.datamodules.synthfaces import SynthFacesConfig, generate, write_celeba

    return write_celeba(generate(SynthFacesConfig(workers=1, **config)), root, split_fractions=split_fractions)
