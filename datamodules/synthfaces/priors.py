"""The tables of the SynthFaces generative model (data only): the label set, the attribute priors
per (sex, age) cell, nuisance ranges, the simulated raters' error rates, the appearance tables
(colours, face shapes, trait-controlled shape ranges) that sampling draws from, and the ids of the
RNG streams.  How the tables are used: ``datamodules/synthfaces/generative_model.py``.
"""

from __future__ import annotations

from facebench.datamodules.celeba import CELEBA_ATTRIBUTES

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
# Appearance tables (sampled per identity / image)
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

#: RNG stream ids: generators are seeded ``default_rng([seed, STREAM_*, ...])``.
STREAM_IDENTITY, STREAM_IMAGE, STREAM_WILD, STREAM_RATERS, STREAM_BAD_RATERS, STREAM_SPLIT = range(1, 7)
STREAM_NOISE = 7
