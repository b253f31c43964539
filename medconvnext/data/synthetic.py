"""Synthetic chest-CT phantoms of clinical size, with a local finding: for tests, benchmarks and trying the toolkit.

A phantom is an int16 HU volume (X, Y, Z) in RAS with its affine: air (-1000 HU) around a body ellipse of soft
tissue (40 HU, noise), two lung ellipses (-850 HU), a spine (400 HU) and, for the ``nodule`` class, a soft-tissue
sphere (6-15 mm across by default) somewhere in a lung, the periphery included. Outside the scanner's circular
field of view the value is -1024 HU, as in real CT.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phantom:
    """One synthetic scan: ``hu`` (X, Y, Z) int16, ``affine`` (4, 4) voxel -> RAS mm, and the nodule's centre in
    world mm and radius in mm (None for a clear scan)."""

    hu: np.ndarray
    affine: np.ndarray
    nodule_mm: tuple[float, float, float] | None
    radius_mm: float | None


def chest_ct(shape: tuple[int, int, int] = (512, 512, 300), spacing: tuple[float, float, float] = (0.7, 0.7, 1.25),
             nodule: bool = True, seed: int = 0, radius_mm: float | None = None,
             periphery: bool = False) -> Phantom:
    """A chest CT phantom (see the module docstring). ``periphery`` puts the nodule near a lung's outer edge (the
    part a centre crop cuts first); ``radius_mm`` fixes its radius (default: 3-7.5 mm, drawn)."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing
    # world coordinates (mm) of the voxel centres, centred on the volume
    x = (np.arange(shape[0]) - shape[0] / 2) * sx
    y = (np.arange(shape[1]) - shape[1] / 2) * sy
    z = (np.arange(shape[2]) - shape[2] / 2) * sz
    fov = shape[0] * sx / 2
    half_x, half_y = 0.85 * fov * rng.uniform(0.9, 1.0), 0.6 * fov * rng.uniform(0.9, 1.0)
    hu = np.full(shape, -1000, np.int16)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    body = (xx / half_x) ** 2 + (yy / half_y) ** 2 <= 1
    lung_cx, lung_rx, lung_ry = 0.45 * half_x, 0.35 * half_x, 0.7 * half_y
    lungs = [((xx - c) / lung_rx) ** 2 + (yy / lung_ry) ** 2 <= 1 for c in (-lung_cx, lung_cx)]
    spine = (xx ** 2 + (yy + 0.7 * half_y) ** 2) <= (0.12 * half_y) ** 2
    outside_fov = xx ** 2 + yy ** 2 > fov ** 2
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs[0] | lungs[1]] = -850
    plane[spine] = 400
    plane[outside_fov] = -1024
    hu[:] = plane[:, :, None]
    for k in range(shape[2]):  # slice by slice: a full-size float64 noise volume would be 630 MB
        hu[:, :, k] += (rng.normal(0, 15, shape[:2]).astype(np.float32) * body).astype(np.int16)
    centre, radius = None, None
    if nodule:
        radius = float(radius_mm if radius_mm is not None else rng.uniform(3.0, 7.5))
        side = rng.choice([-1, 1])
        reach = rng.uniform(0.6, 0.75) if periphery else rng.uniform(0.0, 0.45)
        angle = rng.uniform(-0.5, 0.5)
        cx = side * lung_cx + side * reach * lung_rx * np.cos(angle)
        cy = reach * lung_ry * np.sin(angle)
        cz = rng.uniform(-0.3, 0.3) * shape[2] * sz
        centre = (float(cx), float(cy), float(cz))
        ball = ((x[:, None, None] - cx) ** 2 + (y[None, :, None] - cy) ** 2 + (z[None, None, :] - cz) ** 2
                <= radius ** 2)
        hu[ball] = 40
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [x[0], y[0], z[0]]
    return Phantom(hu, affine, centre, radius)


def save_phantom(phantom: Phantom, path: str) -> None:
    """Write the phantom as an int16 NIfTI (HU, no scaling)."""
    import nibabel as nib

    image = nib.Nifti1Image(phantom.hu, phantom.affine)
    image.header.set_data_dtype(np.int16)
    nib.save(image, path)
