"""SynthFaces: a procedural, deterministic face renderer (numpy + PIL only).

SynthFaces is the embedded dataset facebench trains on by default: no downloads, exact labels,
exact landmarks, identities, simulated crowd raters and an optional "in the wild" canvas.

Modules (each with one job; the model is described in their docstrings):

* ``priors`` - the tables: label set, attribute priors, nuisance ranges, rater error rates, colours;
* ``config`` - ``SynthFacesConfig`` (what to generate) and ``SynthFacesData`` (what comes out);
* ``sampling`` - identity and image traits, the visible labels, the simulated raters (the model);
* ``geometry`` - the canonical face frame, face curves, 68 + 5 landmarks, the pixel transform;
* ``draw`` - drawing one person (head, hair, body, accessories);
* ``render`` - canvases: background clutter (``render_clutter``), post-processing, ``render_single``;
* ``generate`` - ``generate`` on a process pool, ``take``, ``identity_split``;
* ``writers`` - ``WRITERS``: CelebA's layout and those of the other datasets facebench reads;
* ``cli`` - the ``facebench synth`` command;
* ``datamodule`` - the ``synthfaces`` datamodule (generated once into a cache, read as CelebA).
"""

from facebench.datamodules.synthfaces.config import SynthFacesConfig, SynthFacesData
from facebench.datamodules.synthfaces.datamodule import SynthFacesDataModule
from facebench.datamodules.synthfaces.generate import generate, identity_split, take
from facebench.datamodules.synthfaces.priors import (
    ATTRIBUTE_NAMES, BAD_RATER_ERROR, BLUR_RADIUS_RANGE, CLUTTER_SHAPES, FACIAL_HAIR_STYLES, NOISE_SIGMA_MAX,
    NOT_RENDERED, RATER_ERROR, SYNTHFACES_VERSION, TARGET_PREVALENCE,
)
from facebench.datamodules.synthfaces.render import clutter_canvas, render_clutter, render_single
from facebench.datamodules.synthfaces.generative_model import rater_error_rates
from facebench.datamodules.synthfaces.writers import WRITERS, atomic_output, write_celeba

__all__ = [
    "ATTRIBUTE_NAMES", "BAD_RATER_ERROR", "BLUR_RADIUS_RANGE", "CLUTTER_SHAPES", "FACIAL_HAIR_STYLES",
    "NOISE_SIGMA_MAX", "NOT_RENDERED", "RATER_ERROR", "SYNTHFACES_VERSION", "TARGET_PREVALENCE", "WRITERS",
    "SynthFacesConfig", "SynthFacesData", "SynthFacesDataModule", "atomic_output", "generate", "identity_split",
    "clutter_canvas", "rater_error_rates", "render_clutter", "render_single", "take", "write_celeba",
]
