"""Sliding-window classification of one 3D volume.

MONAI's ``sliding_window_inference`` and TorchIO's ``GridAggregator`` stitch *dense*
outputs back into a volume and reject a classifier's (N, K) logits, so this module
tiles the volume itself:

1. pad the volume symmetrically up to ``roi_size`` on any axis where it is smaller;
2. place windows of ``roi_size`` on a regular grid (:func:`window_starts`): the window
   count per axis is MONAI's (``dense_patch_slices`` with interval ``int(roi * (1 - overlap))``),
   but the starts are spread evenly from 0 to ``size - roi`` so the grid of windows is
   uniform (the last window is flush with the end, as in MONAI) and the per-window
   probability map has an exact affine (:func:`window_map_affine`);
3. cut ``sw_batch_size`` windows at a time (views of the volume, stacked into one small
   batch), move that batch to the model's device, run the model under ``torch.no_grad``;
4. aggregate the per-window outputs into one probability vector per case.

Peak memory is bounded by ``sw_batch_size`` windows plus the model's activations for
them, never by the volume: no tensor of all windows is ever built. Only the
(n_windows, K) logits are kept, which is what the coarse window map is made of.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medconvnext.choices import Aggregation, choices
from medconvnext.data.windows import Triple, window_starts
from medconvnext.data.windows import as_overlap as _as_overlap
from medconvnext.data.windows import as_triple as _as_triple
from medconvnext.engine.devices import as_model_input
from medconvnext.models import model_memory_format

PAD_MODES = ("constant", "reflect", "replicate")

Pad = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass
class WindowResult:
    """Outcome of :func:`sliding_window_classify` for one case.

    Attributes:
        probabilities: (K,) aggregated class probabilities of the case (sums to 1).
        window_probabilities: (n_d, n_h, n_w, K) softmax of each window's logits; voxel
            (i, j, k) is the window whose start is ``grid_starts[a][i|j|k]`` on each axis.
        window_logits: (n_d, n_h, n_w, K) raw logits of each window (float32), e.g. for
            averaging logits across the folds of an ensemble.
        starts: (d, h, w) start of every window in the *padded* volume, in the same
            C order as the flattened grid.
        roi_size: the window size (D, H, W).
        pad: ((before, after),) * 3 voxels of padding added on each axis of the volume.
        attention: (n_d, n_h, n_w) MIL attention weight of each window (sum 1; :func:`sliding_window_mil`),
            None for a plain classifier.
    """

    probabilities: torch.Tensor
    window_probabilities: torch.Tensor
    window_logits: torch.Tensor
    starts: list[Triple]
    roi_size: Triple
    pad: Pad
    attention: torch.Tensor | None = None

    @property
    def grid_shape(self) -> Triple:
        """(n_d, n_h, n_w): number of windows along each axis."""
        return tuple(self.window_probabilities.shape[:3])  # type: ignore[return-value]

    def map_affine(self, affine: np.ndarray | torch.Tensor | Sequence[Sequence[float]]) -> np.ndarray:
        """Affine of the window map, given the affine of the volume that was tiled (see :func:`window_map_affine`)."""
        return window_map_affine(affine, self.starts, self.roi_size, self.pad)


def symmetric_padding(volume_size: Sequence[int], roi_size: int | Sequence[int]) -> Pad:
    """(before, after) voxels per axis that bring ``volume_size`` up to at least ``roi_size``.

    Padding is split evenly, the odd voxel going after, so the volume stays centred in the window.
    """
    size = _as_triple(tuple(volume_size), "volume_size")
    roi = _as_triple(roi_size, "roi_size")
    pad = []
    for s, r in zip(size, roi, strict=True):
        total = max(r - s, 0)
        pad.append((total // 2, total - total // 2))
    return tuple(pad)  # type: ignore[return-value]


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    """Device of the model's first parameter (or buffer); ``default`` for a parameter-free model."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return default


def _aggregate(logits: torch.Tensor, aggregation: str) -> torch.Tensor:
    """(n_windows, K) float32 logits -> (K,) case probabilities."""
    if aggregation == "mean":
        return torch.softmax(logits, dim=-1).mean(dim=0)
    if aggregation == "max":
        # per-class max over windows, renormalised to sum to 1 so the output is a distribution
        # like the other modes (argmax and ranking are unchanged by the renormalisation); the raw
        # maxima are window_probabilities.amax(dim=(0, 1, 2)).
        peak = torch.softmax(logits, dim=-1).amax(dim=0)
        return peak / peak.sum()
    if aggregation == "logit_mean":
        return torch.softmax(logits.mean(dim=0), dim=-1)
    raise ValueError(f"aggregation must be one of {', '.join(choices(Aggregation))}, got {aggregation!r}")


