"""Make sample_data/lesions: 60 small NIfTI volumes, each holding one round lesion, "solid" or "cystic".

A solid lesion is bright throughout; a cystic one is a bright wall around a dark, fluid-like core.

Each case has its own voxel spacing and axis orientation, so that the pipeline's reorientation
and resampling really run. The field of view is about 48 mm. Deterministic (seeded).

    python sample_data/make_sample_data.py            # rewrites sample_data/lesions/
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import nibabel as nib
import numpy as np

FOV_MM = 48.0
RADIUS_MM = (12.0, 18.0)
JITTER_MM = 4.0  # lesion-centred crops, as in most classification datasets
ORIENTATIONS = ["RAS", "LPS", "LAS", "RPI", "PIR", "SLA"]


def orientation_affine(codes: str, spacing: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Affine whose voxel axes point along ``codes`` (e.g. "LPS") with the given spacing, centred at 0."""
    world_axis = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.zeros((4, 4))
    for voxel_axis, code in enumerate(codes):
        axis, sign = world_axis[code]
        affine[axis, voxel_axis] = sign * spacing[voxel_axis]
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) - 1) / 2
    affine[3, 3] = 1
    return affine


def make_case(rng: np.random.Generator, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One volume (int16) and its affine."""
    spacing = rng.uniform([1.2, 1.2, 1.5], [2.0, 2.0, 3.0])
    rng.shuffle(spacing)
    shape = tuple(int(round(FOV_MM / s)) for s in spacing)
    affine = orientation_affine(ORIENTATIONS[rng.integers(len(ORIENTATIONS))], spacing, shape)
    # world coordinates (mm) of each voxel centre
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    radius = rng.uniform(RADIUS_MM[0], RADIUS_MM[1])
    centre = rng.uniform(-JITTER_MM, JITTER_MM, size=3)
    # a slightly irregular outline: the radius varies smoothly with direction
    offset = world - centre
    distance = np.linalg.norm(offset, axis=-1)
    wobble = 1 + 0.12 * np.sin(rng.uniform(1, 3) * offset[..., 0] / radius + rng.uniform(0, 6))
    inside = distance <= radius * wobble
    if label == "cystic":  # fluid-filled: a bright wall around a dark core
        inside &= distance >= radius * wobble - rng.uniform(3.0, 5.0)
    foreground = rng.uniform(300, 500)
    background = rng.uniform(40, 80)
    # coarse noise levels keep the files small once gzipped
    noise = rng.integers(-3, 4, size=shape) * 15
    volume = np.where(inside, foreground, background) + noise
    return volume.astype(np.int16), affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "lesions")
    parser.add_argument("--cases", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.cases):
        label = "solid" if i % 2 == 0 else "cystic"
        volume, affine = make_case(rng, label)
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), images / name)
        rows.append({"image": f"images/{name}", "label": label})
    with open(args.out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} cases to {args.out}")


if __name__ == "__main__":
    main()
