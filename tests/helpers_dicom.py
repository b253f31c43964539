"""A minimal DICOM Part-10 writer for tests (explicit VR little endian, synthetic tags only): what GDCM's writer
cannot make on purpose, e.g. a RescaleSlope per slice, a multi-frame file, uint16 values above 32767."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

LONG_VRS = {"OB", "OW", "SQ", "UT", "UN"}
VR = {
    (0x0002, 0x0000): "UL", (0x0002, 0x0001): "OB", (0x0002, 0x0002): "UI", (0x0002, 0x0003): "UI",
    (0x0002, 0x0010): "UI", (0x0008, 0x0016): "UI", (0x0008, 0x0018): "UI", (0x0008, 0x0060): "CS",
    (0x0010, 0x0010): "PN", (0x0010, 0x0020): "LO", (0x0018, 0x0050): "DS", (0x0018, 0x0081): "DS",
    (0x0018, 0x0088): "DS", (0x0020, 0x000D): "UI", (0x0020, 0x000E): "UI", (0x0020, 0x0011): "IS",
    (0x0020, 0x0013): "IS", (0x0020, 0x0032): "DS", (0x0020, 0x0037): "DS", (0x0028, 0x0002): "US",
    (0x0028, 0x0004): "CS", (0x0028, 0x0008): "IS", (0x0028, 0x0010): "US", (0x0028, 0x0011): "US",
    (0x0028, 0x0030): "DS", (0x0028, 0x0100): "US", (0x0028, 0x0101): "US", (0x0028, 0x0102): "US",
    (0x0028, 0x0103): "US", (0x0028, 0x1052): "DS", (0x0028, 0x1053): "DS", (0x7FE0, 0x0010): "OW",
}
SOP = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4", "PT": "1.2.840.10008.5.1.4.1.1.128"}


def _element(tag: tuple[int, int], value) -> bytes:
    vr = VR[tag]
    if vr in ("US", "UL"):
        raw = struct.pack("<H" if vr == "US" else "<I", int(value))
    else:
        raw = bytes(value) if isinstance(value, (bytes, bytearray)) else str(value).encode("ascii")
    if len(raw) % 2:
        raw += b"\0" if vr in ("UI", "OB", "OW") else b" "
    head = struct.pack("<HH", *tag) + vr.encode()
    return head + (struct.pack("<HI", 0, len(raw)) if vr in LONG_VRS else struct.pack("<H", len(raw))) + raw


def write_dicom(path: Path, pixels: np.ndarray, tags: dict) -> Path:
    """One file; ``pixels`` (rows, cols) or (frames, rows, cols), int16 or uint16; ``tags`` {(group, elem): value}."""
    frames = np.asarray(pixels).reshape((-1,) + pixels.shape[-2:])
    signed = pixels.dtype == np.int16
    tags = dict(tags) | {(0x0028, 0x0002): 1, (0x0028, 0x0004): "MONOCHROME2", (0x0028, 0x0010): frames.shape[1],
                         (0x0028, 0x0011): frames.shape[2], (0x0028, 0x0100): 16, (0x0028, 0x0101): 16,
                         (0x0028, 0x0102): 15, (0x0028, 0x0103): int(signed),
                         (0x7FE0, 0x0010): frames.astype("<i2" if signed else "<u2").tobytes()}
    if pixels.ndim == 3:
        tags[(0x0028, 0x0008)] = frames.shape[0]
    meta = {(0x0002, 0x0001): b"\x00\x01", (0x0002, 0x0002): tags[(0x0008, 0x0016)],
            (0x0002, 0x0003): tags[(0x0008, 0x0018)], (0x0002, 0x0010): "1.2.840.10008.1.2.1"}
    body = b"".join(_element(t, meta[t]) for t in sorted(meta))
    out = b"\0" * 128 + b"DICM" + _element((0x0002, 0x0000), len(body)) + body
    out += b"".join(_element(t, tags[t]) for t in sorted(tags))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return path


def slice_tags(modality: str, series_uid: str, k: int, z: float, spacing=(2.0, 2.0), extra=None) -> dict:
    """Tags of slice k of an axial series (identity orientation) at height z mm."""
    return {(0x0008, 0x0016): SOP[modality], (0x0008, 0x0018): f"{series_uid}.{k + 1}", (0x0008, 0x0060): modality,
            (0x0010, 0x0010): "SYNTHETIC^PHANTOM", (0x0010, 0x0020): "PHANTOM001",
            (0x0020, 0x000D): "1.2.826.0.1.3680043.2.1125.7", (0x0020, 0x000E): series_uid, (0x0020, 0x0011): 1,
            (0x0020, 0x0013): k + 1, (0x0020, 0x0032): f"0\\0\\{z:g}", (0x0020, 0x0037): "1\\0\\0\\0\\1\\0",
            (0x0028, 0x0030): f"{spacing[1]:g}\\{spacing[0]:g}"} | (extra or {})


def write_series(folder: Path, stored: np.ndarray, modality: str, series_uid: str, spacing=(2.0, 2.0, 2.0),
                 per_slice=None, name: str = "slice_{k:03d}.dcm") -> list[Path]:
    """``stored`` (x, y, z) as one file per z slice; ``per_slice(k)`` gives slice k's extra tags."""
    return [write_dicom(folder / name.format(k=k), stored[:, :, k].T,
                        slice_tags(modality, series_uid, k, spacing[2] * k, spacing[:2],
                                   per_slice(k) if per_slice else None))
            for k in range(stored.shape[2])]
