"""The preprocessing pipeline of a plan: the one object that builds every MONAI chain the toolkit runs on a scan.

A :class:`PreprocessingPipeline` is built from a :class:`PreprocessingPlan`. Every chain starts with the same
deterministic steps (load, channel first, orient, resample, normalise: :mod:`medconvnext.data.intensity`) and
ends in one of three ways, the *variants*:

- ``cropped``: pad or crop, centred, to the input size (training, ``whole`` inference, export);
- ``uncropped``: no pad/crop, the affine kept (sliding-window validation and predict, window maps, saliency);
- ``padded``: zero-pad up to at least one input size (patch training: a random crop follows).

Each comes back as a :class:`PipelineVariant`: the deterministic part (what the memory and disk caches keep),
the random part (patch crop, augmentation: runs every epoch after the cache), the disk-cache key of the
deterministic part (the variant's name and its steps: the variants cache different volumes) and the inverse
(values on the preprocessed grid back onto the scan's grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai import transforms as mt
from monai.data import MetaTensor

from medconvnext.choices import Patches, choices
from medconvnext.data.intensity import IntensityScheme, intensity_scheme
from medconvnext.data.patches import FOREGROUND_PROB, RandBagCropd, patch_crop
from medconvnext.data.preprocessing import PreprocessingPlan
from medconvnext.data.transforms import IMAGE, augmentation_transforms, geometry_transforms, load_transforms

VARIANTS = ("cropped", "uncropped", "padded")
_INVERTED = "inverted"  # the dict key the inverse works on


@dataclass
class PipelineVariant:
    """One chain of the pipeline: ``deterministic`` then ``random``, both MONAI Composes over ``{"image": ...}``.

    ``name`` is what the disk cache calls this deterministic part (``cropped``, ``cropped+meta``,
    ``uncropped+meta``, ``padded-full-volume``: the names of the cache entries written before this class existed,
    so existing caches stay valid).
    """

    name: str
    preprocessing: PreprocessingPlan
    deterministic: mt.Compose
    random: mt.Compose = field(default_factory=lambda: mt.Compose([]))
    transform: mt.Compose = field(init=False)  # the whole chain (the same transform objects as the two parts)

    def __post_init__(self) -> None:
        self.transform = mt.Compose([*self.deterministic.transforms, *self.random.transforms])

    def __call__(self, data: dict) -> dict:
        """Run the whole chain on a data dict (``image``: path or list of paths -> (C, D, H, W) tensor)."""
        return self.transform(data)

    @property
    def cache_key(self) -> tuple[str, ...]:
        """What the disk cache keys the deterministic part's output on, beside the files and the plan:
        the variant's name and the class names of its steps."""
        return (self.name, *(type(step).__name__ for step in self.deterministic.transforms))

    def set_random_state(self, seed: int) -> PipelineVariant:
        """Seed every random transform (MONAI keeps one RandomState per transform); the trainer does this per epoch."""
        self.transform.set_random_state(seed=seed)
        return self

    def to_scan_grid(self, preprocessed: MetaTensor, values: torch.Tensor) -> MetaTensor:
        """Values (C', D, H, W) on the grid of ``preprocessed`` -- the (C, D, H, W) MetaTensor this variant made
        from a scan, metadata kept -- carried back onto the scan's own grid by inverting the pad/crop, the
        resampling and the reorientation (MONAI ``Invertd``, linear interpolation). Returns a MetaTensor with
        the scan's affine.
        """
        inverse = mt.Invertd(keys=_INVERTED, transform=self.transform, orig_keys=IMAGE, nearest_interp=False,
                             to_tensor=True)
        # a MetaTensor, so that Invertd gives it the image's trace of applied transforms
        restored = inverse({IMAGE: preprocessed, _INVERTED: MetaTensor(values)})
        return restored[_INVERTED]


