"""Image input: reading a file or URL (with download and decompression-bomb limits), decoding it to a
centre-cropped RGB square, and turning a batch of those into a normalised tensor."""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a failure, not a half-grey picture
# Larger images are refused as decompression bombs, from the size in their header, before they are decoded. PIL
# warns from Image.MAX_IMAGE_PIXELS (89.5 M) and refuses from twice that when it opens a file; this cap is lower,
# so every image PIL warns about is refused here, and PIL's refusal gets the same reason.
MAX_PIXELS = 40_000_000
MAX_DOWNLOAD_BYTES = 20 << 20


def _read_bytes(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source, timeout=20) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
        if len(data) > MAX_DOWNLOAD_BYTES:
            raise ValueError(f"download larger than {MAX_DOWNLOAD_BYTES} bytes")
        return data
    return Path(source).read_bytes()


def load_image(source: str, size: int) -> np.ndarray:
    """Decode one image to uint8 (size, size, 3): shorter side resized to `size`, centre-cropped.

    Greyscale, CMYK and palette images are converted to RGB; transparency is composited onto white
    (product photos use white backgrounds; a plain convert would turn transparent pixels black).
    Raises on anything unreadable; the caller records the reason.
    """
    data = _read_bytes(source)
    if not data:
        raise ValueError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning, where it is an error
        raise ValueError(f"image over the {MAX_PIXELS} pixel limit ({e})") from e
    with img:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ValueError(f"image of {width}x{height} pixels is over the {MAX_PIXELS} pixel limit")
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the image is much larger
        if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = img.convert("RGB")
    # resize only the centred square of side min(w, h) to size x size: the same pixels as resizing the
    # shorter side to `size` and centre-cropping, without resampling the parts the crop throws away
    side = min(rgb.size)
    left, top = (rgb.width - side) / 2, (rgb.height - side) / 2
    rgb = rgb.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side), reducing_gap=2.0)
    return np.asarray(rgb, dtype=np.uint8)


def load_image_or_error(source: str, size: int) -> np.ndarray | str:
    """`load_image`, or the reason it failed (one bad file must never stop a run)."""
    try:
        return load_image(source, size)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run; the reason is recorded
        return f"{type(e).__name__}: {e}"[:200]


def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> normalised float32 (n, 3, h, w) in channels-last memory (faster convs on CPU)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)
