"""Where and in which precision torch runs: one definition for training, embedding and ESM-2."""

from __future__ import annotations

import contextlib

import torch

from .run_config import PRECISIONS  # noqa: F401  (the trainer's choices, defined with its settings)


def default_device(local_rank: int | None = None) -> torch.device:
    """The GPU (this rank's, under torchrun) if there is one, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision dtype, or None for fp32. ``auto``: bf16 on GPUs that have it, fp16 on older
    GPUs, fp32 on the CPU (where autocast would only slow it down)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# dense bf16 tensor-core peak, TFLOP/s (SXM parts; the H200 has the H100's compute)
PEAK_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    """The device's dense bf16 peak (FLOP/s) and how it is named; None where none is defined (CPUs,
    cards not in :data:`PEAK_BF16_TFLOPS`)."""
    if device.type != "cuda":
        return "cpu (no peak defined)", None
    name = torch.cuda.get_device_name(device)
    for part, tflops in PEAK_BF16_TFLOPS.items():
        if part in name:
            return f"{name}: {tflops} TFLOP/s dense bf16", tflops * 1e12
    return f"{name}: unknown peak", None
