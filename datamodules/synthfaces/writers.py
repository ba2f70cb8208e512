"""SynthFaces written in the on-disk format of every dataset facebench reads, so that each loader is
tested on real files (``facebench synth --format NAME``): CelebA's official layout (``write_celeba``,
also the cache of the ``synthfaces`` datamodule), LFWA, FER2013, FER+, UTKFace, FAD-style multi-rater
labels and a VV-style folder.

``WRITERS[name](data, out_dir, overwrite=False) -> Path`` writes atomically (a temporary sibling
folder renamed into place). Targets that SynthFaces does not render are derived from its attributes,
identities and raters in a fixed, documented way:

* **emotion** (FER2013 / FER+ / folder): ``Smiling`` -> happiness; else ``Mouth_Slightly_Open`` ->
  surprise; else ``Narrow_Eyes`` -> anger; else ``Bags_Under_Eyes`` -> sadness; else neutral (the
  other FER classes never occur);
* **FER+ votes**: every simulated rater applies the same rule to *its own* attribute votes
  (``rater_votes``), and answers ``unknown`` with probability 3% and not-a-face with 1% (seeded);
  an image whose majority is not-a-face is one FER+ "dropped" (blank name in ``fer2013new.csv``);
* **age** (UTKFace / folder): a per-identity age, uniform in 16-38 years for ``Young`` identities and
  40-80 otherwise, plus a per-image offset of -2..+2 years;
* **race** (UTKFace; FAD's ethnicity): skin-luminance buckets of the identity (mean cheek colour over its
  images): lightest 40% -> 0 "white", next 20% -> 2 "asian", next 10% -> 4 "others", next 15% -> 3
  "indian", darkest 15% -> 1 "black". A made-up stand-in, not ethnicity;
* **FAD traits** (multirater): gender (Male), age (Young -> young / elder), makeup (Heavy_Makeup),
  hair_color (Blond_Hair or Gray_Hair -> bright, else dark), emotion (Smiling -> joy / other),
  chubby (Chubby), ethnicity (race 0 -> white, else other; raters err 3%), each rater's label from
  its own attribute votes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import yaml
from PIL import Image

from facebench.core.tasks import age_bins
from facebench.datamodules.fer import FER2013_EMOTIONS, FERPLUS_EMOTIONS, FERPLUS_VOTE_COLUMNS
from facebench.datamodules.synthfaces.config import SynthFacesData
from facebench.datamodules.synthfaces.generate import identity_split
from facebench.datamodules.utkface import AGE_BINS

SYNTH_STREAM = 4242          # seeds of the derivations below: [config.seed, SYNTH_STREAM, purpose]
P_UNKNOWN, P_NOT_A_FACE = 0.03, 0.01
RACE_BUCKETS = ((0.40, 0), (0.60, 2), (0.70, 4), (0.85, 3), (1.01, 1))   # cumulative share (light -> dark), code
FER_USAGE = ("Training", "PublicTest", "PrivateTest")
FERPLUS_FOLDER_OF = ("FER2013Train", "FER2013Valid", "FER2013Test")


# ---------------------------------------------------------------------------------------------
# CelebA's layout, and the atomic output folder every writer uses
# ---------------------------------------------------------------------------------------------


def _landmark_lines(names: list[str], lm5: np.ndarray) -> list[str]:
    header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    vals = np.rint(lm5.reshape(len(names), 10)).astype(int)
    return [str(len(names)), header] + [name + "".join(f"{v:5d}" for v in row) for name, row in zip(names, vals)]


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """``lines`` joined by LF with a final LF (UTF-8)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
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
        write_lines(tmp / "list_attr_celeba.txt", [str(n), " ".join(attrs) + " "] + rows)
        part = identity_split(data.identity, data.config.seed, split_fractions)
        write_lines(tmp / "list_eval_partition.txt", [f"{a} {b}" for a, b in zip(names, part)])
        write_lines(tmp / "identity_CelebA.txt", [f"{a} {b + 1}" for a, b in zip(names, data.identity)])
        write_lines(tmp / "list_landmarks_align_celeba.txt", _landmark_lines(names, data.landmarks5))
        votes = data.rater_votes
        csv = ["image,rater," + ",".join(attrs)]
        for i, name in enumerate(names):
            for r in range(votes.shape[2]):
                csv.append(f"{name},{r}," + ",".join(str(int(v)) for v in votes[i, :, r]))
        write_lines(tmp / "rater_votes.csv", csv)
        if data.wild_images is not None:
            (tmp / "img_celeba").mkdir()
            for name, im in zip(names, data.wild_images):
                Image.fromarray(im).save(tmp / "img_celeba" / name, quality=95)
            boxes = np.rint(data.wild_boxes).astype(int)
            write_lines(tmp / "list_bbox_celeba.txt", [str(n), "image_id x_1 y_1 width height"] + [
                f"{name}{x:6d}{y:4d}{w:4d}{h:4d}" for name, (x, y, w, h) in zip(names, boxes)])
            write_lines(tmp / "list_landmarks_celeba.txt", _landmark_lines(names, data.wild_landmarks5))
    return Path(out_dir).absolute()


