"""Turn whatever a user hands us (PIL image, path, bytes, numpy array) into an RGB PIL image.

Everything a user can get wrong is caught here, before any model work starts, with an error
that says what to do.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

ImageInput = Image.Image | str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray

#: Largest picture accepted, in pixels (a 48 MP phone photo fits). Guards against decompression bombs.
MAX_PIXELS = 64_000_000


def load_image(image: Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Return ``image`` as an RGB PIL image, upright as a viewer shows it.

    Accepts a PIL image, a path (``~`` is expanded; URLs are refused: download the file first),
    raw encoded bytes (PNG, JPEG, ...), or a numpy array of shape (H, W), (H, W, 3) or (H, W, 4)
    with dtype uint8 (0..255) or float (0..1). Floats mean 0..1 wherever they come from: a PIL
    image of mode "F" is read as a float array is.
    """
    if isinstance(image, Image.Image):
        picture = _open_pil(image)
    elif isinstance(image, str) and is_url(image):
        raise ImageError(
            f"{_shown(image)} is a URL, and vlm-notebook does not download pictures: download it first "
            "(for example urllib.request.urlretrieve(url, 'photo.jpg')) and pass the file's path, or pass its bytes."
        )
    elif isinstance(image, (str, os.PathLike)):
        picture = _open_path(Path(image).expanduser(), max_pixels)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        picture = _open_bytes(bytes(image), "the bytes given", max_pixels)
    elif isinstance(image, np.ndarray):
        picture = _from_array(image)
    else:
        raise ImageError(
            f"Cannot use a {type(image).__name__} as an image: pass a PIL image, a file path, "
            "the encoded bytes of an image file, or a numpy array."
        )
    _check_size(picture, max_pixels)
    try:
        return _to_rgb(picture)
    except ImageError:
        raise
    except ValueError as error:  # Pillow's "Operation on closed image", from a frame count or a pixel read
        if "closed" in str(error):
            raise ImageError(_CLOSED) from None
        raise ImageError(f"The image cannot be converted to RGB ({error}).") from None


def is_url(text: str) -> bool:
    """True for an http(s) address, which is never read as a file name."""
    return text.strip().lower().startswith(("http://", "https://"))


_CLOSED = (
    "The PIL image was closed before vlm-notebook could read its pixels (for example, it is used after its "
    "`with Image.open(...)` block): reopen it, call .load() or .copy() inside the block, or pass the file's path."
)


def _open_pil(picture: Image.Image) -> Image.Image:
    # Pillow itself fails on such an image with a bare AssertionError, deep in its loader.
    if isinstance(picture, ImageFile.ImageFile) and picture.tile and picture.fp is None:
        raise ImageError(_CLOSED)  # opened from a file that was closed before the pixels were read
    return picture


def _open_path(path: Path, max_pixels: int) -> Image.Image:
    try:
        if path.is_dir():
            raise ImageError(f"{_shown(str(path))} is a folder: give the path of one image file in it.")
        if not path.is_file():
            raise ImageError(f"No image file at {_shown(str(path))}: check the path.")
        data = path.read_bytes()
    except OSError as error:
        hint = (
            "a file or folder name in it is longer than the file system allows (255 bytes): check the path"
            if error.errno == errno.ENAMETOOLONG
            else f"{error.strerror or error}"
        )
        raise ImageError(f"Cannot read an image file at {_shown(str(path))}: {hint}.") from None
    return _open_bytes(data, _shown(str(path)), max_pixels)


def _shown(text: str, limit: int = 120) -> str:
    """``text`` quoted for a message, its middle cut when it is long (a path of thousands of characters)."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit // 2] + "…" + text[-limit // 4 :])


def _open_bytes(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError(f"The image from {what} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            # Pillow's warning carries no size; the check below names it, and max_pixels, instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            _check_size(picture, max_pixels)  # before decoding a possibly huge raster
            picture.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(
            f"The image from {what} is too large to open safely ({error}): resize it first."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"The data from {what} is not an image format Pillow can read.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"The image from {what} is corrupt or truncated ({error}).") from None
    return picture


def _check_size(picture: Image.Image, max_pixels: int) -> None:
    width, height = picture.size
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels ({width}x{height}).")
    if width * height > max_pixels:
        raise ImageError(
            f"The image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}: resize it first, or pass a larger max_pixels if you trust it."
        )


def check_aspect_ratio(picture: Image.Image, limit: float, model: str) -> None:
    """Refuse a picture longer than ``limit`` times its width (or the reverse), which ``model`` cannot take."""
    width, height = picture.size
    ratio = max(width, height) / min(width, height)
    if ratio > limit:
        raise ImageError(
            f"The image is {width}x{height}, {ratio:.0f} times as long as it is wide; {model} takes pictures "
            f"up to {limit:.0f} times: crop it, or pad it towards a square."
        )


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(
            f"A numpy image must have shape (H, W), (H, W, 3) or (H, W, 4), channels last; got {array.shape}"
            + (": move the channels last with array.transpose(1, 2, 0)." if _channels_first(array) else ".")
        )
    if array.size == 0:  # before min() and max(), which have nothing to reduce
        raise ImageError(f"The image has no pixels ({array.shape[1]}x{array.shape[0]}).")
    if array.dtype == np.uint8:
        return Image.fromarray(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ImageError(
                "A float image (a float numpy array, or a PIL image of mode F) must hold finite values between "
                "0 and 1: divide values of 0..255 by 255."
            )
        return Image.fromarray(np.round(array * 255.0).astype(np.uint8))
    raise ImageError(
        f"A numpy image must be uint8 (0..255) or float (0..1); got dtype {array.dtype}."
    )


def _channels_first(array: np.ndarray) -> bool:
    return array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4)


def _to_rgb(picture: Image.Image) -> Image.Image:
    if getattr(picture, "n_frames", 1) > 1:
        picture.seek(0)  # animated: the first frame
    picture = ImageOps.exif_transpose(picture)
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if picture.mode == "F":  # 32-bit floats: 0..1, as in a float numpy array (Pillow would read 0..255)
        return _from_array(np.asarray(picture)).convert("RGB")
    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        scaled = np.asarray(picture, dtype=np.float64) / 65535.0
        return Image.fromarray(np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    return picture.convert("RGB")
