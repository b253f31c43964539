"""Builders of the tiny synthetic inputs of the reproducers in ``shared/bugs/`` (same logic as its ``_common.py``),
so that the tests need nothing outside the repository. Every volume holds one round lesion: "solid" (bright
throughout) or "cystic" (bright rim, dark core)."""

from __future__ import annotations

import csv
import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np


def lesion(label: str, shape=(32, 32, 32), seed: int = 0, fg: float = 400.0, bg: float = 50.0,
           centre=None) -> np.ndarray:
    """float32 volume with one sphere (radius about a third of the smallest side) in voxel space."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    c = np.array(centre if centre is not None else [(n - 1) / 2 for n in shape]) + rng.uniform(-1, 1, 3)
    r = min(shape) / 3 * rng.uniform(0.85, 1.1)
    d = np.linalg.norm(grid - c, axis=-1)
    inside = d <= r
    if label == "cystic":
        inside &= d >= r - max(2.0, r / 3)
    vol = np.where(inside, fg, bg) + rng.integers(-3, 4, size=shape) * 10
    return vol.astype(np.float32)


def affine_for(codes: str = "RAS", spacing=(2.0, 2.0, 2.0), shape=(32, 32, 32)) -> np.ndarray:
    """Voxel-to-RAS affine whose voxel axes run along ``codes`` (e.g. "LPS", "PIR"), centred on the origin."""
    world = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    a = np.zeros((4, 4))
    for ax, code in enumerate(codes):
        w, s = world[code]
        a[w, ax] = s * spacing[ax]
    a[:3, 3] = -a[:3, :3] @ (np.array(shape) - 1) / 2
    a[3, 3] = 1
    return a


def save_nifti(path: Path, data: np.ndarray, affine=None, dtype=np.int16) -> Path:
    """NIfTI with the same sform and qform (code 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = affine_for(shape=data.shape[:3]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, str(path))
    return path


def patch_nifti_header(path: Path, offset: int, fmt: str, *values) -> None:
    """Overwrite raw header bytes (little-endian file) of a .nii or .nii.gz in place."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = bytearray(f.read())
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    with opener(path, "wb") as f:
        f.write(bytes(raw))


def write_table(path: Path, rows: list[dict]) -> Path:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return path


def base_dataset(root: Path, n_per_class: int = 4, shape=(32, 32, 32), spacing=(2.0, 2.0, 2.0)) -> Path:
    """root/images/case_NNN.nii.gz + root/labels.csv (image,label)."""
    rows = []
    for i, label in enumerate(["cystic"] * n_per_class + ["solid"] * n_per_class):
        name = f"images/case_{i:03d}.nii.gz"
        save_nifti(root / name, lesion(label, shape, seed=i), affine_for("RAS", spacing, shape))
        rows.append({"image": name, "label": label})
    return write_table(root / "labels.csv", rows)


def write_dicom_series(folder: Path, volume: np.ndarray, spacing=(1.0, 1.0, 2.0), series_uid: str = "1.2.3.4",
                       z_positions=None, orientation: str = "1\\0\\0\\0\\1\\0", compress: bool = False,
                       prefix: str = "slice", x_shift_per_slice: float = 0.0) -> list[Path]:
    """volume (x, y, z) -> one .dcm per z slice through SimpleITK/GDCM (synthetic tags only)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    nz = volume.shape[2]
    z_positions = list(z_positions) if z_positions is not None else [k * spacing[2] for k in range(nz)]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    if compress:
        writer.SetUseCompression(True)
    paths = []
    for k in range(nz):
        sl = sitk.GetImageFromArray(volume[:, :, k].T.astype(np.int16))  # (y, x) array -> x by y image
        sl.SetSpacing((spacing[0], spacing[1]))
        tags = {
            "0008|0060": "CT", "0010|0010": "SYNTHETIC^PHANTOM", "0010|0020": "PHANTOM001",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7", "0020|000e": series_uid, "0020|0011": "1",
            "0008|103e": "synthetic", "0020|0013": str(k + 1),
            "0020|0032": f"{k * x_shift_per_slice}\\0\\{z_positions[k]}", "0020|0037": orientation,
            "0018|0050": str(spacing[2]), "0028|0030": f"{spacing[1]}\\{spacing[0]}",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        p = folder / f"{prefix}_{k:03d}.dcm"
        writer.SetFileName(str(p))
        writer.Execute(sl)
        paths.append(p)
    return paths


def dicom_dataset(root: Path, shape=(32, 32, 16), spacing=(1.5, 1.5, 2.0), **series) -> Path:
    """root/<class>/case_i/ with 3 good DICOM series per class; returns root (a class-folder dataset)."""
    for i, label in enumerate(["cystic"] * 3 + ["solid"] * 3):
        write_dicom_series(root / label / f"case_{i}", lesion(label, shape=shape, seed=i), spacing=spacing,
                           series_uid=f"1.2.826.0.1.3680043.2.1125.6.{i}", **series)
    return root
