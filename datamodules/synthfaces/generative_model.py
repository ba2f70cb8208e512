"""The generative model of SynthFaces: sampling of identity traits, image traits given the
identity, the visible labels, and the simulated raters' votes (the tables are in
``datamodules/synthfaces/priors.py``). Not to be confused with
:mod:`facebench.datamodules.epoch_sampler`, the data loaders' sampler.

Generative model
----------------
Every image ``i`` belongs to identity ``i // K`` (``K = images_per_identity``).  Sampling is
hierarchical and uses only the tables of ``priors.py``:

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

Raters
------
Every image gets ``n_raters`` votes per attribute; rater ``r`` flips the true label with the
attribute's error rate (``RATER_ERROR``, overridable), except "bad raters" (a seeded choice of
``round(bad_rater_fraction * n_raters)`` rater columns, at least one when the fraction is positive)
who err with ``BAD_RATER_ERROR`` on every attribute.  Rater ``r`` is the same person on every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from facebench.datamodules.synthfaces.config import SynthFacesConfig
from facebench.datamodules.synthfaces.priors import (
    ACCESSORY_RGB, ARCHED_EYEBROWS, ATTRIBUTE_NAMES, BAD_RATER_ERROR, BLUR_RADIUS_RANGE, BRIGHTNESS_RANGE,
    BROW_RAISE, BROW_THICKNESS, CHUBBY_WIDTH, CONTRAST_RANGE, EYE_HEIGHT, EYE_SPACING, EYE_WIDTH, EYESHADOW_RGB,
    FACE_SHAPES, FACIAL_HAIR_STYLES, GLASSES_RGB, GRADIENT_MAX, HABIT_PERSISTENCE, HABIT_TRAITS, HAIR_COLOUR_PRIORS,
    HAIR_COLOURS, HAIR_RGB, HAIR_TEXTURE_PRIORS, HAIR_VOLUME, IDENTITY_PRIORS, IMAGE_PRIORS, IRIS_RGB, JACKET_RGB,
    JEWEL_RGB, LIP_THICKNESS, LIPSTICK_RGB, MAKEUP_CONDITIONALS, MALE_JAW_POWER, MAX_ROTATION_DEG,
    MOUTH_GAP_NEUTRAL, MOUTH_GAP_SMILING, MOUTH_WIDTH, NEUTRAL_LIFT, NOISE_SIGMA_MAX, NOSE_EXTRA_LENGTH, NOSE_WIDTH,
    P_DOUBLE_CHIN_IF_CHUBBY, P_MALE, P_SIDEBURNS, P_STUBBLE_WITH_GOATEE_OR_MUSTACHE, P_SUNGLASSES, P_YOUNG,
    PALE_SKIN, RATER_ERROR, SCALE_JITTER, SHIFT_JITTER, SKIN_TONE_WEIGHTS, SKIN_TONES, SMILE_CONDITIONALS,
    SMILE_LIFT, STREAM_BAD_RATERS, STREAM_IDENTITY, STREAM_IMAGE, STREAM_RATERS,
)


def _cell(male: bool, young: bool) -> int:
    return 2 * int(male) + (0 if young else 1)


# ---------------------------------------------------------------------------------------------
# Identities and images
# ---------------------------------------------------------------------------------------------


@dataclass
class IdentityTraits:
    """Everything drawn once per identity (``sample_identity``)."""

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


def sample_identity(seed: int, identity: int) -> IdentityTraits:
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
    return IdentityTraits(
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
class ImageTraits:
    """Everything drawn per image given its identity (``sample_image``): labels, beard, nuisances, style."""

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


def sample_image(seed: int, index: int, ident: IdentityTraits,
                 overrides: Mapping[str, object] | None = None) -> ImageTraits:
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
    return ImageTraits(
        labels=lab, beard=beard, stubble=bool(stubble and ident.male), sideburns=bool(sideburns),
        blur=blur if lab["Blurry"] else 0.0, smile=float(smile), gap=float(gap), style=style, **nuisance,
    )


def visible_labels(ident: IdentityTraits, img: ImageTraits) -> np.ndarray:
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
# Raters
# ---------------------------------------------------------------------------------------------


def rater_error_rates(config: SynthFacesConfig) -> np.ndarray:
    """Per-attribute x per-rater flip probabilities [A, R] (bad raters included)."""
    errors = dict(RATER_ERROR)
    errors.update(config.rater_error or {})
    base = np.array([errors[a] for a in ATTRIBUTE_NAMES], np.float64)
    table = np.repeat(base[:, None], config.n_raters, 1)
    table[:, bad_rater_columns(config)] = BAD_RATER_ERROR
    return table


def bad_rater_columns(config: SynthFacesConfig) -> np.ndarray:
    n_bad = round(config.bad_rater_fraction * config.n_raters)
    if config.bad_rater_fraction > 0:
        n_bad = max(1, n_bad)
    rng = np.random.default_rng([config.seed, STREAM_BAD_RATERS])
    return np.sort(rng.permutation(config.n_raters)[:n_bad]).astype(np.int64)


def simulate_raters(config: SynthFacesConfig, attributes: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([config.seed, STREAM_RATERS])
    err = rater_error_rates(config)
    flips = rng.random((attributes.shape[0], attributes.shape[1], config.n_raters)) < err[None]
    return (attributes[:, :, None] ^ flips).astype(np.uint8)
