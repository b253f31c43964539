"""Device and mixed-precision choices."""

from __future__ import annotations

import contextlib

import torch

from medconvnext.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device = {name!r}, but no CUDA device is available")
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA GPUs that support it, fp16 on older ones; nothing on CPU."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def as_model_input(
    x: torch.Tensor, device: torch.device, memory_format: torch.memory_format | None = None
) -> torch.Tensor:
    """What crosses the model boundary: a plain tensor (never a MONAI MetaTensor: ``torch.compile`` fails on
    one, issue 14) on ``device`` (a ``non_blocking`` copy, asynchronous from pinned memory), 5D inputs in
    ``memory_format`` when given."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    x = x.to(device, non_blocking=True)
    if memory_format is not None and x.ndim == 5:
        x = x.contiguous(memory_format=memory_format)
    return x


def enable_fast_kernels(device: torch.device) -> None:
    """On CUDA: let cuDNN time its convolution algorithms once per input shape (training shapes are fixed) and
    allow TF32 matrix products in fp32 code. Process-wide PyTorch settings; nothing on CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
