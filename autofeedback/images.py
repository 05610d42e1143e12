"""Decoding a stored image (the PNG or JPEG bytes of an images table row) to pixels, in one place."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def decode_image(data: bytes) -> Image.Image:
    """Encoded image bytes -> an RGB PIL image, fully loaded. Undecodable bytes raise what PIL raises
    (UnidentifiedImageError, an OSError; or ValueError, SyntaxError for some broken files)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")