# ---------------------------------------------------------------------------------------------
# Targets SynthFaces does not render, derived from its attributes, identities and raters
# ---------------------------------------------------------------------------------------------


def _rng(data: SynthFacesData, purpose: int) -> np.random.Generator:
    return np.random.default_rng([data.config.seed, SYNTH_STREAM, purpose])


def _column(data: SynthFacesData, name: str, values: np.ndarray | None = None) -> np.ndarray:
    src = data.attributes if values is None else values
    return src[:, data.attribute_names.index(name)].astype(bool)


def emotion_of(data: SynthFacesData, values: np.ndarray | None = None) -> np.ndarray:
    """FER2013 emotion index per image (from true attributes, or from one rater's votes ``[N, A]``)."""
    code = np.full(len(data), FER2013_EMOTIONS.index("neutral"), dtype=np.int64)
    rules = [("Bags_Under_Eyes", "sadness"), ("Narrow_Eyes", "anger"), ("Mouth_Slightly_Open", "surprise"),
             ("Smiling", "happiness")]
    for attr, emotion in rules:                        # later rules win: Smiling first in priority
        code[_column(data, attr, values)] = FER2013_EMOTIONS.index(emotion)
    return code


def synth_ages(data: SynthFacesData) -> np.ndarray:
    """Age in years per image: per-identity base age (Young: 16-38, else 40-80) + per-image -2..+2."""
    ids = np.unique(data.identity)
    young_of = {int(i): bool(_column(data, "Young")[data.identity == i].mean() >= 0.5) for i in ids}
    base = {int(i): int(np.random.default_rng([data.config.seed, SYNTH_STREAM, 1, int(i)]).integers(
        *((16, 39) if young_of[int(i)] else (40, 81)))) for i in ids}
    offset = _rng(data, 2).integers(-2, 3, size=len(data))
    return np.clip(np.array([base[int(i)] for i in data.identity]) + offset, 1, 116).astype(np.int64)


