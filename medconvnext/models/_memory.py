"""Which memory format (layout) each model family trains and infers in, per device type, by measurement.

The same layout is not best everywhere: on CPU, oneDNN runs a depthwise 7³ Conv3d forward + backward 2.5-4x
faster in ``channels_last_3d`` than contiguous; on CUDA, PyTorch sends a channels-last depthwise Conv3d to cuDNN
and a contiguous one to its own depthwise kernel, and the cuDNN one was measured slower (issue 14, one H200,
torch 2.11 + CUDA 13, bf16, 64³, batch 32: ConvNeXt-atto in channels_last_3d trained at 438 vol/s and inferred
at 820 vol/s, the contiguous seed-style port of the same widths at 803 and 5,285). So the table below is looked
up per (family, device type); a model name may override its family; anything not listed runs contiguous
(PyTorch's default, and what a layout we have not measured should fall back to).

CPU entries: ``bench/bench_gpu.py --device cpu --sections layouts --size 32 --batch 4 --rounds 4 --iters 2
--warmup 1 --threads 1`` (and ``--models convnext_atto`` at 32³ batch 16 and 64³ batch 4) on the shared 2-core
machine, torch 2.13; train / inference volumes/s, contiguous -> channels_last; bench/results/layouts_cpu.json.
CUDA entries: issue 14's H200 numbers where they exist, else contiguous until
``bench/bench_gpu.py`` (section ``layouts``) measures otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medconvnext.models._registry import get_entry

CONTIGUOUS = "contiguous"
CHANNELS_LAST = "channels_last"
FORMATS = {CONTIGUOUS: torch.contiguous_format, CHANNELS_LAST: torch.channels_last_3d}

# (family or model name, device type) -> layout. Each entry names the measurement behind it.
LAYOUT_TABLE: dict[tuple[str, str], str] = {
    # CPU, convnext_atto 64³ batch 4: train 1.05 -> 1.53 vol/s, inference 9.6 -> 8.8 (and convnext_tiny 64³
    # batch 4: 0.47x the seed port's step time, docs/benchmarks.md). At 32³ (8³ maps after the stem) the layout
    # costs instead: batch 16, train 20.2 -> 17.7; batch 4, 24.2 -> 20.6; the README's sample job (32³, batch 4,
    # 3 epochs x 2 runs) 19.6-24.3 vol/s contiguous vs 16.4-20.0 channels-last. Hence MIN_SIDE below.
    ("convnext", "cpu"): CHANNELS_LAST,
    # H200 (issue 14): channels_last_3d 438 / 820 vol/s vs 803 / 5,285 for the contiguous seed port; the
    # depthwise Conv3d alone is timed in both layouts by bench_gpu.py section dwconv
    ("convnext", "cuda"): CONTIGUOUS,
    # CPU 32³ batch 4: train 12.6 -> 18.8, inference 244 -> 220 vol/s
    ("convmixer", "cpu"): CHANNELS_LAST,
    ("convmixer", "cuda"): CONTIGUOUS,  # not measured on CUDA yet: the default until bench_gpu.py says otherwise
    # CPU 32³ batch 4: train 85 -> 158, inference 212 -> 726 vol/s
    ("resnext", "cpu"): CHANNELS_LAST,
    ("resnext", "cuda"): CONTIGUOUS,  # not measured on CUDA yet
    # MONAI baselines, CPU 32³ batch 4: DenseNet121 train 15.2 -> 14.3, inference 70 -> 40 vol/s; ResNet-18
    # train 3.9 -> 2.3, inference 14.3 -> 8.6: contiguous. On the H200, issue 14 ran DenseNet121 channels-last
    # (540 / 1,824 vol/s) without a contiguous row: contiguous unless bench_gpu.py section layouts says otherwise.
    ("monai", "cpu"): CONTIGUOUS,
    ("monai", "cuda"): CONTIGUOUS,
}

# channels_last only for inputs whose smallest side is at least this many voxels (contiguous below: measured
# slower there, see the entry's comment); entries not listed apply at every size
MIN_SIDE: dict[tuple[str, str], int] = {("convnext", "cpu"): 64}

_ATTRIBUTE = "medconvnext_memory_format"  # set on a converted model: the layout its inputs should be given in


def layout_for(name: str, device: torch.device | str, input_size: Sequence[int] | None = None) -> str:
    """The table's layout (``"contiguous"`` or ``"channels_last"``) for the registered model ``name`` on ``device``
    and (D, H, W) inputs of ``input_size`` (None: any size).

    Looks up the model name first, then its family; unknown names and unlisted devices give ``"contiguous"``.
    """
    kind = torch.device(device).type
    key = (name, kind)
    if key not in LAYOUT_TABLE:
        try:
            key = (get_entry(name).family, kind)
        except ValueError:
            return CONTIGUOUS
    layout = LAYOUT_TABLE.get(key, CONTIGUOUS)
    if input_size is not None and layout == CHANNELS_LAST and min(input_size) < MIN_SIDE.get(key, 0):
        return CONTIGUOUS
    return layout


def preferred_memory_format(
    model: nn.Module, device: torch.device | str, input_size: Sequence[int] | None = None
) -> torch.memory_format:
    """The table's memory format for a registry-built ``model`` (its ``model_args["name"]``) on ``device`` and
    inputs of ``input_size`` (D, H, W; None: any size).

    Models without 3D convolutions, and models not built by :func:`~medconvnext.models.create_model`, run
    contiguous.
    """
    plain = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
    name = (getattr(plain, "model_args", None) or {}).get("name")
    if name is None or not any(isinstance(m, nn.Conv3d) for m in plain.modules()):
        return torch.contiguous_format
    return FORMATS[layout_for(name, device, input_size)]


def apply_memory_format(
    model: nn.Module, device: torch.device | str, input_size: Sequence[int] | None = None
) -> torch.memory_format:
    """Convert ``model``'s parameters (in place) to its preferred format on ``device`` for inputs of
    ``input_size`` (D, H, W); returns the format.

    The choice is remembered on the model, so :func:`model_memory_format` gives its inputs the same layout.
    """
    fmt = preferred_memory_format(model, device, input_size)
    model.to(memory_format=fmt)
    setattr(model, _ATTRIBUTE, CHANNELS_LAST if fmt == torch.channels_last_3d else CONTIGUOUS)
    return fmt


def model_memory_format(model: nn.Module) -> torch.memory_format:
    """The format :func:`apply_memory_format` put ``model`` in (through DDP / torch.compile wrappers);
    contiguous for a model it never saw."""
    plain = getattr(model, "module", model)
    plain = getattr(plain, "_orig_mod", plain)
    return FORMATS[getattr(plain, _ATTRIBUTE, CONTIGUOUS)]

