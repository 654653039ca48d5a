"""Image files in: the format and the size from the header, checked before any pixel is decoded.

Image.open reads only the header: a format not in `image_formats` is refused there (415), and so is an image over
`max_image_pixels` (413), so a decompression bomb is never decoded; Pillow's own bomb guard stays on. Truncated or
corrupt data fails while decoding (422). CPU work: call off the event loop.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from server.errors import ErrorCode, ServeError
from server.limits import DEFAULT_LIMITS, ImageLimits

T = TypeVar("T")


def probe_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS.image) -> tuple[int, int]:
    """(width, height) from the file's header, its format and pixel count checked (415, 413); no pixel decoded."""
    return opened(data, limits, lambda image: image.size)


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS.image) -> Image.Image:
    """Image file bytes in an allowed format -> an RGB image (first frame). CPU work: call off the event loop.

    Image.open reads only the header: the format and the pixel count are refused there (415, 413), so a
    decompression bomb is never decoded. Truncated or corrupt data fails in convert() (422).
    """
    return opened(data, limits, lambda image: image.convert("RGB"))


def opened(data: bytes, limits: ImageLimits, use: Callable[[Image.Image], T]) -> T:
    """use(the image opened lazily, its header checked), every failure a ServeError."""
    if not data:
        raise ServeError(
            ErrorCode.INVALID_INPUT,
            'no image: send the image file as the body, a multipart upload, or JSON {"inputs": "<base64>"}',
        )
    too_large = f"at most {limits.max_pixels} pixels are accepted (max_image_pixels)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(limits.formats)) as image:
                if image.width * image.height > limits.max_pixels:
                    raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"image is {image.width}x{image.height}; {too_large}")
                return use(image)
    except ServeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServeError(ErrorCode.PAYLOAD_TOO_LARGE, f"image is too large to decode safely; {too_large}") from None
    except UnidentifiedImageError:
        raise ServeError(
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"body is not an image in an accepted format ({', '.join(limits.formats)})",
        ) from None
    except Exception as exc:  # truncated or corrupt files raise OSError, ValueError, SyntaxError...
        raise ServeError(ErrorCode.INVALID_INPUT, f"image could not be decoded: {exc}") from None
