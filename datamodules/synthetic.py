"""SynthFaces: a procedural, deterministic face renderer (numpy + PIL only).

SynthFaces is the embedded dataset facebench trains on by default: no downloads, exact labels,
exact landmarks, identities, simulated crowd raters and an optional "in the wild" canvas.

Generative model
----------------
Every image ``i`` belongs to identity ``i // K`` (``K = images_per_identity``).  Sampling is
hierarchical and uses only tables defined at module level:

1. **Identity** (RNG seeded by ``(seed, identity)``): ``Male ~ Bern(P_MALE)``; ``Young | Male``
   (``P_YOUNG``); then, per (sex, age) cell, the identity traits of ``IDENTITY_PRIORS``: pale skin,
   chubby (forces a round face; ``Double_Chin`` is likelier when chubby), oval face, big / pointy
   nose, big lips, bushy eyebrows, narrow eyes, bags under the eyes, bald, receding hairline, long
   hair, a "makeup habit" (females only) that drives arched eyebrows and heavy makeup.  Hair colour
   ``HAIR_COLOUR_PRIORS`` (gray almost only when not young), hair texture ``HAIR_TEXTURE_PRIORS``
   (straight / wavy / other = curly when long, cropped when short), a habitual facial-hair style
   (males, ``FACIAL_HAIR_STYLES``) and accessory habits.  Continuous shape parameters (face width,
   jaw, eye spacing, iris colour, mouth width, hair volume, skin tone...) make identities distinct.
2. **Image** (RNG seeded by ``(seed, image index)``, conditioned on the identity): ``Smiling`` per
   cell; ``Mouth_Slightly_Open`` and ``High_Cheekbones`` given ``Smiling`` (``SMILE_CONDITIONALS``);
   ``Heavy_Makeup`` given the makeup habit, ``Wearing_Lipstick`` and ``Rosy_Cheeks`` given
   ``Heavy_Makeup`` (``MAKEUP_CONDITIONALS``); habit traits (eyeglasses, hat, bangs, earrings,
   necklace, necktie, facial-hair style) repeat the identity's habit with probability
   ``HABIT_PERSISTENCE`` and are otherwise redrawn from the cell prior (so marginals equal the
   prior); stubble and sideburns given the beard style; blur; nuisances (in-plane rotation
   ``U(-40, 40)`` degrees, scale/shift jitter, lighting gradient, sensor noise, background clutter).
3. **Labels** are what is visible: beards/makeup follow sex (beards only on males, makeup almost only
   on females), ``No_Beard = not (Goatee or Mustache or full beard)`` (stubble is not a beard), a hat
   hides bangs, baldness and the hairline, a necktie excludes a necklace.  Gray hair, baldness and a
   receding hairline come with age.  Prevalences approximate CelebA's (see ``TARGET_PREVALENCE``).

What is rendered
----------------
Face outline (oval / round / long, wider when chubby, squarer jaw for males), skin tone (incl.
pale), ears, neck with double chin, shoulders and shirt (jacket + white shirt + tie, scoop neckline
+ necklace), eyes (sclera, iris, pupil, lids; narrow eyes; eye bags; eye shadow + eyeliner),
eyebrows (thickness, arch), nose (size, pointy vs round tip, nostrils), lips (size, smile, open
mouth with teeth, lipstick), cheeks (highlights for high cheekbones, blush for rosy cheeks), age
(forehead lines, nasolabial folds, crow's feet), stubble, full beard, goatee, moustache, sideburns,
hair (colour, straight / wavy / curly / cropped strands, long or short, bangs, receding M-shaped
hairline, bald with a side fringe), hats (beanie, fedora, cap), glasses (incl. sunglasses),
earrings (studs, hoops, drops); then Gaussian blur, brightness/contrast gradient and noise.
``Attractive`` is not rendered and therefore absent from ``ATTRIBUTE_NAMES``.

Geometry and landmarks
----------------------
Everything is drawn from polygons in a canonical face frame (x right, y down, the jaw's centre
line at ``JAW_CENTER_Y``; a face is ~1.7 units wide) mapped by one similarity transform
(rotation, scale, shift) to supersampled pixels, then downsampled with LANCZOS.  The 68 iBUG-300W
landmarks and the 5 CelebA landmarks are computed from the same curves and mapped by the same
transform, in *pixel-index* coordinates of the output: (0, 0) is the centre of the top-left
pixel.  Rotation is stored per image (degrees, positive = counter-clockwise on screen).

Wild mode renders the same person (same pose, same traits) at a random scale (face box 20-60 % of
the canvas width) and position on a bigger cluttered canvas and records the face box (the
axis-aligned box of the jaw, brows and a forehead margin) and landmarks in canvas coordinates.

Raters
------
Every image gets ``n_raters`` votes per attribute; rater ``r`` flips the true label with the
attribute's error rate (``RATER_ERROR``, overridable), except "bad raters" (a seeded choice of
``round(bad_rater_fraction * n_raters)`` rater columns, at least one when the fraction is positive)
who err with ``BAD_RATER_ERROR`` on every attribute.  Rater ``r`` is the same person on every image.

Determinism and speed: identity traits depend on ``(seed, identity)`` and everything else of image
``i`` on ``(seed, i)``, so results are identical for any number of workers.  Images are rendered
3x supersampled (2x above 96 px) with PIL and downsampled with LANCZOS, in chunks on a process pool
(``workers``, default ``os.cpu_count()``) started with ``forkserver`` (``spawn`` where unavailable),
so it is safe to call from threaded or CUDA processes.

Public helpers besides ``generate``: ``render_single`` (one image, optionally with image-level
traits overridden: counterfactual pairs), ``take`` (first N images), ``identity_split`` (the seeded
identity-disjoint partition used by ``write_celeba``), ``rater_error_rates`` and ``main`` (the
``facebench synth`` command).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from datamodules.base import SampleTable, register_datamodule
from datamodules.celeba import CELEBA_ATTRIBUTES, CelebADataModule
from datamodules.preprocess import default_cache_dir
from datamodules.core.tasks import TaskSpec

# ---------------------------------------------------------------------------------------------
# Label set
# ---------------------------------------------------------------------------------------------

#: CelebA attributes that SynthFaces does not render (so they are absent from the label set).
NOT_RENDERED: tuple[str, ...] = ("Attractive",)

#: Rendered CelebA attributes, in CelebA's official order.
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a for a in CELEBA_ATTRIBUTES if a not in NOT_RENDERED)

#: Approximate CelebA prevalences the priors below are tuned to reproduce (for documentation and tests).
TARGET_PREVALENCE: dict[str, float] = {
    "Male": 0.42, "Smiling": 0.48, "Mouth_Slightly_Open": 0.48, "High_Cheekbones": 0.45,
    "Young": 0.77, "No_Beard": 0.83, "Heavy_Makeup": 0.38, "Wearing_Lipstick": 0.47,
    "Wavy_Hair": 0.32, "Black_Hair": 0.24, "Brown_Hair": 0.20, "Straight_Hair": 0.21,
    "Big_Nose": 0.23, "Wearing_Earrings": 0.19, "Bangs": 0.15, "Blond_Hair": 0.15,
    "Bushy_Eyebrows": 0.14, "5_o_Clock_Shadow": 0.11, "Narrow_Eyes": 0.12, "Wearing_Necklace": 0.12,
    "Oval_Face": 0.28, "Pointy_Nose": 0.28, "Arched_Eyebrows": 0.27, "Big_Lips": 0.24,
    "Bags_Under_Eyes": 0.20, "Wearing_Necktie": 0.07, "Eyeglasses": 0.065, "Rosy_Cheeks": 0.066,
    "Goatee": 0.063, "Chubby": 0.058, "Sideburns": 0.056, "Blurry": 0.05, "Wearing_Hat": 0.048,
    "Gray_Hair": 0.042, "Pale_Skin": 0.043, "Mustache": 0.041, "Receding_Hairline": 0.08,
    "Bald": 0.022, "Double_Chin": 0.047,
}

# ---------------------------------------------------------------------------------------------
# Priors.  Cell tables are (female young, female old, male young, male old).
# ---------------------------------------------------------------------------------------------

#: Bump when the renderer's output changes, so cached datasets are regenerated.
SYNTHFACES_VERSION = "v1"

P_MALE = 0.42
P_YOUNG = {False: 0.85, True: 0.66}  # keyed by Male

#: Identity-level Bernoulli priors per (sex, age) cell.
IDENTITY_PRIORS: dict[str, tuple[float, float, float, float]] = {
    "Pale_Skin": (0.05, 0.04, 0.04, 0.02),
    "Chubby": (0.012, 0.03, 0.07, 0.22),
    "Oval_Face": (0.44, 0.25, 0.17, 0.10),  # given not chubby
    "Big_Nose": (0.08, 0.16, 0.36, 0.55),
    "Pointy_Nose": (0.38, 0.38, 0.15, 0.13),
    "Big_Lips": (0.30, 0.22, 0.17, 0.13),
    "Bushy_Eyebrows": (0.07, 0.01, 0.32, 0.13),
    "Narrow_Eyes": (0.11, 0.12, 0.12, 0.15),
    "Bags_Under_Eyes": (0.06, 0.18, 0.32, 0.50),
    "Bald": (0.0, 0.0, 0.012, 0.13),
    "Receding_Hairline": (0.035, 0.035, 0.075, 0.38),  # given not bald
    "Long_Hair": (0.92, 0.85, 0.05, 0.03),
    "Makeup_Habit": (0.75, 0.60, 0.0, 0.0),
    "Double_Chin": (0.006, 0.04, 0.01, 0.09),  # given not chubby
}
P_DOUBLE_CHIN_IF_CHUBBY = 0.45
#: P(Arched_Eyebrows) for females with / without the makeup habit, and for males.
ARCHED_EYEBROWS = {"habit": 0.55, "no_habit": 0.15, "male": 0.05}

#: Hair colour distribution per cell over HAIR_COLOURS.
HAIR_COLOURS: tuple[str, ...] = ("black", "blond", "brown", "gray", "other")
HAIR_COLOUR_PRIORS: tuple[tuple[float, ...], ...] = (
    (0.22, 0.23, 0.25, 0.002, 0.298),
    (0.08, 0.30, 0.15, 0.16, 0.31),
    (0.36, 0.03, 0.17, 0.003, 0.437),
    (0.18, 0.02, 0.10, 0.19, 0.51),
)
#: Hair texture per sex (female, male) over ("straight", "wavy", "other"); "other" is curly for
#: long hair and a cropped cut for short hair.
HAIR_TEXTURE_PRIORS: dict[bool, tuple[float, float, float]] = {
    False: (0.19, 0.44, 0.37),
    True: (0.25, 0.17, 0.58),
}

#: Image-level Bernoulli priors per (sex, age) cell (habit traits and plain image traits).
IMAGE_PRIORS: dict[str, tuple[float, float, float, float]] = {
    "Smiling": (0.53, 0.65, 0.38, 0.38),
    "Eyeglasses": (0.015, 0.04, 0.11, 0.17),
    "Wearing_Hat": (0.026, 0.02, 0.095, 0.075),
    "Bangs": (0.21, 0.38, 0.11, 0.035),
    "Wearing_Earrings": (0.28, 0.45, 0.02, 0.03),
    "Wearing_Necklace": (0.16, 0.32, 0.03, 0.03),
    "Wearing_Necktie": (0.0, 0.0, 0.12, 0.25),
    "Blurry": (0.045, 0.05, 0.055, 0.06),
}
#: Traits an identity tends to repeat across its images (habit) and the repeat probability.
HABIT_TRAITS: tuple[str, ...] = (
    "Eyeglasses", "Wearing_Hat", "Bangs", "Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie",
)
HABIT_PERSISTENCE = 0.7

#: P(trait | Smiling), P(trait | not Smiling).
SMILE_CONDITIONALS: dict[str, tuple[float, float]] = {
    "Mouth_Slightly_Open": (0.78, 0.21),
    "High_Cheekbones": (0.82, 0.10),
}
#: Makeup model: P(Heavy_Makeup) for females with / without the habit, males;
#: P(Wearing_Lipstick | Heavy_Makeup), | no makeup female, | male; same for Rosy_Cheeks.
MAKEUP_CONDITIONALS: dict[str, tuple[float, float, float]] = {
    "Heavy_Makeup": (0.88, 0.03, 0.003),
    "Wearing_Lipstick": (0.98, 0.45, 0.005),
    "Rosy_Cheeks": (0.15, 0.05, 0.002),
}
#: Male facial-hair styles (the identity habit is drawn from this, images repeat it or redraw).
FACIAL_HAIR_STYLES: dict[str, float] = {
    "clean": 0.37, "stubble": 0.24, "full_beard": 0.22, "goatee": 0.07, "mustache": 0.02,
    "goatee_mustache": 0.08,
}
P_STUBBLE_WITH_GOATEE_OR_MUSTACHE = 0.2
P_SIDEBURNS: dict[str, float] = {"full_beard": 0.45, "other": 0.05}

#: Nuisance ranges.
MAX_ROTATION_DEG = 40.0
SCALE_JITTER = 0.05
SHIFT_JITTER = 0.03  # fraction of the image size
BRIGHTNESS_RANGE = (0.75, 1.15)
CONTRAST_RANGE = (0.8, 1.15)
GRADIENT_MAX = 0.35
NOISE_SIGMA_MAX = 4.0
BLUR_RADIUS_RANGE = (1.1, 1.9)  # output pixels at 64 px, scaled with the face size
SMILE_LIFT = (0.09, 0.13)  # mouth-corner lift when smiling (canonical units)
SMILE_WIDEN, SMILE_SQUINT = 1.15, 0.75  # mouth width and eye opening factors when smiling
NEUTRAL_LIFT = (-0.012, -0.03)  # young, old (negative = corners down)
MOUTH_GAP_SMILING = (0.08, 0.13)
MOUTH_GAP_NEUTRAL = (0.07, 0.11)
P_SUNGLASSES = 0.15
CLUTTER_SHAPES = (4, 12)  # per aligned-size canvas area
WILD_FACE_FRACTION = (0.2, 0.6)
WILD_CANVAS_FACTOR = 2.5

# ---------------------------------------------------------------------------------------------
# Raters
# ---------------------------------------------------------------------------------------------

#: Per-attribute probability that a (good) rater flips the true label, by subjectivity.
RATER_ERROR: dict[str, float] = {
    "Male": 0.005, "Eyeglasses": 0.005, "Wearing_Hat": 0.008, "Bald": 0.02, "Wearing_Necktie": 0.02,
    "Blond_Hair": 0.04, "Black_Hair": 0.06, "Gray_Hair": 0.04, "Brown_Hair": 0.12, "Bangs": 0.04,
    "Smiling": 0.04, "Mouth_Slightly_Open": 0.07, "No_Beard": 0.04, "Goatee": 0.06, "Mustache": 0.07,
    "5_o_Clock_Shadow": 0.12, "Sideburns": 0.08, "Heavy_Makeup": 0.08, "Wearing_Lipstick": 0.06,
    "Wearing_Earrings": 0.05, "Wearing_Necklace": 0.06, "Wavy_Hair": 0.15, "Straight_Hair": 0.18,
    "Young": 0.10, "Blurry": 0.10, "Pale_Skin": 0.12, "Rosy_Cheeks": 0.15, "Chubby": 0.15,
    "Double_Chin": 0.15, "Bags_Under_Eyes": 0.20, "High_Cheekbones": 0.15, "Receding_Hairline": 0.18,
    "Bushy_Eyebrows": 0.18, "Arched_Eyebrows": 0.22, "Narrow_Eyes": 0.25, "Big_Nose": 0.25,
    "Big_Lips": 0.27, "Oval_Face": 0.27, "Pointy_Nose": 0.27,
}
BAD_RATER_ERROR = 0.45

# ---------------------------------------------------------------------------------------------
# Colours and geometry (canonical face frame)
# ---------------------------------------------------------------------------------------------

SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (238, 192, 165), (224, 172, 140), (198, 144, 110), (170, 118, 85), (141, 94, 66), (110, 72, 50),
    (84, 56, 40),
)
SKIN_TONE_WEIGHTS = (0.2, 0.22, 0.2, 0.15, 0.1, 0.08, 0.05)
PALE_SKIN = (250, 228, 220)
HAIR_RGB: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((26, 22, 22), (38, 30, 28), (20, 20, 26)),
    "blond": ((228, 192, 120), (238, 208, 145), (210, 172, 100)),
    "brown": ((104, 66, 40), (122, 80, 50), (92, 58, 36)),
    "gray": ((172, 172, 172), (198, 198, 196), (148, 148, 152)),
    "other": ((150, 58, 30), (188, 92, 44), (128, 44, 38)),
}
IRIS_RGB = ((70, 45, 30), (110, 70, 40), (80, 120, 170), (90, 120, 80), (120, 100, 60), (110, 120, 130))
LIPSTICK_RGB = ((200, 20, 40), (225, 70, 115), (150, 20, 60), (235, 85, 70))
EYESHADOW_RGB = ((120, 60, 150), (60, 100, 190), (90, 60, 50), (210, 90, 150), (60, 130, 90))
ACCESSORY_RGB = ((220, 40, 40), (40, 70, 200), (30, 150, 70), (240, 200, 40), (150, 40, 160),
                 (240, 120, 30), (30, 170, 180), (240, 240, 240), (30, 30, 30), (120, 80, 50))
JEWEL_RGB = ((235, 195, 60), (215, 215, 225), (250, 250, 240), (220, 40, 60), (40, 200, 210))
GLASSES_RGB = ((20, 20, 20), (90, 55, 30), (150, 150, 160), (170, 30, 40), (30, 40, 120))
JACKET_RGB = ((30, 30, 35), (40, 45, 80), (70, 70, 75), (80, 60, 45))
TEETH_RGB = (242, 240, 230)
MOUTH_RGB = (70, 22, 28)
SCLERA_RGB = (240, 238, 234)
ROSY_RGB, ROSY_ALPHA = (235, 70, 95), 150
NATURAL_LIP_TINT = np.array([0.88, 0.56, 0.6])
STRAND_WIDTH, STRAND_ALPHA = 0.04, 210
DARK_HAIR_LUMINANCE = 60.0  # hair strand lines (canonical width ~0.75 px at 64 px)
WRINKLE_WIDTH, WRINKLE_ALPHA = 0.045, 210
GLASSES_FRAME = 0.055
LUMA = np.array([0.299, 0.587, 0.114])
FACIAL_HAIR_DARKEN = 0.65
MIN_FACIAL_HAIR_CONTRAST = 45.0  # luminance levels between beard and skin
STUBBLE_DARKEN, STUBBLE_ALPHA = 0.35, 150

#: Face shapes: half-width, jaw height, jaw superellipse power, lower-face taper.
FACE_SHAPES: dict[str, tuple[float, float, float, float]] = {
    "oval": (0.80, 1.17, 2.0, 0.22),
    "round": (0.90, 1.02, 2.6, 0.0),
    "long": (0.74, 1.32, 2.9, 0.04),
}
#: Trait-controlled shape ranges (canonical units), keyed by whether the trait is present.
EYE_HEIGHT = {True: (0.026, 0.033), False: (0.075, 0.09)}  # Narrow_Eyes -> eye half-height
BROW_THICKNESS = {"bushy": (0.10, 0.12), "male": (0.05, 0.06), "female": (0.04, 0.05)}
BROW_ARCH = {True: 0.11, False: 0.022}  # Arched_Eyebrows -> height of the arch
NOSE_WIDTH = {True: (0.19, 0.22), False: (0.11, 0.135)}  # Big_Nose -> half-width at the nostrils
NOSE_EXTRA_LENGTH = {True: (0.05, 0.07), False: (-0.01, 0.02)}  # Big_Nose
LIP_THICKNESS = {True: ((0.075, 0.09), (0.10, 0.12)), False: ((0.03, 0.042), (0.045, 0.06))}  # Big_Lips: upper, lower
HAIR_VOLUME = {"long": (0.12, 0.22), "cropped": (0.035, 0.06), "short": (0.08, 0.15)}
#: Identity shape ranges (eye spacing is a fraction of the face half-width; widths scale with the face).
EYE_SPACING = (0.37, 0.43)
EYE_WIDTH = (0.14, 0.16)
BROW_RAISE = (-0.02, 0.03)
MOUTH_WIDTH = (0.24, 0.28)
MALE_JAW_POWER = 0.6
CHUBBY_WIDTH = 0.12
JAW_CENTER_Y = -0.15
FOREHEAD_HEIGHT = 1.05
EYE_Y = -0.20
BROW_OFFSET = 0.17
HAIRLINE_Y = -0.78
NECK_BASE_Y = 1.30
HAIR_END_Y = 1.60
VIEW_PIVOT = (0.0, 0.15)  # canonical point placed at the centre of the aligned crop
VIEW_SPAN = 3.4  # canonical units across the aligned crop
FACE_BOX_FOREHEAD = 0.30  # forehead margin above the brows included in the wild face box
STREAM_IDENTITY, STREAM_IMAGE, STREAM_WILD, STREAM_RATERS, STREAM_BAD_RATERS, STREAM_SPLIT = range(1, 7)
STREAM_NOISE = 7
CHUNK_RANGE = (16, 256)


def _cell(male: bool, young: bool) -> int:
    return 2 * int(male) + (0 if young else 1)


# ---------------------------------------------------------------------------------------------
# Config and data containers (public API)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthFacesConfig:
    """What to generate; see the module docstring for the model."""

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


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


@dataclass
class _Identity:
    male: bool
    young: bool
    traits: dict[str, bool]  # identity-level CelebA traits (+ Long_Hair, Makeup_Habit)
    habits: dict[str, bool]
    beard_habit: str
    skin: np.ndarray
    shape: str
    width: float
    jaw_height: float
    jaw_power: float
    taper: float
    eye_spacing: float
    eye_width: float
    eye_height: float
    iris: tuple[int, int, int]
    brow_thickness: float
    brow_raise: float
    nose_width: float
    nose_length: float
    mouth_width: float
    lip_upper: float
    lip_lower: float
    hair_colour: str
    hair_rgb: np.ndarray
    hair_texture: str  # straight / wavy / curly / cropped / none
    hair_volume: float
    hair_seed: int
    wrinkles: float


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    if weights is None:
        return options[int(rng.integers(len(options)))]
    w = np.asarray(weights, float)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def _sample_identity(seed: int, identity: int) -> _Identity:
    """Draw all identity-level traits from the identity's own RNG."""
    rng = np.random.default_rng([seed, STREAM_IDENTITY, identity])
    male = bool(rng.random() < P_MALE)
    young = bool(rng.random() < P_YOUNG[male])
    cell = _cell(male, young)
    t = {name: bool(rng.random() < probs[cell]) for name, probs in IDENTITY_PRIORS.items()}
    if t["Chubby"]:
        t["Oval_Face"] = False
        t["Double_Chin"] = bool(rng.random() < P_DOUBLE_CHIN_IF_CHUBBY)
    if t["Bald"]:
        t["Receding_Hairline"] = False
    if male:
        t["Arched_Eyebrows"] = bool(rng.random() < ARCHED_EYEBROWS["male"])
    else:
        key = "habit" if t["Makeup_Habit"] else "no_habit"
        t["Arched_Eyebrows"] = bool(rng.random() < ARCHED_EYEBROWS[key])
    habits = {name: bool(rng.random() < IMAGE_PRIORS[name][cell]) for name in HABIT_TRAITS}
    beard_habit = _pick(rng, list(FACIAL_HAIR_STYLES), list(FACIAL_HAIR_STYLES.values())) if male else "clean"

    if t["Pale_Skin"]:
        skin = np.array(PALE_SKIN, float) + rng.uniform(-5, 4, 3)
    else:
        skin = np.array(_pick(rng, SKIN_TONES, SKIN_TONE_WEIGHTS), float) + rng.uniform(-8, 8, 3)
    if t["Chubby"]:
        shape = "round"
    elif t["Oval_Face"]:
        shape = "oval"
    else:
        shape = _pick(rng, ("round", "long"))
    fw, jh, power, taper = FACE_SHAPES[shape]
    fw *= rng.uniform(0.95, 1.05) * (1.03 if male else 1.0)
    jh *= rng.uniform(0.96, 1.04)
    if male:
        power += MALE_JAW_POWER
    if t["Chubby"]:
        fw += CHUBBY_WIDTH
        power += 0.4
        taper = 0.0

    eye_h = rng.uniform(*EYE_HEIGHT[t["Narrow_Eyes"]])
    brow_t = rng.uniform(*BROW_THICKNESS["bushy" if t["Bushy_Eyebrows"] else ("male" if male else "female")])
    nose_w = rng.uniform(*NOSE_WIDTH[t["Big_Nose"]])
    nose_l = rng.uniform(*NOSE_EXTRA_LENGTH[t["Big_Nose"]])
    lips = tuple(rng.uniform(*r) for r in LIP_THICKNESS[t["Big_Lips"]])

    if t["Bald"]:
        texture = "none"
    else:
        texture = _pick(rng, ("straight", "wavy", "other"), HAIR_TEXTURE_PRIORS[male])
        if texture == "other":
            texture = "curly" if t["Long_Hair"] else "cropped"
    hair_colour = _pick(rng, HAIR_COLOURS, HAIR_COLOUR_PRIORS[cell])
    hair_rgb = np.array(_pick(rng, HAIR_RGB[hair_colour]), float) + rng.uniform(-6, 6, 3)
    volume = rng.uniform(*HAIR_VOLUME["long" if t["Long_Hair"] else ("cropped" if texture == "cropped" else "short")])
    return _Identity(
        male=male, young=young, traits=t, habits=habits, beard_habit=beard_habit, skin=skin,
        shape=shape, width=fw, jaw_height=jh, jaw_power=power, taper=taper,
        eye_spacing=fw * rng.uniform(*EYE_SPACING), eye_width=rng.uniform(*EYE_WIDTH) * fw / 0.8,
        eye_height=eye_h, iris=_pick(rng, IRIS_RGB), brow_thickness=brow_t,
        brow_raise=rng.uniform(*BROW_RAISE), nose_width=nose_w, nose_length=nose_l,
        mouth_width=rng.uniform(*MOUTH_WIDTH) * fw / 0.8, lip_upper=lips[0], lip_lower=lips[1],
        hair_colour=hair_colour, hair_rgb=hair_rgb, hair_texture=texture, hair_volume=volume,
        hair_seed=int(rng.integers(2**31)), wrinkles=0.0 if young else rng.uniform(0.7, 1.0),
    )


