"""What the checks before training cost per scan, in decodes of that scan (one clinical-size chest CT phantom).

A cold ``train`` or ``data check`` validates every scan and then audits it for leakage (a hash of its voxels)
before planning and caching. Each step is timed against one plain decode of the same file in the same run
(``read_voxels``: nibabel, int16, 512 x 512 x 300), so the ratios hold on a loaded machine:

- ``validate``: the data checks of one scan (header, voxels, values), caches cold;
- ``audit hash``: the leakage audit's voxel hash of a scan the checks have not seen;
- ``validate + audit``: both in sequence, as ``train`` runs them (the audit takes the hash the checks made).

    python bench/bench_reads.py [--shape 512 512 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDCONVNEXT_CACHE_DIR"] = str(Path(tmp) / "cache")  # cold memos, this run only
        from medconvnext.data import leakage, validate
        from medconvnext.data.synthetic import chest_ct, save_phantom

        scan = Path(tmp) / "ct.nii.gz"
        save_phantom(chest_ct(tuple(args.shape), (0.7, 0.7, 1.25), seed=1), str(scan))

        def cold() -> None:
            leakage._memo.clear()
            for name in ("image_hashes.json", validate.CHECKS_CACHE_NAME):
                (Path(tmp) / "cache" / name).unlink(missing_ok=True)

        def both() -> None:
            validate.inspect_images([scan])
            leakage.image_hashes([scan])

        steps = {"decode (read_voxels)": lambda: leakage.read_voxels(scan),
                 "validate": lambda: validate.inspect_images([scan]),
                 "audit hash": lambda: leakage.image_hashes([scan]),
                 "validate + audit": both}
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                cold()
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        decode = min(times["decode (read_voxels)"])
        print(f"scan {args.shape}, best of {args.repeats}")
        for name, values in times.items():
            print(f"{name:22s} {min(values):6.2f} s  {min(values) / decode:5.2f} decodes")


if __name__ == "__main__":
    main()
