"""The encoders that turn items' images, texts or codes into feature rows (interfaces in base.py).

- image: `efficientnet-lite0/1/2` and `vgg16` (cnn.py; decoding in images.py), run by PyTorch or ONNX
  Runtime; `mcauley`, the 2014 precomputed feature file (mcauley.py)
- text: `minilm`, `mpnet`, `bert` (text.py); the text an item gets comes from mahn.features.templates
- either modality: `codes`, one-hot discrete codes from an items-table column (codes.py)
"""

from __future__ import annotations

from mahn.errors import DataError
from mahn.features.encoders.base import ChunkEncoder, Encoder, LookupEncoder
from mahn.features.encoders.cnn import LITE_SIZES, VGG16, EfficientNetLite, TorchImageEncoder, onnx_available
from mahn.features.encoders.codes import CodeEncoder
from mahn.features.encoders.mcauley import McAuleyFile
from mahn.features.encoders.text import TransformerText, make_text_encoder

__all__ = ["VGG16", "ChunkEncoder", "CodeEncoder", "EfficientNetLite", "Encoder", "LookupEncoder", "McAuleyFile",
           "TorchImageEncoder", "TransformerText", "make_encoder", "make_image_encoder", "make_text_encoder",
           "onnx_available"]


def make_image_encoder(name: str, weights: str | None = None, image_file: str | None = None, batch_size: int = 64,
                       workers: int = 2, runtime: str = "auto") -> TorchImageEncoder | McAuleyFile:
    """An image encoder by name; CNNs run on ONNX Runtime when it is installed (runtime "auto")."""
    if runtime not in ("auto", "onnx", "torch"):
        raise DataError(f"unknown runtime {runtime!r} (choose auto, onnx or torch)", "--runtime")
    if runtime == "onnx" and not onnx_available():
        raise DataError("--runtime onnx needs `pip install onnx onnxruntime`", "--runtime")
    if name in LITE_SIZES or name == "vgg16":
        runtime = "onnx" if runtime == "onnx" or (runtime == "auto" and onnx_available()) else "torch"
        if name in LITE_SIZES:
            return EfficientNetLite(name, weights, batch_size, workers, runtime)
        return VGG16(weights, batch_size, workers, runtime)
    if name == "mcauley":
        if image_file is None:
            raise DataError("--image mcauley needs --image-file PATH (the 2014 binary image-feature file)")
        return McAuleyFile(image_file)
    raise DataError(f"unknown image encoder {name!r}")


def make_encoder(modality: str, config) -> ChunkEncoder | LookupEncoder:
    """The encoder a FeatureConfig (mahn.features.store) names for `modality` ("image" or "text")."""
    name = config.image if modality == "image" else config.text
    if name == "codes":
        return CodeEncoder(f"{modality}_codes")
    if modality == "image":
        return make_image_encoder(name, config.weights, config.image_file, config.batch_size, config.workers,
                                  config.runtime)
    return make_text_encoder(name, config.text_model, config.text_pooling, max(config.batch_size, 128))
