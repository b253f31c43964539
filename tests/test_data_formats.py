"""Every format gives the same preprocessed tensor as the NIfTI of the same voxels and geometry."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medconvnext.data.datalist import load_datalist
from medconvnext.data.io import read_header
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan

torch.set_num_threads(1)
# an oblique-free but flipped and anisotropic RAS affine: x runs R->L, spacing 1.5 x 1 x 2 mm
AFFINE = np.array([[-1.5, 0, 0, 10.0], [0, 1.0, 0, -5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])
PRE = PreprocessingPlan(orientation="RAS", spacing=(1.0, 1.0, 1.0), input_size=(16, 16, 16), intensity="zscore")


def volume(seed: int = 0) -> np.ndarray:
    """(x, y, z) int16 voxels with structure, so an axis flip or swap would show."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 100, (10, 8, 6)).astype(np.int16)
    data[:5, :3, :2] += 400
    return data


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def to_sitk(data: np.ndarray, affine: np.ndarray = AFFINE) -> sitk.Image:
    """The same voxels and RAS affine as a SimpleITK (LPS) image."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).reshape(-1)])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    return image


def write_dicom_series(folder: Path, image: sitk.Image) -> Path:
    """One .dcm per z slice with position/orientation tags (as SimpleITK's DicomSeriesFromArray example)."""
    folder.mkdir(parents=True)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(image.GetDepth()):
        piece = image[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0020|000e": series,
            "0020|000d": series + ".0",
            "0008|0018": f"{series}.{z + 1}",
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0037": "\\".join(str(v) for v in (*direction[0::3], *direction[1::3])),
            "0018|0050": str(image.GetSpacing()[2]),
            "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{z:03d}.dcm"))
        writer.Execute(piece)
    return folder


def preprocessed(path: str | list[str], pre: PreprocessingPlan = PRE) -> torch.Tensor:
    return PreprocessingPipeline(pre).deterministic()({"image": path})["image"]


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd", "dicom"])
def test_simpleitk_formats_match_nifti(tmp_path, suffix):
    data = volume()
    reference = preprocessed(str(write_nifti(tmp_path / "ref.nii.gz", data)))
    if suffix == "dicom":
        path = write_dicom_series(tmp_path / "series", to_sitk(data))
    else:
        path = tmp_path / f"img{suffix}"
        sitk.WriteImage(to_sitk(data), str(path))
    out = preprocessed(str(path))
    assert out.shape == reference.shape == (1, 16, 16, 16)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    header, ref_header = read_header(path), read_header(tmp_path / "ref.nii.gz")
    if suffix == "dicom":
        # DICOM slices always stack along row x column: our left-handed grid comes back with z reversed
        # (same voxels in the world, so the preprocessed tensors above agree)
        assert header.world_spacing() == pytest.approx(ref_header.world_spacing())
    else:
        np.testing.assert_allclose(header.affine, ref_header.affine, atol=1e-4)


def test_several_images_are_resampled_to_the_first_and_stacked(tmp_path):
    first = write_nifti(tmp_path / "t1.nii.gz", volume(0))
    # the second sequence has half the resolution over the same field of view
    coarse = AFFINE.copy()
    coarse[:3, :3] *= 2
    coarse[:3, 3] += np.array([-0.75, 0.5, 1.0])  # voxel centres of the coarse grid
    second = write_nifti(tmp_path / "t2.mha.nii.gz", volume(1)[::2, ::2, ::2].copy(), coarse)
    out = preprocessed([str(first), str(second)], PreprocessingPlan("RAS", (1.0, 1.0, 1.0), (16, 16, 16), "zscore",
                                                                in_channels=2))
    assert out.shape == (2, 16, 16, 16)
    torch.testing.assert_close(out[:1], preprocessed(str(first)), atol=1e-4, rtol=1e-4)
    assert out[1].std() > 0


def test_csv_with_several_image_columns_and_dicom_class_folders(tmp_path):
    for i in range(4):
        write_nifti(tmp_path / f"a{i}_t1.nii.gz", volume(i))
        write_nifti(tmp_path / f"a{i}_t2.nii.gz", volume(i + 10))
    with open(tmp_path / "labels.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["image_t1", "image_t2", "label"])
        writer.writerows([[f"a{i}_t1.nii.gz", f"a{i}_t2.nii.gz", "x" if i % 2 else "y"] for i in range(4)])
    datalist = load_datalist(tmp_path / "labels.tsv")
    assert [len(c.images) for c in datalist.cases] == [2, 2, 2, 2]
    assert datalist.cases[0].case_id == "a0_t1"

    root = tmp_path / "folders"
    write_dicom_series(root / "cls_a" / "patient1", to_sitk(volume()))
    write_nifti((root / "cls_b").mkdir(parents=True) or root / "cls_b" / "p2.nii.gz", volume())
    folders = load_datalist(root)
    assert [(c.case_id, c.label) for c in folders.cases] == [("patient1", "cls_a"), ("p2", "cls_b")]
