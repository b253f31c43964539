"""Shared fixtures: tiny real NIfTI volumes written with nibabel."""

from __future__ import annotations

import csv
import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data" / "lesions"
SHARED_DATA = REPO.parent / "shared" / "data"


def one_line(output: str) -> str:
    """The only non-blank line of a command's output (a user error is one line); fails the test otherwise."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


def write_volume(path: Path, data: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    """Save ``data`` as NIfTI with a diagonal affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), path)
    return path


def blob_volume(rng: np.random.Generator, bright: bool, size: int = 20) -> np.ndarray:
    """A noisy volume with (bright=True) or without a bright blob in it."""
    data = rng.normal(0, 1, (size, size, size)).astype(np.float32)
    if bright:
        c = rng.integers(6, size - 6, 3)
        data[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 3 : c[2] + 3] += 5
    return data


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    """A folder with labels.csv (image,label,subject) and 12 small volumes of two classes."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = "lesion" if i % 2 else "normal"
        write_volume(tmp_path / "img" / f"c{i:02d}.nii.gz", blob_volume(rng, label == "lesion"), (1.5, 1.5, 2.0))
        rows.append({"image": f"img/c{i:02d}.nii.gz", "label": label, "subject": f"s{i // 2}"})
    with open(tmp_path / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path


def make_dataset(root: Path, classes=("benign", "malignant"), n: int = 18, test: int = 1) -> Path:
    """``n`` small volumes, two per subject, the cases of the last ``test`` subjects marked test; labels.csv."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        k = (i + i // 6) % len(classes)  # balanced classes; a subject's two cases differ in class
        subject = i // 2
        data = blob_volume(rng, k > 0, 16) * (1 + k)
        write_volume(root / "img" / f"c{i:02d}.nii.gz", data, (1.5, 1.5, 2.0))
        rows.append({"image": f"img/c{i:02d}.nii.gz", "label": classes[k], "subject": f"s{subject}",
                     "site": f"site{subject % 4}", "split": "test" if subject >= n // 2 - test else ""})
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache_dir(tmp_path_factory, monkeypatch):
    """Disk caches and the leakage audit's hash cache go to a temporary folder, never to ~/.cache."""
    monkeypatch.setenv("MEDCONVNEXT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "medconvnext-cache"))


@pytest.fixture(autouse=True)
def _restore_locale():
    """Put the process locale back after each test: GDCM's DICOM writer (used by the tests that make DICOM
    series) switches it to C, and every later ``open()`` without an encoding would then decode ASCII (torch.compile
    reading its kernel templates fails on that)."""
    saved = locale.setlocale(locale.LC_ALL)
    yield
    locale.setlocale(locale.LC_ALL, saved)