def sliding_window_classify(
    volume: torch.Tensor,
    model: nn.Module,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    sw_batch_size: int = 4,
    aggregation: str = "mean",
    pad_mode: str = "constant",
) -> WindowResult:
    """Classify one volume by tiling it with windows of ``roi_size`` and aggregating their outputs.

    The caller puts the model in eval mode and opens any autocast context; this function only adds
    ``torch.no_grad``. The volume stays on its own device (it may be a large CPU tensor while the
    model is on a GPU): each batch of windows is moved to the model's device, and the results are
    returned on the volume's device.

    Args:
        volume: (C, D, H, W) or (1, C, D, H, W) tensor of one case (already preprocessed).
        model: a classifier mapping (N, C, *roi_size) to (N, K) logits.
        roi_size: window size, an int or (D, H, W); the model's training patch size is the usual choice.
        overlap: fraction of a window shared with its neighbour, in [0, 1); one number or one per axis.
        sw_batch_size: windows per forward pass; bounds peak memory.
        aggregation: ``mean`` (mean of window softmax probabilities, default), ``max`` (per-class maximum
            of window probabilities, renormalised to sum to 1: "is the class anywhere"), or ``logit_mean``
            (softmax of the mean of window logits).
        pad_mode: how axes smaller than ``roi_size`` are padded (symmetrically): ``constant`` (zeros),
            ``reflect`` or ``replicate``.

    Returns:
        A :class:`WindowResult`; ``probabilities`` is (K,) float32.

    Raises:
        ValueError: on a bad shape, ``roi_size``, ``overlap``, ``sw_batch_size``, ``aggregation``,
            ``pad_mode``, or when the model does not return (N, K) logits.
    """
    if aggregation not in choices(Aggregation):
        raise ValueError(f"aggregation must be one of {', '.join(choices(Aggregation))}, got {aggregation!r}")
    tiles = _tile(volume, roi_size, overlap, sw_batch_size, pad_mode)
    device = _model_device(model, tiles.volume.device)
    chunks = []
    with torch.no_grad():
        for count, windows in _window_batches(tiles, sw_batch_size):
            logits = model(as_model_input(windows, device, model_memory_format(model)))
            if logits.ndim != 2 or logits.shape[0] != count:
                raise ValueError(
                    f"model must return (N, K) logits for N windows, got shape {tuple(logits.shape)} "
                    f"for {count} windows"
                )
            # aggregate in float32 whatever dtype autocast produced (fp16 softmax/mean lose precision)
            chunks.append(logits.float())
    window_logits = torch.cat(chunks).to(tiles.volume.device)

    return WindowResult(
        probabilities=_aggregate(window_logits, aggregation),
        window_probabilities=torch.softmax(window_logits, dim=-1).reshape(*tiles.grid_shape, -1),
        window_logits=window_logits.reshape(*tiles.grid_shape, -1),
        starts=tiles.starts,
        roi_size=tiles.roi,
        pad=tiles.pad,
    )


@dataclass
class _Tiles:
    """A (C, D, H, W) volume padded up to the window, and the grid of windows over it."""

    volume: torch.Tensor
    roi: Triple
    pad: Pad
    starts: list[Triple]
    grid_shape: Triple


def _tile(volume: torch.Tensor, roi_size: int | Sequence[int], overlap: float | Sequence[float],
          sw_batch_size: int, pad_mode: str) -> _Tiles:
    """Check the arguments of a sliding-window pass, pad ``volume`` and place the windows (ValueError when bad)."""
    if hasattr(volume, "as_tensor"):
        # a MONAI MetaTensor: drop the metadata so slicing and stacking windows stay plain tensor ops
        volume = volume.as_tensor()
    if volume.ndim == 5:
        if volume.shape[0] != 1:
            raise ValueError(
                f"volume must hold one case, got a batch of {volume.shape[0]} (shape {tuple(volume.shape)})"
            )
        volume = volume[0]
    if volume.ndim != 4:
        raise ValueError(f"volume must be (C, D, H, W) or (1, C, D, H, W), got shape {tuple(volume.shape)}")
    roi = _as_triple(roi_size, "roi_size")
    ov = _as_overlap(overlap)
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size!r}")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")

    pad = symmetric_padding(volume.shape[1:], roi)
    if pad_mode == "reflect" and any(max(p) >= s for p, s in zip(pad, volume.shape[1:], strict=True)):
        raise ValueError(
            f"pad_mode 'reflect' cannot pad a volume of {tuple(volume.shape[1:])} up to roi_size {roi} "
            "(the padding must be smaller than the volume); use 'constant' or 'replicate'"
        )
    if any(before or after for before, after in pad):
        # F.pad takes the last axis first; reflect/replicate need a batch axis for 3D padding
        flat_pad = [p for before_after in reversed(pad) for p in before_after]
        volume = F.pad(volume[None], flat_pad, mode=pad_mode)[0]
    starts = window_starts(volume.shape[1:], roi, ov)
    grid_shape = tuple(len(set(s[axis] for s in starts)) for axis in range(3))
    return _Tiles(volume, roi, pad, starts, grid_shape)  # type: ignore[arg-type]


