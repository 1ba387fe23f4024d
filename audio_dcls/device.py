"""The one way a device name becomes a ``torch.device``."""
from __future__ import annotations

from typing import Optional, Union

import torch


class DeviceError(ValueError):
    """A device name that cannot be used on this machine (one-line message)."""


def resolve_device(name: Union[str, torch.device] = "auto", local_rank: Optional[int] = None) -> torch.device:
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' -> a torch.device.

    ``local_rank`` (a torchrun process's LOCAL_RANK) picks ``cuda:local_rank`` for a CUDA
    device, one GPU per process; a bare 'cuda' means cuda:0. Raises DeviceError for CUDA
    on a machine without it, or for a name torch does not know.
    """
    text = str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"device {text!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {text!r}: CUDA is not available on this machine (use cpu)")
        if local_rank is not None:
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", 0)
    return device
