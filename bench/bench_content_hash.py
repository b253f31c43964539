"""What keying the caches by content costs: BLAKE2b of a CT-sized file's bytes against reading that file.

Builds a 512x512x300 int16 CT-like volume (air at -1000 HU around a body ellipse of soft tissue with noise, a
spine-like bright rod; it compresses about as a real CT does), saves it as ``.nii.gz`` (nibabel's default gzip
level) and as ``.nii``, and times, each the median of ``--repeats`` runs with the file in the page cache:

- ``hash``: :func:`medconvnext.data.content._hash` (BLAKE2b-128 of the file's bytes, 1 MiB chunks): what the
  first lookup of a file costs;
- ``memo``: :func:`medconvnext.data.content.file_digest` once memoised (stat calls only): every later lookup;
- ``read``: ``np.array(nib.load(path).dataobj)``: decompressing and decoding the voxels, the least that a disk
  cache hit saves (the resampling and normalisation it also saves are not counted).

    python bench/bench_content_hash.py [--repeats 3] [--keep DIR]

Prints a table and writes bench/results/content_hash.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (512, 512, 300)
RESULTS = Path(__file__).resolve().parent / "results" / "content_hash.json"


def ct_like_volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """int16 HU: air outside an elliptic body (soft tissue ~40 HU, noise sd 20), a bone rod (~700 HU)."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    y = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 <= 1
    bone = (x / 0.08) ** 2 + ((y - 0.35) / 0.08) ** 2 <= 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[bone] = 700
    volume = np.empty(shape, dtype=np.int16)
    for z in range(shape[2]):  # slice by slice: the noise is the expensive part, keep the memory flat
        noise = rng.normal(0, 20, shape[:2]).astype(np.int16)
        volume[:, :, z] = plane + np.where(body, noise, noise // 10)
    return volume


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path: Path, repeats: int) -> dict:
    from medconvnext.data import content

    path.read_bytes()  # into the page cache: every timing below sees the same (warm) state
    hash_s = _median_seconds(lambda: content._hash(path), repeats)
    # np.array copies: an uncompressed .nii is otherwise only memory-mapped, not read
    read_s = _median_seconds(lambda: np.array(nib.load(str(path)).dataobj), repeats)
    memo_dir = path.parent / "memo"
    os.utime(path, (time.time() - 60, time.time() - 60))  # mtime only; ctime stays: just past the racy window
    time.sleep(content.RACY_SECONDS + 0.1)
    content.file_digest(path, memo_dir)
    memo_s = _median_seconds(lambda: content.file_digest(path, memo_dir), repeats)
    return {"file": path.name, "bytes": path.stat().st_size, "hash_s": hash_s, "read_s": read_s, "memo_s": memo_s,
            "hash_over_read": hash_s / read_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the files here (default: a temporary folder, removed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        volume = ct_like_volume()
        affine = np.diag([0.7, 0.7, 1.0, 1.0])
        rows = []
        for name in ("ct.nii.gz", "ct.nii"):
            path = folder / name
            nib.save(nib.Nifti1Image(volume, affine), str(path))
            rows.append(measure(path, args.repeats))
    print(f"{'file':<10} {'MiB':>7} {'hash s':>8} {'read s':>8} {'hash/read':>10} {'memo ms':>8}")
    for r in rows:
        print(f"{r['file']:<10} {r['bytes'] / 2**20:>7.1f} {r['hash_s']:>8.3f} {r['read_s']:>8.3f} "
              f"{r['hash_over_read']:>10.3f} {r['memo_s'] * 1000:>8.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"shape": SHAPE, "dtype": "int16", "repeats": args.repeats,
                                   "machine": platform.platform(), "cpu_count": os.cpu_count(), "rows": rows},
                                  indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
