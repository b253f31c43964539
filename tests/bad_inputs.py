"""Bad scans of every kind the validation gate must refuse, each built in a few milliseconds (tiny real files)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import blob_volume, write_volume


def good_volume(seed: int = 0, size: int = 16) -> np.ndarray:
    return blob_volume(np.random.default_rng(seed), bool(seed % 2), size)


def write_raw_nifti(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0), shape=None) -> Path:
    """A NIfTI-1 written byte by byte, so a zero pixdim or a lying shape reaches the file (nibabel would fix it)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape or data.shape)
    header.set_data_dtype(data.dtype)
    header["pixdim"][1:4] = spacing
    header["vox_offset"] = 352
    with gzip.open(path, "wb") as f:
        f.write(header.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    return path


def _truncated(path: Path) -> None:
    write_volume(path, good_volume(3))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _text(path: Path) -> None:
    path.write_text("patient notes, not an image\n", encoding="utf-8")


def _nan(path: Path) -> None:
    data = good_volume(5)
    data[3, 4, 5] = np.nan
    write_volume(path, data)


def _rgb(path: Path) -> None:
    vol = (good_volume(7) * 40 + 100).clip(0, 255).astype(np.uint8)
    rgb = np.zeros(vol.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = vol, vol // 2, 255 - vol
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(path))


# name -> (writer of a bad .nii.gz at the given path, words the one-line refusal must hold)
BAD_SCANS: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated": (_truncated, "truncated or corrupt"),
    "text_file": (_text, "unreadable"),
    "zero_spacing": (lambda p: write_raw_nifti(p, good_volume(1), (1.0, 0.0, 1.0)), "zero or negative spacing"),
    "huge_header": (lambda p: write_raw_nifti(p, good_volume(1)[:2, :2, :2], shape=(30000, 30000, 30000)),
                    "implausible size"),
    "series_4d": (lambda p: write_volume(p, np.stack([good_volume(1)] * 3, -1)), "a 4D series of 3 frames"),
    "nan_voxel": (_nan, "1 NaN/Inf voxel"),
    "all_zero": (lambda p: write_volume(p, np.zeros((16, 16, 16), np.float32)), "every voxel equals 0"),
    "one_slice": (lambda p: write_volume(p, good_volume(1)[:, :, :1]), "a single slice"),
    "rgb": (_rgb, "an RGB image"),
    "slice_2d": (lambda p: write_volume(p, good_volume(1)[:, :, 0]), "a 2D image"),
}


def write_bad(folder: Path, kind: str) -> tuple[Path, str]:
    """Write the bad scan ``kind`` as ``folder/bad_<kind>.nii.gz``; (its path, the expected reason)."""
    writer, reason = BAD_SCANS[kind]
    path = folder / f"bad_{kind}.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer(path)
    return path, reason


def good_dataset(root: Path, n: int = 8) -> Path:
    """``n`` good 16³ volumes of two classes in ``root/img`` and ``root/labels.csv``."""
    lines = ["image,label"]
    for i in range(n):
        write_volume(root / "img" / f"c{i:02d}.nii.gz", good_volume(i), (1.5, 1.5, 2.0))
        lines.append(f"img/c{i:02d}.nii.gz,{'ab'[i % 2]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
