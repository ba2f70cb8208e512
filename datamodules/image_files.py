"""Image files of a dataset: decoding with a clear error (:func:`load_image`) and the cheap
usability check run at setup (:func:`check_image_file`: missing, empty, truncated, undecodable)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from facebench.datamodules.cache import decode_image
from facebench.datamodules.formats import DatasetFormatError


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 HxWx3 (RGB) or HxWx1 (grayscale), with a clear error."""
    try:
        return decode_image(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetFormatError(path, None, f"cannot decode image ({exc.__class__.__name__}: {exc})") from None


_JPEG_SOI, _PNG_SIGNATURE = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


def check_image_file(path: str | os.PathLike, full: bool = False) -> str | None:
    """Why an image file is unusable (``None`` when it is fine).

    The fast check (``full=False``, a few hundred bytes per file) parses the header with PIL and
    looks for the end marker of JPEG (``FFD9``) and PNG (``IEND``) files, which a truncated download
    lacks; a JPEG whose end marker is not near the end (trailing bytes after the image) is then
    decoded to be sure. ``full=True`` decodes every image."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return "file is missing"
    if size == 0:
        return "empty file"
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(size - 64, 0))
        tail = f.read(64)
    decode = full
    if head.startswith(_JPEG_SOI) and b"\xff\xd9" not in tail:
        decode = True
    if head.startswith(_PNG_SIGNATURE) and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk at the end)"
    try:
        with Image.open(path) as im:
            if im.size[0] < 1 or im.size[1] < 1:
                return f"image has size {im.size}"
            if decode:
                im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode image ({exc.__class__.__name__}: {exc})"
    return None