@dataclass
class _Image:
    labels: dict[str, bool]
    beard: str
    stubble: bool
    sideburns: bool
    rotation: float
    scale: float
    shift: np.ndarray
    brightness: float
    contrast: float
    gradient: tuple[float, float]
    noise: float
    blur: float
    smile: float
    gap: float
    style: dict


def _sample_image(seed: int, index: int, ident: _Identity, overrides: Mapping[str, object] | None = None) -> _Image:
    """Draw the image-level traits of image ``index`` conditioned on its identity.

    Every random number is drawn unconditionally (in a fixed order), so ``overrides`` (image-level
    label -> bool, or ``beard`` / ``stubble`` / ``sideburns``) give counterfactual renders that
    differ from the original only in the overridden traits.
    """
    rng = np.random.default_rng([seed, STREAM_IMAGE, index])
    cell = _cell(ident.male, ident.young)
    lab: dict[str, bool] = {}
    for name in HABIT_TRAITS:
        fresh = bool(rng.random() < IMAGE_PRIORS[name][cell])
        lab[name] = ident.habits[name] if rng.random() < HABIT_PERSISTENCE else fresh
    lab["Smiling"] = bool(rng.random() < IMAGE_PRIORS["Smiling"][cell])
    for name, (p_yes, p_no) in SMILE_CONDITIONALS.items():
        lab[name] = bool(rng.random() < (p_yes if lab["Smiling"] else p_no))
    lab["Blurry"] = bool(rng.random() < IMAGE_PRIORS["Blurry"][cell])
    col = 2 if ident.male else (0 if ident.traits["Makeup_Habit"] else 1)
    lab["Heavy_Makeup"] = bool(rng.random() < MAKEUP_CONDITIONALS["Heavy_Makeup"][col])
    col = 2 if ident.male else (0 if lab["Heavy_Makeup"] else 1)
    for name in ("Wearing_Lipstick", "Rosy_Cheeks"):
        lab[name] = bool(rng.random() < MAKEUP_CONDITIONALS[name][col])

    redraw = _pick(rng, list(FACIAL_HAIR_STYLES), list(FACIAL_HAIR_STYLES.values()))
    keep_habit = rng.random() < HABIT_PERSISTENCE
    beard = (ident.beard_habit if keep_habit else redraw) if ident.male else "clean"
    u_stubble, u_sideburns = rng.random(), rng.random()
    stubble = beard == "stubble" or (
        beard in ("goatee", "mustache", "goatee_mustache") and u_stubble < P_STUBBLE_WITH_GOATEE_OR_MUSTACHE)
    sideburns = ident.male and not ident.traits["Long_Hair"] and bool(
        u_sideburns < P_SIDEBURNS["full_beard" if beard == "full_beard" else "other"])
    if lab["Wearing_Necktie"]:
        lab["Wearing_Necklace"] = False
    if ident.traits["Bald"] or ident.traits["Receding_Hairline"] or lab["Wearing_Hat"]:
        lab["Bangs"] = False

    smile_amount = rng.uniform(*SMILE_LIFT)
    gap_smiling, gap_neutral = rng.uniform(*MOUTH_GAP_SMILING), rng.uniform(*MOUTH_GAP_NEUTRAL)
    blur = float(rng.uniform(*BLUR_RADIUS_RANGE))
    style = {
        "glasses": (_pick(rng, ("rect", "round", "wide")), _pick(rng, GLASSES_RGB), bool(rng.random() < P_SUNGLASSES)),
        "hat": (_pick(rng, ("beanie", "fedora", "cap")), _pick(rng, ACCESSORY_RGB)),
        "shirt": _pick(rng, ACCESSORY_RGB), "jacket": _pick(rng, JACKET_RGB), "tie": _pick(rng, ACCESSORY_RGB[:7]),
        "earring": (_pick(rng, ("stud", "hoop", "drop")), _pick(rng, JEWEL_RGB)),
        "necklace": (_pick(rng, ("beads", "chain")), _pick(rng, JEWEL_RGB)),
        "lipstick": _pick(rng, LIPSTICK_RGB), "eyeshadow": _pick(rng, EYESHADOW_RGB),
        "collar": bool(rng.random() < 0.5), "clutter_seed": int(rng.integers(2**31)),
    }
    nuisance = dict(
        rotation=float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        scale=float(rng.uniform(1 - SCALE_JITTER, 1 + SCALE_JITTER)),
        shift=rng.uniform(-SHIFT_JITTER, SHIFT_JITTER, 2),
        brightness=float(rng.uniform(*BRIGHTNESS_RANGE)), contrast=float(rng.uniform(*CONTRAST_RANGE)),
        gradient=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, GRADIENT_MAX))),
        noise=float(rng.uniform(0, NOISE_SIGMA_MAX)),
    )
    for key, value in (overrides or {}).items():
        if key == "beard":
            beard = str(value)
        elif key == "stubble":
            stubble = bool(value)
        elif key == "sideburns":
            sideburns = bool(value)
        elif key in lab:
            lab[key] = bool(value)
        else:
            raise KeyError(f"cannot override {key!r}")

    if lab["Smiling"]:
        smile = smile_amount
    else:
        smile = NEUTRAL_LIFT[0] if ident.young else NEUTRAL_LIFT[1]
    gap = (gap_smiling if lab["Smiling"] else gap_neutral) if lab["Mouth_Slightly_Open"] else 0.0
    return _Image(
        labels=lab, beard=beard, stubble=bool(stubble and ident.male), sideburns=bool(sideburns),
        blur=blur if lab["Blurry"] else 0.0, smile=float(smile), gap=float(gap), style=style, **nuisance,
    )


