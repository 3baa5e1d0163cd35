"""Which device and mixed-precision mode a run trains with, decided once from the config."""

from __future__ import annotations

import platform
from typing import Any

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; an explicit device must exist here (ValueError)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name} but CUDA is not available")
    return device


def resolve_amp(amp: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that have it natively, fp16 (with GradScaler) on older GPUs, off on
    CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return "off"
        # native bf16 from compute capability 8 (Ampere); older GPUs would only emulate it
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device (use bf16 or off on CPU)")
    return amp


def device_name(device: torch.device) -> str:
    """A human name for the device (the GPU model, or the CPU's)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def runtime_info(device: torch.device, amp: str) -> dict[str, Any]:
    """What a run trains on, for the logger's on_train_start."""
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "amp": amp,
    }


def gpu_mem_peak_frac(device: torch.device) -> float | None:
    """Peak allocated / total memory since the last call (None off CUDA); resets the peak."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return peak / torch.cuda.get_device_properties(device).total_memory
