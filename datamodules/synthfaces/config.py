"""What to generate (``SynthFacesConfig``) and what ``generate`` returns (``SynthFacesData``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from facebench.datamodules.synthfaces.priors import ATTRIBUTE_NAMES, WILD_CANVAS_FACTOR


@dataclass(frozen=True)
class SynthFacesConfig:
    """What to generate; the model is described in ``datamodules/synthfaces/generative_model.py``."""

    n_identities: int = 100
    images_per_identity: int = 10
    image_size: int = 64
    seed: int = 0
    wild: bool = False  # also render wild canvases
    wild_size: int | None = None  # default round(2.5 * image_size)
    n_raters: int = 3
    rater_error: Mapping[str, float] | None = None  # overrides of RATER_ERROR
    bad_rater_fraction: float = 0.0
    workers: int | None = None

    @property
    def n_images(self) -> int:
        return self.n_identities * self.images_per_identity

    @property
    def resolved_wild_size(self) -> int:
        return self.wild_size if self.wild_size is not None else round(WILD_CANVAS_FACTOR * self.image_size)

    def validate(self) -> None:
        """Raise ValueError on a nonsensical config."""
        if self.n_identities < 1 or self.images_per_identity < 1:
            raise ValueError("n_identities and images_per_identity must be >= 1")
        if self.image_size < 16:
            raise ValueError("image_size must be >= 16")
        if self.wild and self.resolved_wild_size < self.image_size:
            raise ValueError("wild_size must be >= image_size")
        if self.n_raters < 1:
            raise ValueError("n_raters must be >= 1")
        if not 0.0 <= self.bad_rater_fraction <= 1.0:
            raise ValueError("bad_rater_fraction must be in [0, 1]")
        for name, err in (self.rater_error or {}).items():
            if name not in ATTRIBUTE_NAMES:
                raise ValueError(f"rater_error: unknown attribute {name!r}")
            if not 0.0 <= err <= 1.0:
                raise ValueError(f"rater_error[{name!r}] must be in [0, 1]")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be >= 1")


@dataclass
class SynthFacesData:
    """A generated dataset; image ``i`` belongs to identity ``identity[i]``."""

    config: SynthFacesConfig
    attribute_names: tuple[str, ...]
    images: np.ndarray  # uint8 [N, S, S, 3]
    attributes: np.ndarray  # uint8 [N, A]
    identity: np.ndarray  # int64 [N]
    landmarks68: np.ndarray  # float32 [N, 68, 2] xy, pixel-index coordinates
    landmarks5: np.ndarray  # float32 [N, 5, 2] lefteye, righteye, nose, leftmouth, rightmouth
    rater_votes: np.ndarray  # uint8 [N, A, R]
    wild_images: np.ndarray | None = None  # uint8 [N, W, W, 3]
    wild_boxes: np.ndarray | None = None  # float32 [N, 4] x, y, w, h
    wild_landmarks68: np.ndarray | None = None
    wild_landmarks5: np.ndarray | None = None
    rotation: np.ndarray | None = None  # float32 [N] degrees, counter-clockwise on screen
    bad_raters: np.ndarray | None = field(default=None)  # int64 indices of the bad rater columns

    def __len__(self) -> int:
        return int(self.images.shape[0])