def synth_race(data: SynthFacesData) -> np.ndarray:
    """UTKFace race code per image from the identity's skin luminance (see the module docstring)."""
    lum = np.empty(len(data))
    for k, (im, lm) in enumerate(zip(data.images, data.landmarks68)):
        patches = []
        for a, b in ((2, 31), (14, 35)):                # cheeks: between the jaw and the nostrils
            x, y = ((lm[a] + lm[b]) / 2).round().astype(int)
            r = max(1, im.shape[0] // 32)
            patch = im[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].reshape(-1, 3)
            if len(patch):
                patches.append(patch)
        pix = np.concatenate(patches) if patches else im.reshape(-1, 3)
        lum[k] = float((pix @ np.array([0.299, 0.587, 0.114])).mean())
    ids = np.unique(data.identity)
    per_id = np.array([np.median(lum[data.identity == i]) for i in ids])
    rank = np.argsort(np.argsort(-per_id, kind="stable"), kind="stable") / max(len(ids), 1)   # 0 = lightest
    codes = np.array([next(c for share, c in RACE_BUCKETS if r < share) for r in rank])
    code_of = dict(zip(ids.tolist(), codes.tolist()))
    return np.array([code_of[int(i)] for i in data.identity], dtype=np.int64)


def _gray48(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("L").resize((48, 48), Image.LANCZOS))


def _names(n: int, ext: str = ".jpg") -> list[str]:
    width = max(6, len(str(n)))
    return [f"{i + 1:0{width}d}{ext}" for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The other datasets' layouts
# ---------------------------------------------------------------------------------------------


def write_lfwa(data: SynthFacesData, out_dir: str | os.PathLike, overwrite: bool = False, *, values: str = "pm1",
               grayscale_every: int = 7, split_fractions: Sequence[float] = (0.4765, 0.0, 0.5235)) -> Path:
    """``lfw/<Name>/<Name>_NNNN.jpg`` (every ``grayscale_every``-th image grayscale, as some LFW images
    are), ``lfwa_attributes.csv`` (``values`` ``pm1``: +1/-1, ``01``: 1/0) and ``lfwa_split.csv``
    (identity-disjoint train / test in the papers' 6,263 : 6,880 proportion)."""
    if values not in ("pm1", "01"):
        raise ValueError("values must be 'pm1' or '01'")
    part = identity_split(data.identity, data.config.seed, split_fractions)
    with atomic_output(out_dir, overwrite) as tmp:
        rows, split_rows, count = [], [], {}
        for i, (im, ident) in enumerate(zip(data.images, data.identity)):
            person = f"Synth_Person_{int(ident):04d}"
            count[person] = count.get(person, 0) + 1
            name = f"{person}_{count[person]:04d}.jpg"
            (tmp / "lfw" / person).mkdir(parents=True, exist_ok=True)
            pil = Image.fromarray(im)
            if grayscale_every and i % grayscale_every == grayscale_every - 1:
                pil = pil.convert("L")
            pil.save(tmp / "lfw" / person / name, quality=95)
            vals = data.attributes[i].astype(int) * 2 - 1 if values == "pm1" else data.attributes[i].astype(int)
            rows.append(f"{person}/{name}," + ",".join(str(v) for v in vals))
            split_rows.append(f"{name},{('train', 'val', 'test')[part[i]]}")
        write_lines(tmp / "lfwa_attributes.csv", ["image," + ",".join(data.attribute_names)] + rows)
        write_lines(tmp / "lfwa_split.csv", ["image,split"] + split_rows)
    return Path(out_dir).absolute()


def write_fer2013(data: SynthFacesData, out_dir: str | os.PathLike, overwrite: bool = False, *,
                  split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Path:
    """Kaggle's ``fer2013.csv`` (``emotion,pixels,Usage``; 48x48 grayscale; identity-disjoint usage)."""
    part = identity_split(data.identity, data.config.seed, split_fractions)
    emotion = emotion_of(data)
    with atomic_output(out_dir, overwrite) as tmp:
        write_lines(tmp / "fer2013.csv", _fer2013_rows(data, emotion, part))
    return Path(out_dir).absolute()


def _fer2013_rows(data: SynthFacesData, emotion: np.ndarray, part: np.ndarray) -> list[str]:
    return ["emotion,pixels,Usage"] + [f"{e},{' '.join(str(int(v)) for v in _gray48(im).reshape(-1))},{FER_USAGE[p]}"
                                       for im, e, p in zip(data.images, emotion, part)]


def ferplus_votes(data: SynthFacesData) -> np.ndarray:
    """FER+ vote counts ``[N, 10]`` from the simulated raters (see the module docstring)."""
    n, r = len(data), data.rater_votes.shape[2]
    to_plus = np.array([FERPLUS_EMOTIONS.index(e) for e in FER2013_EMOTIONS])   # same names, other order
    votes = np.zeros((n, len(FERPLUS_VOTE_COLUMNS)), dtype=np.int64)
    u = _rng(data, 3).random((n, r))
    for k in range(r):
        choice = to_plus[emotion_of(data, data.rater_votes[:, :, k])]
        choice = np.where(u[:, k] < P_UNKNOWN, FERPLUS_VOTE_COLUMNS.index("unknown"), choice)
        choice = np.where(u[:, k] > 1 - P_NOT_A_FACE, FERPLUS_VOTE_COLUMNS.index("NF"), choice)
        np.add.at(votes, (np.arange(n), choice), 1)
    return votes


def write_ferplus(data: SynthFacesData, out_dir: str | os.PathLike, overwrite: bool = False, *,
                  split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> Path:
    """FER+: ``FER2013Train|Valid|Test/ferNNNNNNN.png`` + header-less ``label.csv`` per folder, and
    ``fer2013new.csv`` + ``fer2013.csv`` (same rows) for the CSV variant."""
    part = identity_split(data.identity, data.config.seed, split_fractions)
    votes = ferplus_votes(data)
    nf = FERPLUS_VOTE_COLUMNS.index("NF")
    dropped = votes.argmax(1) == nf
    with atomic_output(out_dir, overwrite) as tmp:
        labels: dict[int, list[str]] = {0: [], 1: [], 2: []}
        new_rows = ["Usage,Image name," + ",".join(FERPLUS_VOTE_COLUMNS)]
        for i, (im, p) in enumerate(zip(data.images, part)):
            name = f"fer{i:07d}.png"
            v = ",".join(str(int(x)) for x in votes[i])
            if dropped[i]:
                new_rows.append(f"{FER_USAGE[p]},,{v}")
                continue
            folder = tmp / FERPLUS_FOLDER_OF[p]
            folder.mkdir(exist_ok=True)
            Image.fromarray(_gray48(im), mode="L").save(folder / name)
            labels[int(p)].append(f'{name},"(0, 0, 48, 48)",{v}')
            new_rows.append(f"{FER_USAGE[p]},{name},{v}")
        for p, rows in labels.items():
            (tmp / FERPLUS_FOLDER_OF[p]).mkdir(exist_ok=True)
            write_lines(tmp / FERPLUS_FOLDER_OF[p] / "label.csv", rows)
        write_lines(tmp / "fer2013new.csv", new_rows)
        write_lines(tmp / "fer2013.csv", _fer2013_rows(data, emotion_of(data), part))
    return Path(out_dir).absolute()


def write_utkface(data: SynthFacesData, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """``UTKFace/<age>_<gender>_<race>_<yyyymmddHHMMSSfff>.jpg.chip.jpg`` (gender 0 male, 1 female)."""
    ages, race = synth_ages(data), synth_race(data)
    female = (~_column(data, "Male")).astype(int)
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "UTKFace").mkdir()
        for i, im in enumerate(data.images):
            day, rest = divmod(i, 86_400_000)
            stamp = f"2017{1 + day // 28:02d}{1 + day % 28:02d}{rest // 3_600_000:02d}{rest // 60_000 % 60:02d}" \
                    f"{rest // 1000 % 60:02d}{rest % 1000:03d}"
            Image.fromarray(im).save(tmp / "UTKFace" / f"{ages[i]}_{female[i]}_{race[i]}_{stamp}.jpg.chip.jpg", quality=95)
    return Path(out_dir).absolute()


FAD_TRAITS: dict[str, tuple[tuple[str, str], Callable[[SynthFacesData, np.ndarray], np.ndarray]]] = {
    "gender": (("female", "male"), lambda d, v: _column(d, "Male", v)),
    "age": (("elder", "young"), lambda d, v: _column(d, "Young", v)),
    "makeup": (("does_not_wear", "wears"), lambda d, v: _column(d, "Heavy_Makeup", v)),
    "hair_color": (("dark", "bright"), lambda d, v: _column(d, "Blond_Hair", v) | _column(d, "Gray_Hair", v)),
    "emotion": (("other", "joy"), lambda d, v: _column(d, "Smiling", v)),
    "chubby": (("no", "yes"), lambda d, v: _column(d, "Chubby", v)),
}


def write_multirater(data: SynthFacesData, out_dir: str | os.PathLike, overwrite: bool = False, *,
                     wide: bool = False) -> Path:
    """FAD-style crowd labels: ``images/NNNNNN.jpg``, ``ratings.csv`` (long ``image,rater,trait,label``
    or, with ``wide``, ``image,rater,<traits>``), ``images.csv`` (``image,identity``)."""
    names = _names(len(data))
    r = data.rater_votes.shape[2]
    white = synth_race(data) == 0
    eth_flip = _rng(data, 4).random((len(data), r)) < 0.03
    labels: dict[str, list[np.ndarray]] = {}
    for trait, (classes, rule) in FAD_TRAITS.items():
        labels[trait] = [np.where(rule(data, data.rater_votes[:, :, k]), classes[1], classes[0]) for k in range(r)]
    labels["ethnicity"] = [np.where(white ^ eth_flip[:, k], "white", "other") for k in range(r)]
    traits = list(labels)
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "images").mkdir()
        for name, im in zip(names, data.images):
            Image.fromarray(im).save(tmp / "images" / name, quality=95)
        if wide:
            rows = ["image,rater," + ",".join(traits)]
            rows += [f"images/{name},r{k}," + ",".join(str(labels[t][k][i]) for t in traits)
                     for i, name in enumerate(names) for k in range(r)]
        else:
            rows = ["image,rater,trait,label"]
            rows += [f"images/{name},r{k},{t},{labels[t][k][i]}" for i, name in enumerate(names) for k in range(r) for t in traits]
        write_lines(tmp / "ratings.csv", rows)
        write_lines(tmp / "images.csv", ["image,identity"] + [f"images/{n},person{int(i):04d}" for n, i in zip(names, data.identity)])
    return Path(out_dir).absolute()


def write_folder(data: SynthFacesData, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """VV-style folder: ``images/NNNNNN.jpg``, ``labels.csv`` (``path,emotion,age,gender,glasses,beard,identity``)
    and ``targets.yaml`` declaring the kinds (age: ordinal over the 17 VV age classes)."""
    names = _names(len(data))
    emotion = emotion_of(data)
    ages = synth_ages(data)
    beard = np.where(~_column(data, "No_Beard"), "heavy", np.where(_column(data, "5_o_Clock_Shadow"), "light", "none"))
    targets = {
        "emotion": {"kind": "multiclass", "classes": list(FER2013_EMOTIONS)},
        "age": {"kind": "ordinal", "bin_edges": list(AGE_BINS["age17"]), "classes": list(age_bins(AGE_BINS["age17"]))},
        "gender": {"kind": "binary", "classes": ["male", "female"]},
        "glasses": {"kind": "binary"},
        "beard": {"kind": "ordinal", "classes": ["none", "light", "heavy"]},
    }
    with atomic_output(out_dir, overwrite) as tmp:
        (tmp / "images").mkdir()
        rows = ["path,emotion,age,gender,glasses,beard,identity"]
        for i, (name, im) in enumerate(zip(names, data.images)):
            Image.fromarray(im).save(tmp / "images" / name, quality=95)
            rows.append(f"images/{name},{FER2013_EMOTIONS[emotion[i]]},{ages[i]},"
                        f"{'male' if _column(data, 'Male')[i] else 'female'},{int(_column(data, 'Eyeglasses')[i])},"
                        f"{beard[i]},person{int(data.identity[i]):04d}")
        write_lines(tmp / "labels.csv", rows)
        (tmp / "targets.yaml").write_text(yaml.safe_dump({"targets": targets}, sort_keys=False))
    return Path(out_dir).absolute()


#: ``facebench synth --format NAME`` -> writer ``(data, out_dir, overwrite=False) -> Path``.
WRITERS: dict[str, Callable[..., Path]] = {
    "celeba": write_celeba, "lfwa": write_lfwa, "fer2013": write_fer2013, "ferplus": write_ferplus,
    "utkface": write_utkface, "multirater": write_multirater, "folder": write_folder,
}