def _labels(ident: _Identity, img: _Image) -> np.ndarray:
    """The visible CelebA labels of one image, in ATTRIBUTE_NAMES order."""
    t, lab = ident.traits, img.labels
    hat = lab["Wearing_Hat"]
    beard = img.beard
    v = {
        "5_o_Clock_Shadow": img.stubble,
        "Arched_Eyebrows": t["Arched_Eyebrows"],
        "Bags_Under_Eyes": t["Bags_Under_Eyes"],
        "Bald": t["Bald"] and not hat,
        "Bangs": lab["Bangs"],
        "Big_Lips": t["Big_Lips"],
        "Big_Nose": t["Big_Nose"],
        "Black_Hair": ident.hair_colour == "black",
        "Blond_Hair": ident.hair_colour == "blond",
        "Blurry": lab["Blurry"],
        "Brown_Hair": ident.hair_colour == "brown",
        "Bushy_Eyebrows": t["Bushy_Eyebrows"],
        "Chubby": t["Chubby"],
        "Double_Chin": t["Double_Chin"],
        "Eyeglasses": lab["Eyeglasses"],
        "Goatee": beard in ("goatee", "goatee_mustache"),
        "Gray_Hair": ident.hair_colour == "gray",
        "Heavy_Makeup": lab["Heavy_Makeup"],
        "High_Cheekbones": lab["High_Cheekbones"],
        "Male": ident.male,
        "Mouth_Slightly_Open": lab["Mouth_Slightly_Open"],
        "Mustache": beard in ("mustache", "goatee_mustache"),
        "Narrow_Eyes": t["Narrow_Eyes"],
        "No_Beard": beard not in ("goatee", "mustache", "goatee_mustache", "full_beard"),
        "Oval_Face": t["Oval_Face"],
        "Pale_Skin": t["Pale_Skin"],
        "Pointy_Nose": t["Pointy_Nose"],
        "Receding_Hairline": t["Receding_Hairline"] and not hat,
        "Rosy_Cheeks": lab["Rosy_Cheeks"],
        "Sideburns": img.sideburns,
        "Smiling": lab["Smiling"],
        "Straight_Hair": ident.hair_texture == "straight",
        "Wavy_Hair": ident.hair_texture == "wavy",
        "Wearing_Earrings": lab["Wearing_Earrings"],
        "Wearing_Hat": hat,
        "Wearing_Lipstick": lab["Wearing_Lipstick"],
        "Wearing_Necklace": lab["Wearing_Necklace"],
        "Wearing_Necktie": lab["Wearing_Necktie"],
        "Young": ident.young,
    }
    return np.array([v[name] for name in ATTRIBUTE_NAMES], np.uint8)