def _window_batches(tiles: _Tiles, sw_batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(count, (count, C, *roi) windows) in C order, ``sw_batch_size`` at a time: views of the volume, stacked,
    so only these few windows are ever copied."""
    roi = tiles.roi
    for first in range(0, len(tiles.starts), sw_batch_size):
        batch_starts = tiles.starts[first : first + sw_batch_size]
        yield len(batch_starts), torch.stack(
            [tiles.volume[:, d : d + roi[0], h : h + roi[1], w : w + roi[2]] for d, h, w in batch_starts]
        )


def sliding_window_mil(
    volume: torch.Tensor,
    model: nn.Module,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    sw_batch_size: int = 4,
    pad_mode: str = "constant",
) -> WindowResult:
    """Classify one volume with a MIL model: embed every window, then pool them all at once with its attention.

    The windows are those of :func:`sliding_window_classify`; they are embedded ``sw_batch_size`` at a time
    (:meth:`~medconvnext.models.mil.MILClassifier.embed`), so peak memory is those windows' activations plus the
    (n_windows, L) embeddings, never the volume's activations. One call of the pooling head over all the
    embeddings gives the volume's logits and one attention weight per window (Ilse et al., ICML 2018), the same
    pooling as in training, over more instances. The caller puts the model in eval mode and opens autocast.

    Returns:
        A :class:`WindowResult`: ``probabilities`` (K,) the softmax of the pooled logits; ``attention``
        (n_d, n_h, n_w) the weights (sum 1); ``window_logits`` / ``window_probabilities`` each window alone
        through the head (a bag of one), for comparison.

    Raises:
        ValueError: on a bad shape, ``roi_size``, ``overlap``, ``sw_batch_size`` or ``pad_mode``.
    """
    from medconvnext.models.mil import unwrapped_mil

    mil = unwrapped_mil(model)
    tiles = _tile(volume, roi_size, overlap, sw_batch_size, pad_mode)
    device = _model_device(mil, tiles.volume.device)
    with torch.no_grad():
        embeddings = torch.cat([mil.embed(as_model_input(windows, device, model_memory_format(mil)))
                                for _, windows in _window_batches(tiles, sw_batch_size)])
        logits, attention = mil.pool(embeddings[None])
        window_logits = mil.instance_logits(embeddings).float().to(tiles.volume.device)
    grid = tiles.grid_shape
    return WindowResult(
        probabilities=torch.softmax(logits[0].float(), dim=-1).to(tiles.volume.device),
        window_probabilities=torch.softmax(window_logits, dim=-1).reshape(*grid, -1),
        window_logits=window_logits.reshape(*grid, -1),
        starts=tiles.starts,
        roi_size=tiles.roi,
        pad=tiles.pad,
        attention=attention[0].float().to(tiles.volume.device).reshape(grid),
    )


def window_map_affine(
    affine: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    starts: Sequence[Sequence[int]],
    roi_size: int | Sequence[int],
    pad: Sequence[Sequence[int]] = ((0, 0), (0, 0), (0, 0)),
) -> np.ndarray:
    """Affine (4x4, float64) of the (n_d, n_h, n_w) window map, so it overlays on the tiled volume.

    Voxel (i, j, k) of the map lands on the centre of window (i, j, k), in the world coordinates of
    ``affine`` (the affine of the volume *before* :func:`sliding_window_classify` padded it; ``pad``
    is undone here). The map's voxel spacing is the step between window starts, so each map voxel
    spans one step around its window's centre. The starts of :func:`window_starts` are
    ``round(i * step)`` with the exact step ``(size - roi) / (n - 1)``; the affine uses the exact
    step, so it places each window centre to within half a voxel of the volume (exact where the
    step is an integer). On an axis with a single window the map voxel spans the whole window.

    Args:
        affine: 4x4 voxel-to-world affine of the volume (e.g. a MetaTensor's ``.affine``).
        starts: window starts as returned in :attr:`WindowResult.starts` (or by :func:`window_starts`).
        roi_size: the window size.
        pad: ((before, after),) * 3 padding that was added before tiling (:attr:`WindowResult.pad`).
    """
    matrix = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64)
    if matrix.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {matrix.shape}")
    roi = _as_triple(roi_size, "roi_size")
    if len(starts) == 0:
        raise ValueError("starts is empty")
    grid_to_voxel = np.eye(4)
    for axis in range(3):
        axis_starts = sorted({int(s[axis]) for s in starts})
        # the first start is 0 and the last is size - roi, so this is the exact (unrounded) step
        step = (axis_starts[-1] - axis_starts[0]) / (len(axis_starts) - 1) if len(axis_starts) > 1 else float(roi[axis])
        grid_to_voxel[axis, axis] = step
        # centre of the first window, in voxels of the unpadded volume
        grid_to_voxel[axis, 3] = axis_starts[0] + (roi[axis] - 1) / 2.0 - int(pad[axis][0])
    return matrix @ grid_to_voxel
