"""Intensity schemes: one class per name, each runs in the pipeline and describes itself for export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_volume

from medconvnext.data.intensity import INTENSITY_MODES, SCHEMES, intensity_scheme
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan


def plan(intensity: str) -> PreprocessingPlan:
    return PreprocessingPlan("RAS", (1.0, 1.0, 1.0), (8, 8, 8), intensity, clip=(0.0, 50.0), mean=20.0, std=10.0)


@pytest.mark.parametrize("name", INTENSITY_MODES)
def test_every_scheme_runs_in_the_pipeline_and_is_described_in_the_export(tmp_path, name):
    path = write_volume(tmp_path / "a.nii.gz", np.arange(512, dtype=np.float32).reshape(8, 8, 8) / 4)
    out = PreprocessingPipeline(plan(name)).deterministic()({"image": str(path)})["image"]
    expected = {"zscore": (-1.73, 1.73), "nonzero_zscore": (-1.73, 1.73), "clip_zscore": (-2.0, 3.0),
                "minmax": (0.0, 1.0), "none": (0.0, 127.75)}[name]
    torch.testing.assert_close((out.min().item(), out.max().item()), expected, atol=0.01, rtol=0)
    assert intensity_scheme(plan(name)).describe() in PreprocessingPipeline(plan(name)).describe()
    assert len({SCHEMES[n](plan(n)).describe() for n in INTENSITY_MODES}) == len(INTENSITY_MODES)


def test_unknown_scheme_and_clip_zscore_without_window_are_refused():
    with pytest.raises(ValueError, match="preprocessing.intensity must be one of"):
        intensity_scheme(plan("zcore"))
    with pytest.raises(ValueError, match="needs preprocessing.clip"):
        PreprocessingPipeline(PreprocessingPlan("RAS", (1.0, 1.0, 1.0), (8, 8, 8), "clip_zscore")).deterministic()