@dataclass(frozen=True)
class PreprocessingPipeline:
    """Every MONAI chain of one plan ``pre``: see the module docstring."""

    pre: PreprocessingPlan

    @property
    def intensity(self) -> IntensityScheme:
        """The plan's normalisation (ValueError for an unknown ``pre.intensity``)."""
        return intensity_scheme(self.pre)

    def common_steps(self) -> list[mt.Transform]:
        """Load -> orient -> resample -> normalise: the start of every variant."""
        return [*load_transforms(), *geometry_transforms(self.pre), *self.intensity.transforms()]

    def deterministic(self, variant: str = "cropped", keep_meta: bool = False) -> PipelineVariant:
        """The deterministic (cacheable) chain of ``variant`` (see the module docstring).

        ``keep_meta`` applies to ``cropped`` (saliency inverts it); ``uncropped`` always keeps the metadata
        (the affine of window maps), ``padded`` never does (its random crop follows).

        Raises:
            ValueError: an unknown variant, or a plan the intensity scheme cannot build.
        """
        steps = self.common_steps()
        if variant == "cropped":
            steps += [mt.ResizeWithPadOrCropd(IMAGE, spatial_size=self.pre.input_size),
                      mt.EnsureTyped(IMAGE, dtype="float32", track_meta=keep_meta)]
            name = "cropped+meta" if keep_meta else "cropped"
        elif variant == "uncropped":
            steps += [mt.EnsureTyped(IMAGE, dtype="float32", track_meta=True)]
            name = "uncropped+meta"
        elif variant == "padded":
            # a volume smaller than a patch on some axis is padded up to it
            steps += [mt.SpatialPadd(IMAGE, spatial_size=self.pre.input_size),
                      mt.EnsureTyped(IMAGE, dtype="float32", track_meta=False)]
            name = "padded-full-volume"
        else:
            raise ValueError(f"pipeline variant must be one of {VARIANTS}, got {variant!r}")
        return PipelineVariant(name, self.pre, mt.Compose(steps))

    def training(self, augment: str, patches: str = "none", bag_size: int = 8,
                 foreground_share: float = FOREGROUND_PROB) -> PipelineVariant:
        """The training chain: ``cropped``, or (``patches``: random | foreground) ``padded`` followed by a random
        input-size crop; then the ``augment`` preset (:func:`~medconvnext.data.transforms.augmentation_transforms`).
        ``patches: mil``: ``padded``, then a bag of ``bag_size`` crops, each augmented
        (:class:`~medconvnext.data.patches.RandBagCropd`): the image is (K, C, D, H, W).

        Raises:
            ValueError: an unknown augmentation or patch mode.
        """
        if patches not in choices(Patches):  # else an unknown mode would train as a random crop
            raise ValueError(f"train.patches must be one of {choices(Patches)}, got {patches!r}")
        base = self.deterministic("padded" if patches != "none" else "cropped")
        augmentation = augmentation_transforms(augment, self.pre.input_size)
        if patches == "mil":
            bag = RandBagCropd(IMAGE, self.pre.input_size, bag_size, foreground_share, augmentation)
            return PipelineVariant(base.name, self.pre, base.deterministic, mt.Compose([bag]))
        crop = [patch_crop(self.pre.input_size, patches)] if patches != "none" else []
        random = mt.Compose([*crop, *augmentation])
        return PipelineVariant(base.name, self.pre, base.deterministic, random)

    def describe(self) -> list[str]:
        """The ``cropped`` chain in words, one string per step (an export's ``preprocessing.json``)."""
        pre = self.pre
        return [
            "read the scan as an (x, y, z) array with its voxel-to-RAS affine (NIfTI, or ITK formats with "
            "LPS converted to RAS); several images of a case are resampled to the first and stacked as channels",
            f"reorient to {pre.orientation} (MONAI Orientation)",
            f"resample to spacing {list(pre.spacing)} mm, bilinear (MONAI Spacing)",
            self.intensity.describe(),
            f"pad (zeros) or crop, centred, to {list(pre.input_size)} (MONAI ResizeWithPadOrCrop)",
        ]
