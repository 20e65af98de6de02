"""Reading dataset images as RGB, and bringing them to a backbone's square resolution."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from editsweep.datasets.base import DatasetError

# Transparent pixels are composited on white: that is how viewers and papers show such images,
# and the colour stored under alpha 0 is arbitrary (often black) and must not leak into an edit.
BACKGROUND = (255, 255, 255)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode the image at `path` as an upright RGB image, whatever its format or file extension.

    PIL picks the decoder from the file's content, so a JPEG named `.png` loads. EXIF orientation is
    applied (a phone photo comes out the way it is shown), transparency is composited on white and
    16-bit greyscale is scaled to 8 bits. Raises `DatasetError` naming the path and the cause when the
    file is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            # load() decodes every pixel now, so a truncated file fails here and not in a later step.
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError is an OSError; decoders also raise SyntaxError/ValueError on bad data.
        raise DatasetError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB: transparency composited on white, 16-bit greyscale scaled (PIL would clip it)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        grey = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Center-crop `image` to a square and resize it to `size` x `size` with LANCZOS.

    Cropping (not padding or stretching) keeps the subject's proportions and fills the frame, which
    is what the editing backbones were trained on.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    # Crop first, then resize (not ImageOps.fit's one-step resize with a box): LANCZOS reads a few
    # pixels past its box, which would blend cropped-away content into the edges.
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def fit_square_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A (H, W) mask of an image brought to `size` by `fit_square`: same center crop, nearest resize.

    Masks stay at the dataset image's original resolution in `Sample.meta["mask"]`; this maps one
    onto the pixels of the square image the methods edit. Returns a (size, size) bool array.
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask is a (H, W) array, got shape {array.shape}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    image = Image.fromarray(np.where(array.astype(bool), 255, 0).astype(np.uint8), "L")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.NEAREST)) > 127
