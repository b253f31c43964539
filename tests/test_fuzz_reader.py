"""Fuzz test of the reader and the gate (issue 31, kind 9): random NIfTI headers (data types, scl_slope/inter,
pixdim, qform/sform codes and transforms, dimensions, non-finite voxels), and random DICOM series (signed or
unsigned pixels, RescaleSlope/Intercept equal or per slice, pixel spacing, slice gap and direction, orientation,
file order, a missing ImagePositionPatient).

Property: the toolkit either refuses the file (the gate's one line starts with the file's path, as ``predict``
prints it with exit code 2), or loads voxels and an affine equal to a reference decode (NIfTI: nibabel's
``get_fdata()`` and ``img.affine``; DICOM: stored value x the slice's slope + its intercept, and the affine the
tags define, as pydicom users compute it); never anything else (a crash, other values, another geometry).

CI runs a fixed set of examples (derandomised, fast); ``MEDCONVNEXT_FUZZ_EXAMPLES=2000`` runs more.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers_inputs import patch_nifti_header

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medconvnext.data.inputs import PredictionInput  # noqa: E402
from medconvnext.data.transforms import LoadCaseImaged  # noqa: E402
from medconvnext.data.validate import require_valid  # noqa: E402
from medconvnext.errors import UserError  # noqa: E402

EXAMPLES = int(os.environ.get("MEDCONVNEXT_FUZZ_EXAMPLES", "100"))
DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.float32, np.float64]
SLOPES = [np.nan, 0.0, 1.0, -1.0, 2.5, 1e-3, 1e37, np.inf]
INTERS = [0.0, 0.0, -1024.0, 0.5, np.nan, 1e38]
PIXDIMS = [None] * 8 + [0.5, 0.0, -1.0]  # None: as nibabel wrote it (the qform's spacing)


@st.composite
def transforms(draw) -> np.ndarray:
    """An affine: a signed axis permutation (or a small rotation) times spacings, plus an origin."""
    perm = draw(st.permutations([0, 1, 2]))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    spacing = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.3]), min_size=3, max_size=3))
    affine = np.zeros((4, 4))
    for axis, (world, sign, size) in enumerate(zip(perm, signs, spacing, strict=True)):
        affine[world, axis] = sign * size
    if draw(st.booleans()):
        angle = draw(st.sampled_from([0.05, 0.3]))
        c, s = np.cos(angle), np.sin(angle)
        affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ affine[:3, :3]
    affine[:3, 3] = draw(st.lists(st.sampled_from([0.0, -10.5, 64.0]), min_size=3, max_size=3))
    affine[3, 3] = 1.0
    return affine


@st.composite
def nifti_files(draw) -> dict:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(2, 6), min_size=3, max_size=3)))  # mostly a volume
    if draw(st.integers(0, 4)) == 0:  # sometimes a slice, a one-voxel-thick volume, a 4D series
        shape = draw(st.sampled_from([shape[:2], (*shape[:2], 1), (*shape, 1), (*shape, 2)]))
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    lo, hi = (max(info.min, -3000), min(info.max, 3000)) if info else (-3000, 3000)
    seed = draw(st.integers(0, 2**16))
    data = np.random.default_rng(seed).integers(lo, hi + 1, size=shape).astype(dtype)
    if info is None and draw(st.integers(0, 5)) == 0:
        data.flat[0] = draw(st.sampled_from([np.nan, np.inf, 3.0e38]))
    return {"data": data, "slope": draw(st.sampled_from(SLOPES)), "inter": draw(st.sampled_from(INTERS)),
            "pixdim": draw(st.lists(st.sampled_from(PIXDIMS), min_size=3, max_size=3)),
            "sform": (sform_code := draw(st.integers(0, 4)), sform := draw(transforms())),
            "qform": (draw(st.integers(0, 4)), sform if sform_code == 0 or draw(st.booleans()) else draw(transforms())),
            "gz": draw(st.booleans())}


def _write(folder: Path, spec: dict) -> Path:
    img = nib.Nifti1Image(spec["data"], None)
    img.set_sform(spec["sform"][1], int(spec["sform"][0]))
    img.set_qform(spec["qform"][1], int(spec["qform"][0]))
    path = folder / ("scan.nii.gz" if spec["gz"] else "scan.nii")
    nib.save(img, str(path))
    # the raw header fields nibabel would check or repair on the way out: zero and negative spacings too
    header = nib.load(str(path)).header
    pixdim = [float(header["pixdim"][1 + k]) if v is None else v for k, v in enumerate(spec["pixdim"])]
    patch_nifti_header(path, 80, "<3f", *pixdim)
    patch_nifti_header(path, 112, "<2f", spec["slope"], spec["inter"])
    return path


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(nifti_files())
def test_a_random_nifti_is_refused_naming_it_or_read_as_nibabel_reads_it(spec):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), spec)
        try:
            require_valid([PredictionInput((str(path),))])
        except UserError as exc:  # refused: one line naming the file, as predict prints it (exit 2)
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
            event("refused: " + str(exc)[len(str(path)) + 2:][:24])
            return
        event("read")
        reference = nib.load(str(path))
        loaded = LoadCaseImaged()({"image": str(path)})["image"]
        expected = np.asarray(reference.get_fdata(), dtype=np.float64).reshape(reference.shape[:3] + (-1,))
        got = np.moveaxis(np.asarray(loaded, dtype=np.float64), 0, -1).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(expected).max())))
        np.testing.assert_allclose(np.asarray(loaded.affine, dtype=np.float64), reference.affine, atol=1e-4)


# --------------------------------------------------------------------------- DICOM series: random tag sets

ORIENTATIONS = ["1\\0\\0\\0\\1\\0", "1\\0\\0\\0\\0\\-1", "0\\1\\0\\0\\0\\-1", "-1\\0\\0\\0\\1\\0",
                "0.9950042\\0.0998334\\0\\-0.0998334\\0.9950042\\0"]


@st.composite
def dicom_series(draw) -> dict:
    signed = draw(st.booleans())
    rows, cols, n = draw(st.integers(2, 5)), draw(st.integers(2, 5)), draw(st.integers(2, 5))
    lo, hi = (-2000, 3000) if signed else (0, 65535)
    seed = draw(st.integers(0, 2**16))
    stored = np.random.default_rng(seed).integers(lo, hi + 1, size=(n, rows, cols))
    rescale = st.tuples(st.sampled_from([1.0, 2.0, 0.5, 0.001234, -1.0]), st.sampled_from([0.0, -1024.0, 0.25]))
    per_slice = draw(st.booleans())
    first = draw(rescale)
    return {"stored": stored.astype(np.int16 if signed else np.uint16), "n": n,
            "rescale": [draw(rescale) if per_slice else first for _ in range(n)],
            "pixel": (draw(st.sampled_from([0.5, 1.0, 2.2])), draw(st.sampled_from([0.5, 1.0, 2.2]))),
            "gap": draw(st.sampled_from([1.0, 2.5, -3.0])), "orientation": draw(st.sampled_from(ORIENTATIONS)),
            "order": draw(st.permutations(list(range(n)))),
            "origin": draw(st.sampled_from([(0, 0, 0), (-100, 20.5, 7)])),
            "drop_position": draw(st.integers(-1, n - 1)) if draw(st.integers(0, 5)) == 0 else -1,
            "modality": draw(st.sampled_from(["CT", "MR", "PT"])), "multi_frame": draw(st.integers(0, 7)) == 0}


def _write_series(folder: Path, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Write the series (files in a shuffled order); return the reference voxels (x, y, z) and RAS affine."""
    from helpers_dicom import SOP, write_dicom

    iop = np.array([float(v) for v in spec["orientation"].split("\\")])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array(spec["origin"], dtype=float)
    if spec["multi_frame"]:  # all frames in one file, one position for all: ITK cannot place them
        write_dicom(folder / "IM0000", spec["stored"], {
            (0x0008, 0x0016): SOP[spec["modality"]], (0x0008, 0x0018): "1.2.3.9.1", (0x0008, 0x0060): spec["modality"],
            (0x0020, 0x000E): "1.2.3.9", (0x0020, 0x0037): spec["orientation"], (0x0020, 0x0032): "0\\0\\0",
            (0x0028, 0x0030): f"{spec['pixel'][0]:g}\\{spec['pixel'][1]:g}"})
    for k in range(0 if spec["multi_frame"] else spec["n"]):
        slope, intercept = spec["rescale"][k]
        position = origin + normal * spec["gap"] * k
        tags = {(0x0008, 0x0016): SOP[spec["modality"]], (0x0008, 0x0018): f"1.2.3.9.{k + 1}",
                (0x0008, 0x0060): spec["modality"], (0x0020, 0x000E): "1.2.3.9", (0x0020, 0x0013): k + 1,
                (0x0020, 0x0037): spec["orientation"], (0x0028, 0x0030): f"{spec['pixel'][0]:g}\\{spec['pixel'][1]:g}",
                (0x0028, 0x1053): f"{slope:g}", (0x0028, 0x1052): f"{intercept:g}"}
        if k != spec["drop_position"]:
            tags[(0x0020, 0x0032)] = "\\".join(f"{v:.6g}" for v in position)
        write_dicom(folder / f"IM{spec['order'][k]:04d}", spec["stored"][k], tags)
    gap = abs(spec["gap"])
    ordered = list(range(spec["n"])) if spec["gap"] > 0 else list(range(spec["n"]))[::-1]  # ascending along normal
    values = np.stack([spec["stored"][k].astype(np.float64) * spec["rescale"][k][0] + spec["rescale"][k][1]
                       for k in ordered], axis=-1)  # (rows, cols, z)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * spec["pixel"][1]  # along a row (x): column spacing
    affine[:3, 1] = iop[3:] * spec["pixel"][0]  # down a column (y): row spacing
    affine[:3, 2] = normal * gap
    affine[:3, 3] = origin + normal * spec["gap"] * ordered[0]
    affine[:2] *= -1  # LPS -> RAS
    return values.transpose(1, 0, 2), affine


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(dicom_series())
def test_a_random_dicom_series_is_refused_naming_it_or_read_as_its_tags_say(spec):
    from medconvnext.data.io import open_image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        reference, affine = _write_series(folder, spec)
        try:
            require_valid([PredictionInput((str(folder),))])
        except UserError as exc:
            assert str(exc).startswith(f"{folder}: ") and "\n" not in str(exc)
            event("refused: " + str(exc)[len(str(folder)) + 2:][:24])
            return
        event("read")
        opened = open_image(folder)
        got = np.asarray(opened.load(), dtype=np.float64)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(opened.affine, affine, atol=1e-3)
        loaded = LoadCaseImaged()({"image": str(folder)})["image"]
        np.testing.assert_allclose(np.asarray(loaded, dtype=np.float64)[0], reference, rtol=1e-5, atol=1e-3)