# ---------------------------------------------------------------------------------------------
# Geometry (canonical frame)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Geometry:
    lm68: np.ndarray
    outline: np.ndarray
    jaw: Callable[[np.ndarray], np.ndarray]  # alpha in [0, pi] -> points
    face_x: Callable[[np.ndarray], np.ndarray]  # half-width of the face at height y
    chin_y: float
    eyes: list[dict]
    brows: list[tuple[np.ndarray, np.ndarray]]
    nose_tip: float
    nose_base: float
    mouth_y: float
    mouth: dict[str, np.ndarray]
    neck_w: float


def _mouth_curves(u: np.ndarray, my: float, mw: float, lift: float, gap: float, ut: float,
                  lt: float) -> dict[str, np.ndarray]:
    """Outer/inner lip curves at parameters u in [-1, 1] (inner curves span 0.85 of the width)."""
    env = np.clip(1 - u ** 2, 0, 1)
    line = my - lift * u ** 2
    cupid = 1 - 0.35 * np.exp(-(u / 0.18) ** 2)
    ui = 0.85 * u
    line_i = my - lift * ui ** 2
    return {
        "upper_outer": np.stack([mw * u, line - gap / 2 * env - ut * np.sqrt(env) * cupid], -1),
        "lower_outer": np.stack([mw * u, line + gap / 2 * env + lt * env ** 0.7], -1),
        "upper_inner": np.stack([mw * ui, line_i - gap / 2 * env], -1),
        "lower_inner": np.stack([mw * ui, line_i + gap / 2 * env], -1),
    }


def _geometry(ident: _Identity, img: _Image) -> _Geometry:
    """Canonical face geometry and its 68 landmarks."""
    fw, jh, n, taper = ident.width, ident.jaw_height, ident.jaw_power, ident.taper

    def jaw(alpha: np.ndarray) -> np.ndarray:
        c, s = np.cos(alpha), np.sin(alpha)
        x = fw * np.sign(c) * np.abs(c) ** (2 / n) * (1 - taper * s ** 2)
        y = JAW_CENTER_Y + jh * np.abs(s) ** (2 / n)
        return np.stack([x, y], -1)

    dense = jaw(np.linspace(0, np.pi / 2, 64))

    def face_x(y: np.ndarray) -> np.ndarray:
        return np.interp(y, dense[:, 1], dense[:, 0], left=fw, right=0.0)

    top = np.linspace(np.pi, 2 * np.pi, 40)
    c, s = np.cos(top), np.sin(top)
    forehead = np.stack([fw * 0.97 * np.sign(c) * np.abs(c) ** (2 / 2.3),
                         JAW_CENTER_Y - FOREHEAD_HEIGHT * np.abs(s) ** (2 / 2.3)], -1)
    outline = np.concatenate([jaw(np.linspace(0, np.pi, 48)), forehead[1:-1]])
    chin_y = JAW_CENTER_Y + jh

    lm = np.zeros((68, 2))
    lm[0:17] = jaw(np.pi - np.arange(17) * np.pi / 16)

    # eyes: image-left eye (subject's right) first
    squint = SMILE_SQUINT if img.labels["Smiling"] else 1.0
    eh, ew, es = ident.eye_height * squint, ident.eye_width, ident.eye_spacing
    eyes = []
    for k, side in enumerate((-1, 1)):
        cx = side * es

        def lids(u: np.ndarray, cx: float = cx, side: int = side) -> tuple[np.ndarray, np.ndarray]:
            tilt = -0.012 * (-u * side)
            env = np.clip(1 - u ** 2, 0, 1)
            return EYE_Y + tilt - eh * env ** 0.75, EYE_Y + tilt + eh * 0.7 * env ** 0.9

        ul = np.array([-1, -1 / 3, 1 / 3, 1])
        up, lo = lids(ul)
        pts = [(cx + ew * ul[0], up[0]), (cx + ew * ul[1], up[1]), (cx + ew * ul[2], up[2]),
               (cx + ew * ul[3], up[3]), (cx + ew * ul[2], lo[2]), (cx + ew * ul[1], lo[1])]
        lm[36 + 6 * k: 42 + 6 * k] = pts
        eyes.append({"cx": cx, "ew": ew, "eh": eh, "lids": lids, "side": side})

    # brows: t = 0 at the inner end, 1 at the outer end
    tt = np.linspace(0, 1, 15)
    if ident.traits["Arched_Eyebrows"]:
        peak = 0.6
        arch = BROW_ARCH[True]
        h = np.where(tt < peak, arch * np.clip(tt / peak, 0, 1) ** 0.8,
                     arch * (1 - 1.15 * np.clip((tt - peak) / (1 - peak), 0, 1) ** 1.3))
    else:
        h = BROW_ARCH[False] * np.sin(np.pi * tt) + 0.005 * tt
    thick = ident.brow_thickness * (1 - 0.45 * tt)
    brows = []
    base = EYE_Y - BROW_OFFSET - ident.brow_raise
    for k, side in enumerate((-1, 1)):
        x = side * (es - ew * 0.85 + tt * (2 * ew + 0.05))
        y = base - h + 0.02 * (1 - tt)
        centre = np.stack([x, y], -1)
        brows.append((centre, thick))
        idx = np.round(np.linspace(0, 14, 5)).astype(int)
        pts = centre[idx]
        lm[17 + 5 * k: 22 + 5 * k] = pts[::-1] if side < 0 else pts

    # nose
    tip = JAW_CENTER_Y + 0.33 * jh + ident.nose_length
    nb = tip + 0.05 + (0.02 if ident.traits["Big_Nose"] else 0.0)
    nw = ident.nose_width
    lm[27:31] = np.stack([np.zeros(4), np.linspace(EYE_Y - 0.03, tip, 4)], -1)
    lm[31:36] = [(-nw, nb - 0.02), (-nw * 0.5, nb + 0.01), (0, nb + 0.02), (nw * 0.5, nb + 0.01), (nw, nb - 0.02)]

    # mouth
    my = JAW_CENTER_Y + 0.56 * jh + (0.02 if ident.traits["Big_Nose"] else 0.0)
    mw = ident.mouth_width * (SMILE_WIDEN if img.labels["Smiling"] else 1.0)
    args = (my, mw, img.smile, img.gap, ident.lip_upper, ident.lip_lower)
    mouth = _mouth_curves(np.linspace(-1, 1, 25), *args)
    uo = np.array([-1, -0.66, -0.3, 0, 0.3, 0.66, 1])
    c_o = _mouth_curves(uo, *args)
    lm[48:55] = c_o["upper_outer"]
    lm[55:60] = c_o["lower_outer"][[5, 4, 3, 2, 1]]
    ui = np.array([-1, -0.45, 0, 0.45, 1])
    c_i = _mouth_curves(ui, *args)
    lm[60:65] = c_i["upper_inner"]
    lm[65:68] = c_i["lower_inner"][[3, 2, 1]]
    return _Geometry(
        lm68=lm, outline=outline, jaw=jaw, face_x=face_x, chin_y=chin_y, eyes=eyes, brows=brows,
        nose_tip=tip, nose_base=nb, mouth_y=my, mouth=mouth,
        neck_w=(0.40 if ident.male else 0.33) * fw / 0.8,
    )


def _landmarks5(lm68: np.ndarray) -> np.ndarray:
    """CelebA's 5 points (lefteye = the eye on the image's left) from the 68."""
    return np.stack([lm68[..., 36:42, :].mean(-2), lm68[..., 42:48, :].mean(-2), lm68[..., 30, :],
                     lm68[..., 48, :], lm68[..., 54, :]], -2)


def _face_box_points(lm68: np.ndarray) -> np.ndarray:
    """Points whose bounding box is the face box: jaw, brows and a forehead margin above the brows."""
    brows = lm68[17:27]
    return np.concatenate([lm68[0:17], brows, brows - np.array([0.0, FACE_BOX_FOREHEAD])])


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _rgba(colour, alpha: int = 255) -> tuple[int, int, int, int]:
    c = np.clip(np.asarray(colour, float), 0, 255)
    return int(c[0]), int(c[1]), int(c[2]), int(alpha)


def _ellipse_pts(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = 2 * np.pi,
                 n: int = 24) -> np.ndarray:
    a = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], -1)


class _Painter:
    """Draws canonical-frame shapes through an affine map onto a (supersampled) PIL image."""

    def __init__(self, image: Image.Image, matrix: np.ndarray, unit: float) -> None:
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.m = matrix
        self.unit = unit

    def _xy(self, pts) -> list[float]:
        p = np.asarray(pts, float).reshape(-1, 2) @ self.m[:, :2].T + self.m[:, 2]
        return p.ravel().tolist()

    def poly(self, pts, colour, alpha: int = 255) -> None:
        self.draw.polygon(self._xy(pts), fill=_rgba(colour, alpha))

    def line(self, pts, width: float, colour, alpha: int = 255) -> None:
        w = max(1, int(round(width * self.unit)))
        self.draw.line(self._xy(pts), fill=_rgba(colour, alpha), width=w, joint="curve")

    def ellipse(self, cx, cy, rx, ry, colour, alpha: int = 255, n: int = 24) -> None:
        self.poly(_ellipse_pts(cx, cy, rx, ry, n=n), colour, alpha)

    def ring(self, cx, cy, r, width, colour, alpha: int = 255) -> None:
        self.line(_ellipse_pts(cx, cy, r, r, n=25), width, colour, alpha)


def _hairline(ident: _Identity) -> np.ndarray:
    """The hairline from the right temple to the left temple (canonical)."""
    fw = ident.width
    if ident.traits["Receding_Hairline"]:
        half = [(fw * 0.98, JAW_CENTER_Y - 0.05), (fw * 0.93, EYE_Y - 0.3), (fw * 0.62, -1.05),
                (fw * 0.3, -0.93), (0.0, -0.9)]
    else:
        half = [(fw * 0.98, JAW_CENTER_Y - 0.02), (fw * 0.94, EYE_Y - 0.22), (fw * 0.7, HAIRLINE_Y + 0.08),
                (fw * 0.3, HAIRLINE_Y + 0.01), (0.0, HAIRLINE_Y)]
    half = np.array(half)
    other = half[::-1][1:] * np.array([-1.0, 1.0])
    return np.concatenate([half, other])


def _hair_mod(texture: str, a: np.ndarray, phase: float) -> np.ndarray:
    if texture == "wavy":
        return 0.04 * np.sin(9 * a + phase)
    if texture == "curly":
        return 0.055 * np.abs(np.sin(14 * a + phase))
    return np.zeros_like(a)


def _cap_outer(ident: _Identity, phase: float) -> np.ndarray:
    """Outer outline of the hair over the skull from the left side to the right side."""
    a = np.linspace(np.pi, 2 * np.pi, 48)
    mod = 1 + _hair_mod(ident.hair_texture, a, phase)
    rx = ident.width * 0.97 + ident.hair_volume
    ry = FOREHEAD_HEIGHT + ident.hair_volume
    return np.stack([rx * np.cos(a) * mod, JAW_CENTER_Y + ry * np.sin(a) * mod], -1)


def _side_edge(ident: _Identity, y: np.ndarray, phase: float) -> np.ndarray:
    """Outer x of long hair at heights y."""
    frac = (y - JAW_CENTER_Y) / (HAIR_END_Y - JAW_CENTER_Y)
    x = ident.width * 0.97 + ident.hair_volume + 0.15 * frac
    if ident.hair_texture == "wavy":
        x = x + 0.06 * np.sin(2 * np.pi * y / 0.35 + phase)
    elif ident.hair_texture == "curly":
        x = x + 0.07 * np.abs(np.sin(2 * np.pi * y / 0.22 + phase))
    return x


