#!/usr/bin/env bash
# Prepare .gpu/ (in .gitignore) for bench/bench_gpu.py on a GPU machine whose image lacks monai and nibabel and
# cannot reach a package index: their wheels (Python 3.12, x86-64), this project's wheel, and the
# AdrenalMNIST3D file. Run from the repository root, with the project's venv python; docs/benchmarks.md
# gives the command to run on the GPU machine. SimpleITK is left out (52 MB; only non-NIfTI formats need it,
# and it is imported only when one is read).
set -euo pipefail
PY=${PYTHON:-python3}
NPZ=${NPZ:-../shared/data/adrenalmnist3d.npz}
rm -rf .gpu && mkdir -p .gpu/wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/wheels "monai==$("$PY" -c 'import monai; print(monai.__version__)')" \
    "nibabel==$("$PY" -c 'import nibabel; print(nibabel.__version__)')"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels .
cp "$NPZ" .gpu/adrenalmnist3d.npz
du -sh .gpu && ls .gpu/wheels
