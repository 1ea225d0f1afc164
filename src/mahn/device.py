"""The one place a device name (`--device`, `device=`) becomes a torch device: training, evaluation,
recommendation, serving and reproduce all resolve it here."""

from __future__ import annotations

import torch

from mahn.errors import DataError

DEVICES = "auto (a CUDA GPU when there is one), cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when torch sees a GPU, else cpu; anything else must name a device that exists."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DataError(f"unknown device {name!r} (choose {DEVICES})", "--device") from error
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"unsupported device {name!r} (choose {DEVICES})", "--device")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError("device cuda was asked for but torch sees no CUDA GPU", "--device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"{name} was asked for but torch sees {torch.cuda.device_count()} GPU(s)", "--device")
    return device