def _draw_long_hair_back(p: _Painter, ident: _Identity, phase: float) -> None:
    cap = _cap_outer(ident, phase)
    y = np.linspace(JAW_CENTER_Y, HAIR_END_Y, 24)
    right = np.stack([_side_edge(ident, y, phase), y], -1)
    left = np.stack([-_side_edge(ident, y[::-1], phase + 1.0), y[::-1]], -1)
    p.poly(np.concatenate([cap, right, left]), ident.hair_rgb * 0.8)


def _long_hair_locks(ident: _Identity, g: _Geometry, phase: float) -> list[np.ndarray]:
    """Front locks of long hair on both sides of the face (cover the ears and face edges)."""
    locks = []
    inset = 0.07 + 0.05 * ident.hair_volume / 0.2
    for side in (-1, 1):
        ph = phase if side > 0 else phase + 1.0
        y_out = np.linspace(JAW_CENTER_Y - 0.05, HAIR_END_Y, 20)
        outer = np.stack([_side_edge(ident, y_out, ph), y_out], -1)
        y_in = np.linspace(g.chin_y - 0.3, EYE_Y - 0.15, 10)
        inner = np.stack([g.face_x(y_in) - inset, y_in], -1)
        bottom = np.array([(g.neck_w + 0.1, HAIR_END_Y)])
        pts = np.concatenate([outer, bottom, inner])
        pts[:, 0] *= side
        locks.append(pts)
    return locks


def _strand_colours(ident: _Identity) -> tuple[np.ndarray, np.ndarray]:
    """(shadow, sheen) colours of hair strands; on very dark hair the shadow is a lighter tone."""
    light = np.minimum(ident.hair_rgb * 1.25 + 45, 255)
    dark = ident.hair_rgb * 0.55 if _luminance(ident.hair_rgb) > DARK_HAIR_LUMINANCE else ident.hair_rgb + 40
    return dark, light


