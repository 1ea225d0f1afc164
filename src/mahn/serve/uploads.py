"""Images sent with POST /items/upload: checked to be images, kept under a name made of their content."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from mahn.errors import DataError
from mahn.features.encoders.images import MAX_PIXELS
from mahn.io import write_bytes

UPLOAD_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


def store_upload(content: bytes, folder: Path) -> tuple[str, bool]:
    """Keep an uploaded image in `folder` under a name made of its content's hash. Returns (file name, whether
    this call created the file). A file that is not a decodable image is refused and nothing is written."""
    if not content:
        raise DataError("field 'image': the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(content)) as picture:
            kind, (width, height) = picture.format, picture.size
            picture.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"field 'image': the uploaded file is not an image ({type(e).__name__})") from None
    if width * height > MAX_PIXELS:  # a decompression bomb: refused from its header, never decoded
        raise DataError(f"field 'image': an image of {width}x{height} pixels is over the {MAX_PIXELS:,} pixel limit")
    if kind not in UPLOAD_FORMATS:
        raise DataError(f"field 'image': {kind} images are not accepted; send one of {', '.join(UPLOAD_FORMATS)}")
    name = hashlib.sha256(content).hexdigest()[:32] + UPLOAD_FORMATS[kind]
    path = folder / name
    if path.exists():
        return name, False
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes(path, content)
    return name, True
