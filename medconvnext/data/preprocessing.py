"""The resolved, concrete preprocessing of a run: stored in the run and in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PreprocessingPlan:
    """Everything the deterministic transforms need, with no 'auto' left in it."""

    orientation: str
    spacing: tuple[float, float, float]
    input_size: tuple[int, int, int]
    intensity: str
    clip: tuple[float, float] | None = None
    mean: float | None = None  # dataset statistics for clip_zscore
    std: float | None = None
    in_channels: int = 1
    crop: str = "none"  # none | body | nonzero: crop to the foreground before resampling (data/foreground.py)
    # what the plan measured, not what the transforms need (so not in the cache key): (smallest share, median share
    # of a training case's foreground box inside the input, cases cut, cases); None for plans made before it
    field_of_view: tuple[float, float, int, int] | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    def transform_dict(self) -> dict:
        """What the deterministic transforms depend on (the disk cache's key): :meth:`to_dict` less the plan's
        measurements."""
        values = self.to_dict()
        values.pop("field_of_view")
        return values

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessingPlan:
        values = dict(values)
        values["spacing"] = tuple(values["spacing"])
        values["input_size"] = tuple(values["input_size"])
        if values.get("clip") is not None:
            values["clip"] = tuple(values["clip"])
        if values.get("field_of_view") is not None:
            values["field_of_view"] = tuple(values["field_of_view"])
        return cls(**values)