def _draw_hair_front(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    rng = np.random.default_rng(ident.hair_seed)
    phase = float(rng.uniform(0, 2 * np.pi))
    tex = ident.hair_texture
    hair = ident.hair_rgb
    dark, light = _strand_colours(ident)
    fw = ident.width
    if ident.traits["Bald"]:
        for side in (-1, 1):
            pts = np.array([(fw * 0.93, EYE_Y - 0.32), (fw + 0.09, EYE_Y - 0.3), (fw + 0.08, EYE_Y + 0.12),
                            (fw * 0.96, EYE_Y + 0.1)])
            pts[:, 0] *= side
            p.poly(pts, hair)
        p.ellipse(-0.25 * fw, JAW_CENTER_Y - FOREHEAD_HEIGHT * 0.8, 0.22, 0.09, (255, 255, 255), 70)
        return
    if ident.traits["Long_Hair"]:
        for lock in _long_hair_locks(ident, g, phase):
            p.poly(lock, hair)
    cap = _cap_outer(ident, phase)
    p.poly(np.concatenate([cap, _hairline(ident)]), hair)

    # strands
    w = STRAND_WIDTH
    if tex in ("straight", "wavy"):
        amp = 0.05 if tex == "wavy" else 0.0
        for f in (0.35, 0.6, 0.85):
            a = np.linspace(np.pi + 0.25, 2 * np.pi - 0.25, 30)
            r = 1 - (1 - f) * 0.18 + amp * np.sin(12 * a + phase) * 0.4
            rx, ry = fw * 0.97 + ident.hair_volume * f, FOREHEAD_HEIGHT + ident.hair_volume * f
            pts = np.stack([rx * np.cos(a) * r, JAW_CENTER_Y + ry * np.sin(a) * r], -1)
            sheen = f == 0.6
            p.line(pts, w * (1.6 if sheen and tex == "straight" else 1.0), light if sheen else dark, STRAND_ALPHA)
        if ident.traits["Long_Hair"]:
            y = np.linspace(EYE_Y - 0.05, HAIR_END_Y - 0.08, 20)
            for side in (-1, 1):
                for f in (0.3, 0.65):
                    x_out = _side_edge(ident, y, phase)
                    x_in = np.maximum(g.face_x(y) - 0.05, g.neck_w + 0.12)
                    x = x_in + f * (x_out - x_in)
                    if tex == "wavy":
                        x = x + 0.05 * np.sin(2 * np.pi * y / 0.35 + phase + f)
                    p.line(np.stack([side * x, y], -1), w, dark if f < 0.5 else light, STRAND_ALPHA)
    elif tex == "curly":
        for _ in range(22):
            a = rng.uniform(np.pi + 0.2, 2 * np.pi - 0.2)
            f = rng.uniform(0.2, 0.9)
            rx, ry = fw * 0.97 + ident.hair_volume * f, FOREHEAD_HEIGHT + ident.hair_volume * f
            r = 1 - (1 - f) * 0.15
            p.ring(rx * np.cos(a) * r, JAW_CENTER_Y + ry * np.sin(a) * r, 0.04, w, dark, 190)
        if ident.traits["Long_Hair"]:
            for _ in range(20):
                side = 1 if rng.random() < 0.5 else -1
                y = rng.uniform(EYE_Y, HAIR_END_Y - 0.1)
                x_out = float(_side_edge(ident, np.array([y]), phase)[0])
                x_in = max(float(g.face_x(np.array([y]))[0]) - 0.05, g.neck_w + 0.12)
                p.ring(side * (x_in + rng.uniform(0.15, 0.85) * (x_out - x_in)), y, 0.045, w, dark, 190)
    else:  # cropped: stipple
        for _ in range(30):
            a = rng.uniform(np.pi + 0.2, 2 * np.pi - 0.2)
            r = rng.uniform(0.9, 1.0)
            rx, ry = fw * 0.97 + ident.hair_volume, FOREHEAD_HEIGHT + ident.hair_volume
            p.ellipse(rx * np.cos(a) * r, JAW_CENTER_Y + ry * np.sin(a) * r, 0.015, 0.015, dark, 160, n=8)

    if img.labels["Bangs"]:
        brow_top = min(float(b[0][:, 1].min()) for b in g.brows) - 0.05
        x = np.linspace(-fw * 0.88, fw * 0.88, 13)
        top_y = np.full_like(x, HAIRLINE_Y - 0.06)
        bottom_y = brow_top - 0.03 * (np.arange(13) % 2) - 0.04 * (np.abs(x) / fw) ** 2
        if tex == "curly":
            bottom_y = bottom_y - 0.03 * np.abs(np.sin(np.arange(13) * 1.7))
        pts = np.concatenate([np.stack([x, top_y], -1), np.stack([x[::-1], bottom_y[::-1]], -1)])
        p.poly(pts, hair)
        for xi in x[1:-1:2]:
            p.line([(xi * 0.9, HAIRLINE_Y), (xi, brow_top - 0.06)], w, dark, 150)
    if img.sideburns:
        _draw_sideburns(p, ident, g)


def _draw_sideburns(p: _Painter, ident: _Identity, g: _Geometry) -> None:
    y = np.linspace(EYE_Y - 0.3, g.nose_tip + 0.06, 8)
    edge = g.face_x(y)
    colour = _facial_hair_colour(ident)
    for side in (-1, 1):
        pts = np.concatenate([np.stack([edge + 0.01, y], -1), np.stack([edge[::-1] - 0.12, y[::-1]], -1)])
        pts[:, 0] *= side
        p.poly(pts, colour)


def _draw_body(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    skin = ident.skin
    nw = g.neck_w
    st = img.style
    sh = 1.1 if ident.male else 1.0
    ny = NECK_BASE_Y
    shoulders = np.array([
        (-nw * 1.05, ny - 0.06), (-nw - 0.5 * sh, ny + 0.06), (-1.75 * sh, ny + 0.3), (-2.2 * sh, ny + 0.8),
        (-2.4 * sh, 4.0), (2.4 * sh, 4.0), (2.2 * sh, ny + 0.8), (1.75 * sh, ny + 0.3), (nw + 0.5 * sh, ny + 0.06),
        (nw * 1.05, ny - 0.06)])
    neck = np.array([(-nw, g.chin_y - 0.45), (nw, g.chin_y - 0.45), (nw * 1.08, ny + 0.25), (-nw * 1.08, ny + 0.25)])
    tie = img.labels["Wearing_Necktie"]
    p.poly(neck, skin * 0.84)
    p.poly(shoulders, st["jacket"] if tie else st["shirt"])
    necklace = img.labels["Wearing_Necklace"]
    if tie:
        p.poly([(-0.32, ny - 0.02), (0.32, ny - 0.02), (0.0, 2.6)], (245, 245, 245))
        for side in (-1, 1):
            p.poly([(side * nw * 1.02, ny - 0.12), (side * 0.02, ny + 0.1), (side * (nw + 0.12), ny + 0.12)],
                   (235, 235, 235))
        knot = [(-0.09, ny + 0.0), (0.09, ny + 0.0), (0.06, ny + 0.13), (-0.06, ny + 0.13)]
        p.poly(knot, np.asarray(st["tie"]) * 0.85)
        p.poly([(-0.06, ny + 0.13), (0.06, ny + 0.13), (0.14, 2.15), (0.0, 2.35), (-0.14, 2.15)], st["tie"])
        p.line([(-0.04, ny + 0.35), (0.08, ny + 0.47)], 0.04, (250, 250, 250), 120)
        p.line([(-0.08, ny + 0.7), (0.1, ny + 0.84)], 0.04, (250, 250, 250), 120)
    elif not ident.male or necklace:
        depth = 0.38 if not ident.male else 0.3
        scoop = _ellipse_pts(0, ny - 0.04, nw + 0.28, depth, 0, np.pi, 20)[::-1] * [-1, 1]
        chest = np.concatenate([[(-nw - 0.28, ny - 0.04)], scoop, [(nw + 0.28, ny - 0.04)]])
        p.poly(chest, skin * 0.9)
    else:
        p.line(_ellipse_pts(0, ny - 0.02, nw * 1.08, 0.12, 0, np.pi, 14), 0.06, np.asarray(st["shirt"]) * 0.7)
        if st["collar"]:
            for side in (-1, 1):
                p.poly([(side * nw * 1.05, ny - 0.1), (side * 0.05, ny + 0.12), (side * (nw + 0.2), ny + 0.1)],
                       np.asarray(st["shirt"]) * 0.8)
    if necklace:
        kind, colour = st["necklace"]
        arc = _ellipse_pts(0, ny - 0.06, nw + 0.1, 0.24, 0.25, np.pi - 0.25, 11)
        if kind == "beads":
            for x, y in arc:
                p.ellipse(x, y, 0.055, 0.055, np.asarray(colour) * 0.45, n=10)
                p.ellipse(x, y, 0.04, 0.04, colour, n=10)
        else:
            p.line(arc, 0.06, np.asarray(colour) * 0.45)
            p.line(arc, 0.035, colour)
            p.ellipse(0, ny + 0.2, 0.08, 0.09, np.asarray(colour) * 0.45, n=14)
            p.ellipse(0, ny + 0.2, 0.06, 0.07, colour, n=14)


def _draw_ears(p: _Painter, ident: _Identity) -> None:
    for side in (-1, 1):
        cx = side * (ident.width + 0.02)
        p.ellipse(cx, EYE_Y + 0.12, 0.09, 0.2, ident.skin * 0.92)
        p.line(_ellipse_pts(cx, EYE_Y + 0.1, 0.05, 0.13, -np.pi / 2 if side > 0 else np.pi / 2,
                            np.pi / 2 if side > 0 else 1.5 * np.pi, 10), 0.02, ident.skin * 0.7)


def _draw_eyes(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    makeup = img.labels["Heavy_Makeup"]
    for eye in g.eyes:
        cx, ew, eh, lids, side = eye["cx"], eye["ew"], eye["eh"], eye["lids"], eye["side"]
        u = np.linspace(-1, 1, 21)
        x = cx + ew * u
        up, lo = lids(u)
        if ident.traits["Bags_Under_Eyes"]:
            env = np.clip(1 - (u * 0.95) ** 2, 0, 1)
            bag_top = np.stack([x * 0.98 + cx * 0.02, lo + 0.015], -1)
            bag_bot = np.stack([x, lo + 0.02 + 0.075 * env], -1)
            p.poly(np.concatenate([bag_top, bag_bot[::-1]]), (80, 50, 70), 90)
            p.line(bag_bot[3:-3], 0.025, ident.skin * 0.55, 170)
        if makeup:
            shadow_top = np.stack([x * 1.05 - cx * 0.05, up - 0.06 - 0.05 * np.clip(1 - u ** 2, 0, 1)], -1)
            p.poly(np.concatenate([np.stack([x, up], -1), shadow_top[::-1]]), img.style["eyeshadow"], 190)
        p.poly(np.concatenate([np.stack([x, up], -1), np.stack([x[::-1], lo[::-1]], -1)]), SCLERA_RGB)
        iris_r = 0.058
        cy = EYE_Y - eh * 0.05
        for r, colour in ((iris_r, ident.iris), (iris_r * 0.5, (12, 10, 10))):
            circ = _ellipse_pts(cx, cy, r, r, n=20)
            top, bot = lids((circ[:, 0] - cx) / ew)
            circ[:, 1] = np.clip(circ[:, 1], top, bot)
            p.poly(circ, colour)
        p.ellipse(cx + 0.018, cy - 0.02, 0.012, 0.012, (255, 255, 255), 200, n=8)
        lid_w = 0.05 if makeup else 0.028
        p.line(np.stack([x, up], -1), lid_w, (25, 18, 18), 230)
        if makeup:
            outer = 1 if side > 0 else 0
            corner = np.array([x[-1 if outer else 0], up[-1 if outer else 0]])
            p.line([corner, corner + (side * 0.07, -0.045)], 0.04, (20, 15, 15))
        p.line(np.stack([x[2:-2], lo[2:-2]], -1), 0.015, ident.skin * 0.6, 140)
        if not ident.young:
            ox = cx + side * (ew + 0.03)
            for dy in (-0.04, 0.0, 0.045):
                p.line([(ox, EYE_Y + dy * 0.5), (ox + side * 0.08, EYE_Y + dy * 1.6)], 0.03, ident.skin * 0.55,
                       int(170 * ident.wrinkles))


def _brow_colour(ident: _Identity, img: _Image) -> np.ndarray:
    c = ident.hair_rgb * (0.55 if ident.hair_colour in ("blond", "gray") else 0.8)
    if img.labels["Heavy_Makeup"]:
        c = c * 0.75
    return c


def _draw_brows(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    colour = _brow_colour(ident, img)
    for centre, thick in g.brows:
        top = centre - np.stack([np.zeros_like(thick), thick / 2], -1)
        bot = centre + np.stack([np.zeros_like(thick), thick / 2], -1)
        p.poly(np.concatenate([top, bot[::-1]]), colour)


def _draw_nose(p: _Painter, ident: _Identity, g: _Geometry) -> None:
    skin = ident.skin
    nw, tip, nb = ident.nose_width, g.nose_tip, g.nose_base
    body = np.array([(-0.05, EYE_Y + 0.04), (0.05, EYE_Y + 0.04), (nw * 0.85, nb - 0.05), (nw, nb),
                     (-nw, nb), (-nw * 0.85, nb - 0.05)])
    p.poly(body, skin * 0.78, 140)
    p.line([(0.06, EYE_Y + 0.05), (nw * 0.75, nb - 0.06)], 0.04, skin * 0.55, 150)
    highlight = np.minimum(skin * 1.2 + 25, 255)
    if ident.traits["Pointy_Nose"]:
        contour = np.array([(-nw, nb - 0.05), (-nw * 0.4, nb - 0.01), (0.0, nb + 0.1), (nw * 0.4, nb - 0.01),
                            (nw, nb - 0.05)])
        p.poly([(-0.05, tip - 0.14), (0.05, tip - 0.14), (0.0, nb + 0.07)], highlight, 200)
    else:
        contour = _ellipse_pts(0, nb - 0.05, nw, 0.07, 0, np.pi, 13)
        p.ellipse(0, tip - 0.01, nw * 0.55, 0.06, highlight, 170)
    p.line(contour, 0.04, skin * 0.45, 220)
    for side in (-1, 1):
        p.ellipse(side * nw * 0.5, nb, 0.045 * nw / 0.12, 0.025, (40, 20, 20), 230, n=12)


def _draw_mouth(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    m = g.mouth
    natural = ident.skin * NATURAL_LIP_TINT + np.array([30, 0, 0])
    lip = np.asarray(img.style["lipstick"], float) if img.labels["Wearing_Lipstick"] else natural
    if img.gap > 0:
        p.poly(np.concatenate([m["upper_inner"], m["lower_inner"][::-1]]), MOUTH_RGB)
        if img.labels["Smiling"] or img.gap > 0.08:
            u = np.linspace(-1, 1, m["upper_inner"].shape[0])
            depth = min(img.gap * 0.55, 0.05) * np.clip(1 - u ** 2, 0, 1) ** 0.5
            teeth_bot = m["upper_inner"] + np.stack([np.zeros_like(depth), depth], -1)
            p.poly(np.concatenate([m["upper_inner"], teeth_bot[::-1]]), TEETH_RGB)
    p.poly(np.concatenate([m["upper_outer"], m["upper_inner"][::-1]]), lip * 0.9)
    p.poly(np.concatenate([m["lower_outer"], m["lower_inner"][::-1]]), lip)
    p.line(m["upper_inner"], 0.02, lip * 0.45, 200)
    if img.labels["Smiling"]:
        for side in (-1, 1):
            corner = m["upper_outer"][-1 if side > 0 else 0]
            dimple = corner + np.array([[side * 0.01, 0.01], [side * 0.05, -0.02], [side * 0.06, -0.07]])
            p.line(dimple, 0.04, ident.skin * 0.45, 220)


def _beard_region(g: _Geometry, ident: _Identity, upper_lip: bool) -> np.ndarray:
    """Lower-face region for stubble and full beards."""
    fw = ident.width
    jaw = g.jaw(np.linspace(0.12 * np.pi, 0.88 * np.pi, 24))
    jaw[:, 1] += 0.02
    side_y = g.nose_tip + 0.04
    mw = g.mouth["upper_outer"][-1, 0]
    if upper_lip:
        top = [(-fw * 0.7, side_y), (-mw * 1.15, g.nose_base + 0.05), (0, g.nose_base + 0.05),
               (mw * 1.15, g.nose_base + 0.05), (fw * 0.7, side_y)]
    else:
        low = g.mouth["lower_outer"][12, 1] + 0.02
        top = [(-fw * 0.72, side_y), (-mw * 1.2, g.mouth_y), (-mw * 0.7, low), (0, low + 0.01), (mw * 0.7, low),
               (mw * 1.2, g.mouth_y), (fw * 0.72, side_y)]
    return np.concatenate([jaw, np.array(top)[::-1]])


def _luminance(rgb: np.ndarray) -> float:
    return float(np.asarray(rgb, float) @ LUMA)


def _facial_hair_colour(ident: _Identity) -> np.ndarray:
    """Beard colour: the hair colour, darkened until it contrasts with the skin."""
    colour = ident.hair_rgb * (1.0 if ident.hair_colour == "gray" else FACIAL_HAIR_DARKEN)
    skin_l, hair_l = _luminance(ident.skin), _luminance(colour)
    if abs(skin_l - hair_l) < MIN_FACIAL_HAIR_CONTRAST:
        colour = colour * max(0.15, (skin_l - MIN_FACIAL_HAIR_CONTRAST) / max(hair_l, 1.0))
    return colour


def _draw_facial_hair(p: _Painter, ident: _Identity, img: _Image, g: _Geometry, stage: str) -> None:
    """stage 'under' (before the mouth: stubble, beard, goatee) or 'over' (after it: moustache)."""
    colour = _facial_hair_colour(ident)
    m = g.mouth
    mw = m["upper_outer"][-1, 0]
    if stage == "under":
        if img.stubble:
            region = _beard_region(g, ident, upper_lip=True)
            p.poly(region, ident.skin * STUBBLE_DARKEN, STUBBLE_ALPHA)
            rng = np.random.default_rng(ident.hair_seed + 1)
            lo, hi = region.min(0), region.max(0)
            dots = rng.uniform(lo, hi, (160, 2))
            xy = np.asarray(p._xy(dots)).reshape(-1, 2)
            p.draw.point([tuple(q) for q in xy], fill=_rgba((25, 20, 20), 120))
        if img.beard == "full_beard":
            p.poly(_beard_region(g, ident, upper_lip=False), colour)
        if img.beard in ("goatee", "goatee_mustache"):
            low = m["lower_outer"][12, 1] + 0.015
            chin = g.jaw(np.linspace(np.pi / 2 - 0.42, np.pi / 2 + 0.42, 11))
            chin[:, 1] += 0.03
            top = np.array([(-mw * 0.6, low + 0.02), (0, low), (mw * 0.6, low + 0.02)])
            p.poly(np.concatenate([chin, top]), colour)
            if img.beard == "goatee_mustache":
                for side in (-1, 1):
                    corner = m["upper_outer"][-1 if side > 0 else 0]
                    p.line([corner + (side * 0.03, -0.02), (side * mw * 0.62, low + 0.06)], 0.06, colour)
    else:
        if img.beard in ("mustache", "goatee_mustache"):
            upper = m["upper_outer"]
            top_y = g.nose_base + 0.04
            lower = upper.copy()
            lower[:, 1] += 0.015
            lower[:, 0] *= 1.08
            ends = [(mw * 1.12, upper[-1, 1] + 0.05), (-mw * 1.12, upper[0, 1] + 0.05)]
            pts = np.concatenate([[(-mw * 1.0, top_y + 0.03), (0, top_y), (mw * 1.0, top_y + 0.03)], [ends[0]],
                                  lower[::-1], [ends[1]]])
            p.poly(pts, colour)


def _draw_cheeks_and_age(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    skin = ident.skin
    es, fw = ident.eye_spacing, ident.width
    if img.labels["High_Cheekbones"]:
        for side in (-1, 1):
            p.ellipse(side * (es + 0.06), EYE_Y + 0.24, 0.17, 0.07, np.minimum(skin * 1.2 + 30, 255), 120)
            mouth_x = g.mouth["upper_outer"][-1, 0]
            p.line([(side * (fw * 0.92), EYE_Y + 0.3), (side * (mouth_x + 0.12), g.nose_base + 0.05)],
                   0.07, skin * 0.6, 90)
    if img.labels["Rosy_Cheeks"]:
        for side in (-1, 1):
            p.ellipse(side * (es + 0.03), g.nose_tip - 0.02, 0.17, 0.12, ROSY_RGB, ROSY_ALPHA)
    if ident.traits["Chubby"]:
        for side in (-1, 1):
            p.ellipse(side * (fw * 0.62), g.nose_base + 0.05, 0.2, 0.15, np.minimum(skin * 1.08 + 8, 255), 90)
    if not ident.young:
        a = int(WRINKLE_ALPHA * ident.wrinkles)
        brow_top = min(float(b[0][:, 1].min()) for b in g.brows)
        for k in range(3):
            y = brow_top - 0.1 - 0.08 * k
            xs = np.linspace(-fw * 0.45, fw * 0.45, 9)
            p.line(np.stack([xs, y + 0.02 * (xs / fw) ** 2 * 4], -1), WRINKLE_WIDTH, skin * 0.5, a)
        mw = g.mouth["upper_outer"][-1, 0]
        for side in (-1, 1):
            pts = np.array([(side * (ident.nose_width + 0.05), g.nose_base - 0.04),
                            (side * (mw + 0.08), g.mouth_y - 0.02), (side * (mw + 0.07), g.mouth_y + 0.1)])
            p.line(pts, WRINKLE_WIDTH, skin * 0.45, a)
            jowl = [(side * (mw + 0.02), g.mouth_y + 0.08), (side * (mw + 0.04), g.mouth_y + 0.2)]
            p.line(jowl, WRINKLE_WIDTH, skin * 0.5, a)


def _draw_double_chin(p: _Painter, ident: _Identity, g: _Geometry) -> None:
    if not ident.traits["Double_Chin"]:
        return
    w = ident.width * 0.68
    p.ellipse(0, g.chin_y + 0.07, w, 0.2, ident.skin * 0.98)
    p.line(_ellipse_pts(0, g.chin_y + 0.07, w, 0.2, 0.2, np.pi - 0.2, 14), 0.06, ident.skin * 0.45, 230)


def _draw_hat(p: _Painter, ident: _Identity, img: _Image) -> None:
    kind, colour = img.style["hat"]
    colour = np.asarray(colour, float)
    r = ident.width * 0.97 + ident.hair_volume + 0.05
    band = HAIRLINE_Y + 0.12
    if kind == "beanie":
        dome = _ellipse_pts(0, band - 0.05, r, 0.75, np.pi, 2 * np.pi, 30)
        p.poly(np.concatenate([dome, [(r, band + 0.02), (-r, band + 0.02)]]), colour)
        p.poly([(-r, band - 0.12), (r, band - 0.12), (r, band + 0.04), (-r, band + 0.04)], colour * 0.75)
        for k in range(-3, 4):
            p.line([(k * r / 4, band - 0.12), (k * r / 4, band + 0.03)], 0.025, colour * 0.55, 200)
    elif kind == "fedora":
        p.ellipse(0, band - 0.02, r + 0.38, 0.11, colour * 0.8)
        crown = np.array([(-r * 0.85, band - 0.05), (-r * 0.75, band - 0.68), (0.0, band - 0.6),
                          (r * 0.75, band - 0.68), (r * 0.85, band - 0.05)])
        p.poly(crown, colour)
        p.poly([(-r * 0.84, band - 0.2), (r * 0.84, band - 0.2), (r * 0.85, band - 0.08), (-r * 0.85, band - 0.08)],
               (30, 25, 25))
    else:  # cap with a visor
        dome = _ellipse_pts(0, band, r, 0.68, np.pi, 2 * np.pi, 30)
        p.poly(np.concatenate([dome, [(r, band + 0.03), (-r, band + 0.03)]]), colour)
        p.poly([(-r * 0.8, band), (r * 0.8, band), (r * 0.6, band + 0.17), (-r * 0.6, band + 0.17)], colour * 0.65)
        p.ellipse(0, band - 0.66, 0.06, 0.04, colour * 0.6, n=10)


def _draw_glasses(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    kind, colour, sun = img.style["glasses"]
    hw = ident.eye_width + 0.07
    hh = 0.12 if kind != "wide" else 0.1
    power = {"rect": 5.0, "round": 2.0, "wide": 4.0}[kind]
    a = np.linspace(0, 2 * np.pi, 33)
    for eye in g.eyes:
        cx, side = eye["cx"], eye["side"]
        c, s = np.cos(a), np.sin(a)
        frame = np.stack([cx + hw * np.sign(c) * np.abs(c) ** (2 / power),
                          EYE_Y + 0.01 + hh * np.sign(s) * np.abs(s) ** (2 / power)], -1)
        p.poly(frame, (15, 15, 25) if sun else (200, 225, 245), 225 if sun else 45)
        p.line(frame, GLASSES_FRAME, colour)
        outer = (cx + side * hw, EYE_Y - 0.03)
        p.line([outer, (side * (ident.width + 0.02), EYE_Y - 0.02)], 0.04, colour)
    inner = g.eyes[1]["cx"] - hw
    p.line(_ellipse_pts(0, EYE_Y - 0.01, inner, 0.04, np.pi, 2 * np.pi, 9), 0.035, colour)


def _draw_earrings(p: _Painter, ident: _Identity, img: _Image) -> None:
    kind, colour = img.style["earring"]
    colour = np.asarray(colour, float)
    outline = colour * 0.45
    for side in (-1, 1):
        x, y = side * (ident.width + 0.03), EYE_Y + 0.3
        if kind == "stud":
            p.ellipse(x, y, 0.085, 0.085, outline, n=14)
            p.ellipse(x, y, 0.065, 0.065, colour, n=14)
        elif kind == "hoop":
            p.ring(x, y + 0.12, 0.12, 0.085, outline)
            p.ring(x, y + 0.12, 0.12, 0.05, colour)
        else:
            p.line([(x, y), (x, y + 0.13)], 0.04, outline)
            p.ellipse(x, y + 0.19, 0.085, 0.1, outline, n=14)
            p.ellipse(x, y + 0.19, 0.065, 0.08, colour, n=14)


def _draw_person(p: _Painter, ident: _Identity, img: _Image, g: _Geometry) -> None:
    """Draw head, hair, shoulders and accessories back to front."""
    phase = float(np.random.default_rng(ident.hair_seed).uniform(0, 2 * np.pi))
    if ident.traits["Long_Hair"] and not ident.traits["Bald"]:
        _draw_long_hair_back(p, ident, phase)
    _draw_body(p, ident, img, g)
    _draw_ears(p, ident)
    _draw_double_chin(p, ident, g)
    p.poly(g.outline, ident.skin)
    _draw_cheeks_and_age(p, ident, img, g)
    _draw_facial_hair(p, ident, img, g, "under")
    _draw_nose(p, ident, g)
    _draw_mouth(p, ident, img, g)
    _draw_facial_hair(p, ident, img, g, "over")
    _draw_eyes(p, ident, img, g)
    _draw_brows(p, ident, img, g)
    _draw_hair_front(p, ident, img, g)
    if img.labels["Wearing_Hat"]:
        _draw_hat(p, ident, img)
    if img.labels["Eyeglasses"]:
        _draw_glasses(p, ident, img, g)
    if img.labels["Wearing_Earrings"]:
        _draw_earrings(p, ident, img)


def _draw_clutter(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator, n_shapes: int) -> None:
    for _ in range(n_shapes):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(4))
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.04, 0.3) * size
        if kind == 0:
            draw.rectangle([cx - r, cy - r * rng.uniform(0.3, 1), cx + r, cy + r * rng.uniform(0.3, 1)], fill=colour)
        elif kind == 1:
            draw.ellipse([cx - r, cy - r * rng.uniform(0.4, 1), cx + r, cy + r * rng.uniform(0.4, 1)], fill=colour)
        elif kind == 2:
            pts = rng.uniform(-r, r, (int(rng.integers(3, 7)), 2)) + (cx, cy)
            draw.polygon(pts.ravel().tolist(), fill=colour)
        else:
            pts = rng.uniform(-r, r, (2, 2)) + (cx, cy)
            draw.line(pts.ravel().tolist(), fill=colour, width=max(1, int(r * 0.08)))


def _supersample(size: int) -> int:
    return 3 if size <= 96 else 2


def _transform(centre: np.ndarray, scale: float, rotation_deg: float) -> np.ndarray:
    """2x3 map canonical -> output pixel-index coordinates (rotation CCW on screen)."""
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) * scale
    pivot = np.asarray(VIEW_PIVOT)
    return np.concatenate([rot, (np.asarray(centre) - rot @ pivot)[:, None]], 1)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def _render_canvas(size: int, m: np.ndarray, ident: _Identity, img: _Image, g: _Geometry,
                   clutter_rng: np.random.Generator, noise_rng: np.random.Generator, n_clutter: int,
                   blur: float) -> np.ndarray:
    """Render one canvas (background, clutter, person) and post-process it."""
    k = _supersample(size)
    big = size * k
    bg = tuple(int(c) for c in clutter_rng.integers(30, 226, 3))
    canvas = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(canvas)
    _draw_clutter(draw, big, clutter_rng, n_clutter)
    ss = m * k
    ss[:, 2] += (k - 1) / 2
    _draw_person(_Painter(canvas, ss, unit=float(np.hypot(*ss[:, 0]))), ident, img, g)
    out = canvas.resize((size, size), Image.Resampling.LANCZOS)
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    a = np.asarray(out, np.float32)
    mean = a.mean()
    a = (a - mean) * img.contrast + mean
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size / 2) - 1
    ang, amp = img.gradient
    a *= (img.brightness * (1 + amp * (np.cos(ang) * xx + np.sin(ang) * yy)))[..., None]
    if img.noise > 0:
        a += noise_rng.normal(0, img.noise, a.shape).astype(np.float32)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _render_one(seed: int, index: int, per_identity: int, size: int, wild_size: int | None,
                ident: _Identity | None = None, overrides: Mapping[str, object] | None = None) -> dict:
    """Render image ``index`` (and its wild canvas): image, labels, landmarks, rotation."""
    if ident is None:
        ident = _sample_identity(seed, index // per_identity)
    img = _sample_image(seed, index, ident, overrides)
    g = _geometry(ident, img)
    centre = size / 2 - 0.5 + img.shift * size
    m = _transform(centre, size / VIEW_SPAN * img.scale, img.rotation)
    clutter = np.random.default_rng(img.style["clutter_seed"])
    n_clutter = int(clutter.integers(*CLUTTER_SHAPES))
    image = _render_canvas(size, m, ident, img, g, clutter, np.random.default_rng([seed, STREAM_NOISE, index, 0]),
                           n_clutter, img.blur * size / 64)
    out = {"image": image, "labels": _labels(ident, img), "lm68": _apply(m, g.lm68), "rotation": img.rotation}
    if wild_size is not None:
        rng = np.random.default_rng([seed, STREAM_WILD, index])
        box_unit = _apply(_transform((0.0, 0.0), 1.0, img.rotation), _face_box_points(g.lm68))
        width1 = float(np.ptp(box_unit[:, 0]))
        height1 = float(np.ptp(box_unit[:, 1]))
        scale = rng.uniform(*WILD_FACE_FRACTION) * wild_size / width1
        scale = min(scale, 0.95 * wild_size / height1)
        lo = box_unit.min(0) * scale
        extent = np.array([width1, height1]) * scale
        corner = rng.uniform(0, 1, 2) * (wild_size - 1 - extent)
        mw = _transform(corner - lo, scale, img.rotation)
        area = (wild_size / size) ** 2
        n_wild = int(rng.integers(int(CLUTTER_SHAPES[0] * area), int(CLUTTER_SHAPES[1] * area) + 1))
        aligned_scale = size / VIEW_SPAN * img.scale
        wild = _render_canvas(wild_size, mw, ident, img, g, rng, np.random.default_rng([seed, STREAM_NOISE, index, 1]),
                              n_wild, img.blur * size / 64 * scale / aligned_scale)
        pts = _apply(mw, _face_box_points(g.lm68))
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        out.update(wild=wild, wild_box=np.array([x0, y0, x1 - x0, y1 - y0]), wild_lm68=_apply(mw, g.lm68))
    return out


def render_single(config: SynthFacesConfig, index: int, overrides: Mapping[str, object] | None = None) -> dict:
    """Render image ``index`` of ``config`` alone, optionally with image-level traits overridden.

    ``overrides`` maps image-level labels (e.g. ``{"Eyeglasses": True}``) or ``beard`` (a key of
    ``FACIAL_HAIR_STYLES``) / ``stubble`` / ``sideburns`` to values; everything else (identity,
    pose, lighting, clutter) is unchanged, which gives counterfactual pairs.  Returns ``image``,
    ``attributes``, ``landmarks68``, ``landmarks5`` and ``rotation`` (plus ``wild_*`` in wild mode).
    """
    config.validate()
    if not 0 <= index < config.n_images:
        raise IndexError(index)
    wild_size = config.resolved_wild_size if config.wild else None
    r = _render_one(config.seed, index, config.images_per_identity, config.image_size, wild_size, overrides=overrides)
    out = {"image": r["image"], "attributes": r["labels"], "landmarks68": r["lm68"].astype(np.float32),
           "landmarks5": _landmarks5(r["lm68"]).astype(np.float32), "rotation": np.float32(r["rotation"])}
    if wild_size is not None:
        out.update(wild_image=r["wild"], wild_box=r["wild_box"].astype(np.float32),
                   wild_landmarks68=r["wild_lm68"].astype(np.float32))
    return out


def _render_range(task: tuple[int, int, int, int, int, int | None]) -> dict[str, np.ndarray]:
    """Worker: render images [start, stop) and stack the results."""
    seed, start, stop, per_identity, size, wild_size = task
    cache: dict[int, _Identity] = {}
    rows = []
    for i in range(start, stop):
        ident_id = i // per_identity
        if ident_id not in cache:
            cache[ident_id] = _sample_identity(seed, ident_id)
        rows.append(_render_one(seed, i, per_identity, size, wild_size, cache[ident_id]))
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


# ---------------------------------------------------------------------------------------------
# Raters
# ---------------------------------------------------------------------------------------------


def rater_error_rates(config: SynthFacesConfig) -> np.ndarray:
    """Per-attribute x per-rater flip probabilities [A, R] (bad raters included)."""
    errors = dict(RATER_ERROR)
    errors.update(config.rater_error or {})
    base = np.array([errors[a] for a in ATTRIBUTE_NAMES], np.float64)
    table = np.repeat(base[:, None], config.n_raters, 1)
    table[:, _bad_raters(config)] = BAD_RATER_ERROR
    return table


def _bad_raters(config: SynthFacesConfig) -> np.ndarray:
    n_bad = round(config.bad_rater_fraction * config.n_raters)
    if config.bad_rater_fraction > 0:
        n_bad = max(1, n_bad)
    rng = np.random.default_rng([config.seed, STREAM_BAD_RATERS])
    return np.sort(rng.permutation(config.n_raters)[:n_bad]).astype(np.int64)


def _simulate_raters(config: SynthFacesConfig, attributes: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([config.seed, STREAM_RATERS])
    err = rater_error_rates(config)
    flips = rng.random((attributes.shape[0], attributes.shape[1], config.n_raters)) < err[None]
    return (attributes[:, :, None] ^ flips).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


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
    if workers == 1 or not _spawn_safe():
        parts = [_render_range(t) for t in tasks]
    else:
        with ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
            parts = list(pool.map(_render_range, tasks))
    cat = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    attributes = cat["attributes"]
    return SynthFacesData(
        config=config,
        attribute_names=ATTRIBUTE_NAMES,
        images=cat["images"],
        attributes=attributes,
        identity=np.arange(n, dtype=np.int64) // config.images_per_identity,
        landmarks68=cat["landmarks68"],
        landmarks5=_landmarks5(cat["landmarks68"]).astype(np.float32),
        rater_votes=_simulate_raters(config, attributes),
        wild_images=cat.get("wild_images"),
        wild_boxes=cat.get("wild_boxes"),
        wild_landmarks68=cat.get("wild_landmarks68"),
        wild_landmarks5=None if wild_size is None else _landmarks5(cat["wild_landmarks68"]).astype(np.float32),
        rotation=cat["rotation"],
        bad_raters=_bad_raters(config),
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


def _landmark_lines(names: list[str], lm5: np.ndarray) -> list[str]:
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    vals = np.rint(lm5.reshape(len(names), 10)).astype(int)
    return [str(len(names)), header] + [name + "".join(f"{v:5d}" for v in row) for name, row in zip(names, vals)]


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as fh:
        fh.write("\n".join(lines) + "\n")


@contextmanager
def atomic_output(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling folder, renamed to ``out_dir`` when the block succeeds."""
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        yield tmp
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_celeba(data: SynthFacesData, out_dir: str | os.PathLike, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 *, overwrite: bool = False) -> Path:
    """Write CelebA's official on-disk layout (see the formats below); returns the final directory.

    ``img_align_celeba/000001.jpg`` (JPEG q95), ``list_attr_celeba.txt`` (count; names line with
    the official trailing space; rows of width-2 ``-1``/`` 1`` values), ``list_eval_partition.txt``
    (identity-disjoint, seeded), ``identity_CelebA.txt`` (1-based ids),
    ``list_landmarks_align_celeba.txt``, ``rater_votes.csv`` (``image,rater,<attrs>``; rater is the
    0-based column of ``rater_votes``) and, with wild images, ``img_celeba/``,
    ``list_bbox_celeba.txt`` and ``list_landmarks_celeba.txt``.  LF line endings.  Everything is
    written to a temporary sibling directory renamed into place at the end; an existing non-empty
    ``out_dir`` is an error unless ``overwrite``.
    """
    with atomic_output(out_dir, overwrite) as tmp:
        n = len(data)
        width = max(6, len(str(n)))
        names = [f"{i + 1:0{width}d}.jpg" for i in range(n)]
        (tmp / "img_align_celeba").mkdir()
        for name, im in zip(names, data.images):
            Image.fromarray(im).save(tmp / "img_align_celeba" / name, quality=95)
        attrs = data.attribute_names
        rows = [name + " " + " ".join(f"{v:2d}" for v in row)
                for name, row in zip(names, data.attributes.astype(int) * 2 - 1)]
        _write_lines(tmp / "list_attr_celeba.txt", [str(n), " ".join(attrs) + " "] + rows)
        part = identity_split(data.identity, data.config.seed, split_fractions)
        _write_lines(tmp / "list_eval_partition.txt", [f"{a} {b}" for a, b in zip(names, part)])
        _write_lines(tmp / "identity_CelebA.txt", [f"{a} {b + 1}" for a, b in zip(names, data.identity)])
        _write_lines(tmp / "list_landmarks_align_celeba.txt", _landmark_lines(names, data.landmarks5))
        votes = data.rater_votes
        csv = ["image,rater," + ",".join(attrs)]
        for i, name in enumerate(names):
            for r in range(votes.shape[2]):
                csv.append(f"{name},{r}," + ",".join(str(int(v)) for v in votes[i, :, r]))
        _write_lines(tmp / "rater_votes.csv", csv)
        if data.wild_images is not None:
            (tmp / "img_celeba").mkdir()
            for name, im in zip(names, data.wild_images):
                Image.fromarray(im).save(tmp / "img_celeba" / name, quality=95)
            boxes = np.rint(data.wild_boxes).astype(int)
            _write_lines(tmp / "list_bbox_celeba.txt", [str(n), "image_id x_1 y_1 width height"] + [
                f"{name}{x:6d}{y:4d}{w:4d}{h:4d}" for name, (x, y, w, h) in zip(names, boxes)])
            _write_lines(tmp / "list_landmarks_celeba.txt", _landmark_lines(names, data.wild_landmarks5))
    return Path(out_dir).absolute()


#: Output formats of ``facebench synth`` (name -> writer); add new formats here.
WRITERS: dict[str, Callable[..., Path]] = {"celeba": write_celeba}


def available_writers() -> dict[str, Callable[..., Path]]:
    """``WRITERS`` plus the formats of ``datamodules.synth_writers`` when that module exists."""
    writers = dict(WRITERS)
    try:
        from datamodules.synth_writers import WRITERS as more
    except ModuleNotFoundError:
        more = {}
    writers.update({k: v for k, v in more.items() if k not in writers})
    return writers


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
    writers = available_writers()
    ap = build_parser(tuple(writers))
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
    path = writers[args.format](data, args.out, overwrite=args.overwrite)
    print(f"synth: wrote {len(data)} images ({config.n_identities} identities, {args.size}px"
          f"{', wild ' + str(config.resolved_wild_size) + 'px' if args.wild else ''}, {args.raters} raters) "
          f"as {args.format} to {path} in {time.perf_counter() - start:.1f}s")
    return 0


# ------------------------------------------------------------------------------------------------
# the datamodule: SynthFaces generated once into a cache folder, read through the CelebA loader
# ------------------------------------------------------------------------------------------------
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

    def __init__(self, root: str | os.PathLike | None = None, *, n_identities: int = 300, images_per_identity: int = 10,
                 render_size: int = 64, synth_seed: int = 0, wild: bool = False, wild_size: int | None = None,
                 n_raters: int = 3,
                 rater_error: Mapping[str, float] | None = None, bad_rater_fraction: float = 0.0,
                 landmark_points: int = 5, generate_workers: int | None = None, **kwargs: Any):
        if landmark_points not in (5, 68):
            raise ValueError(f"synthfaces: landmark_points must be 5 or 68, got {landmark_points}")
        self.synth_config = SynthFacesConfig(
            n_identities=n_identities, images_per_identity=images_per_identity, image_size=render_size,
            seed=synth_seed, wild=wild or kwargs.get("in_the_wild", False), wild_size=wild_size, n_raters=n_raters, rater_error=dict(rater_error) if rater_error else None,
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
        from datamodules.multirater import MultiRaterDataModule

        self.prepare_data()
        task, tables = super().load_tables()
        raters = MultiRaterDataModule(self.root, ratings_file="rater_votes.csv", metadata_file=None,
                                      image_dir=self.image_dir if not self.in_the_wild else "img_align_celeba",
                                      traits={n: {"classes": ["0", "1"]} for n in task.names}, rater_filter=False)
        _, vote_tables = raters.load_tables()
        votes = next(iter(vote_tables.values()))
        row_of = {Path(p).name: i for i, p in enumerate(votes.paths)}
        for tab in tables.values():
            rows = np.array([row_of[Path(p).name] for p in tab.paths], dtype=np.int64)
            tab.votes = {n: v[rows] for n, v in votes.votes.items()}
            if not self.in_the_wild:   # exact float landmarks (the CelebA file rounds them to pixels)
                lm68 = _read_landmarks68(self.root)[np.array([int(Path(p).stem) - 1 for p in tab.paths], dtype=np.int64)]
                tab.landmarks = lm68 if self.landmark_points == 68 else np.stack([_landmarks5(x) for x in lm68])
        task = TaskSpec(tuple(dataclasses.replace(t, has_votes=True) for t in task.targets), name=self.registered_name)
        return task, tables


LANDMARKS68_FILE = "list_landmarks68_synthfaces.txt"


def _write_landmarks68(data: SynthFacesData, root: Path) -> None:
    """The exact 68 landmarks of the aligned images, one row per image (136 numbers, x y pairs)."""
    names = [f"{i + 1:06d}.jpg" for i in range(len(data))]
    lines = [str(len(data)), " ".join(f"{a}{k}" for k in range(68) for a in ("x", "y"))]
    lines += [name + " " + " ".join(f"{v:.2f}" for v in lm.reshape(-1)) for name, lm in zip(names, data.landmarks68)]
    _write_lines(root / LANDMARKS68_FILE, lines)


def _read_landmarks68(root: Path) -> np.ndarray:
    from datamodules.celeba import read_table_file

    _, _, values = read_table_file(root / LANDMARKS68_FILE, 136, count_line=True, header=(), parse=float,
                                   what="landmark coordinates", dtype=np.float64)
    return values.reshape(-1, 68, 2).astype(np.float32)


if __name__ == "__main__":
    raise SystemExit(main())
