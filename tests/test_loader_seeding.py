"""Reproducer 18 of ``shared/bugs/`` (issue 31, kind 7), rebuilt here: loader workers must not replay each other's
random augmentation. ``train`` and ``pretrain`` share one loader factory (``engine/feeding.make_loader``), which
seeds every worker; the per-epoch seeds include the rank.

16 cases carry a bright marker cube in one corner, so the flips applied to a case can be read off the octant of
its brightest voxel. With 2 workers, batch 2k comes from worker 0 and batch 2k+1 from worker 1: identical flip
patterns in every pair mean the workers share one random stream (a pair of 2-case batches is identical by chance
with probability 1/64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_inputs import affine_for, lesion, save_nifti, write_table
from typer.testing import CliRunner

import medconvnext.engine.loop as loop_mod
import medconvnext.engine.pretrain as pretrain_mod
from medconvnext.cli.main import app
from medconvnext.engine import distributed as dist
from medconvnext.engine.feeding import epoch_seed

TINY = {"model.args.dims": [8, 16, 24, 32], "model.args.depths": [1, 1, 1, 1]}


def _marker_dataset(root):
    (root / "images").mkdir(parents=True)
    rows = []
    for i, label in enumerate(["cystic"] * 8 + ["solid"] * 8):
        vol = lesion(label, seed=i)
        vol[2:6, 2:6, 2:6] = 900.0  # marker in the low corner (RAS: no reorientation)
        save_nifti(root / "images" / f"case_{i:03d}.nii.gz", vol, affine_for("RAS", (2.0, 2.0, 2.0)))
        rows.append({"image": f"images/case_{i:03d}.nii.gz", "label": label})
    write_table(root / "labels.csv", rows)
    return root


def _flips(volume) -> str:
    v = np.asarray(volume)[0]
    idx = np.unravel_index(int(np.argmax(v)), v.shape)
    return "".join(a if i >= n // 2 else "-" for a, i, n in zip("xyz", idx, v.shape, strict=True))


@pytest.mark.parametrize("command", ["pretrain", "train"])
def test_18_two_loader_workers_draw_independent_augmentations(tmp_path, monkeypatch, command):
    data = _marker_dataset(tmp_path / "data")
    batches: list[str] = []

    def record(loader):
        for batch in loader:
            batches.append(" ".join(_flips(x) for x in batch["image"]))
            yield batch

    if command == "pretrain":
        real = pretrain_mod._train_epoch
        monkeypatch.setattr(pretrain_mod, "_train_epoch", lambda model, loader, *a, **k: real(model, record(loader),
                                                                                              *a, **k))
    else:
        real_loop = loop_mod.train_epoch
        monkeypatch.setattr(loop_mod, "train_epoch", lambda lp, loader, *a, **k: real_loop(lp, record(loader), *a, **k))
    args = [command, "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "2",
            "--model", "convnext_atto", "--device", "cpu", "--set", "data.augment=flips",
            "--set", "data.num_workers=2"] + [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    pairs = [(batches[k], batches[k + 1]) for k in range(0, len(batches) - 1, 2)]
    assert len(pairs) >= 6
    identical = sum(a == b for a, b in pairs)
    assert identical <= len(pairs) // 2, batches  # was every pair (4/4 per epoch) for pretrain
    assert len(set(batches)) > 2  # the flips are drawn at all


def test_epoch_seeds_differ_per_rank_and_epoch(monkeypatch):
    seeds = set()
    for rank in range(4):
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        seeds |= {epoch_seed(0, epoch) for epoch in range(1, 6)}
    assert len(seeds) == 20
