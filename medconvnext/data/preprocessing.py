"""The resolved, concrete preprocessing of a run: stored in the run and in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocessing:
    """Everything the deterministic transforms need, with no 'auto' left in it."""

    orientation: str
    spacing: tuple[float, float, float]
    input_size: tuple[int, int, int]
    intensity: str
    clip: tuple[float, float] | None = None
    mean: float | None = None  # dataset statistics for clip_zscore
    std: float | None = None
    in_channels: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        values = dict(values)
        values["spacing"] = tuple(values["spacing"])
        values["input_size"] = tuple(values["input_size"])
        if values.get("clip") is not None:
            values["clip"] = tuple(values["clip"])
        return cls(**values)
