"""Reproducer 18 of ``shared/bugs/`` (issue 31, kind 7), rebuilt here: loader workers must not replay each other's
random augmentation. ``train`` and ``pretrain`` share one loader factory (``engine/feeding.make_loader``), which
seeds every worker, and one epoch loop (``engine/loop``), whose per-epoch seeds include the rank (issue 29: both
drifted in pretrain's own copy of the loop).

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
from medconvnext.cli.main import app
from medconvnext.config import Config, apply_overrides
from medconvnext.engine import distributed as dist
from medconvnext.engine.feeding import epoch_seed
from medconvnext.engine.pretrain import PretrainOptions, pretrain

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


def _record_flips(monkeypatch) -> list[str]:
    """The flip pattern of every case of every training batch, batch by batch, as the one loop draws them."""
    batches: list[str] = []

    def record(loader):
        for batch in loader:
            batches.append(" ".join(_flips(x) for x in batch["image"]))
            yield batch

    real = loop_mod.train_epoch
    monkeypatch.setattr(loop_mod, "train_epoch", lambda lp, loader, *a, **k: real(lp, record(loader), *a, **k))
    return batches


@pytest.mark.parametrize("command", ["pretrain", "train"])
def test_18_two_loader_workers_draw_independent_augmentations(tmp_path, monkeypatch, command):
    data = _marker_dataset(tmp_path / "data")
    batches = _record_flips(monkeypatch)
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


def test_pretrain_ranks_draw_different_augmentations(tmp_path, monkeypatch):
    # one process posing as rank 0, then as rank 1 of a torchrun job (rank 1 writes nothing): the same case order
    # (no sampler outside DDP), so the flips differ only if the epoch's augmentation seed includes the rank;
    # pretrain's own seed once omitted it, and every rank augmented alike
    data = _marker_dataset(tmp_path / "data")
    overrides = {"data.path": str(data), "model.name": "convnext_atto", **TINY, "train.device": "cpu",
                 "train.epochs": 1, "train.batch_size": 2, "data.augment": "flips", "data.num_workers": 0}
    batches = _record_flips(monkeypatch)
    flips = {}
    for rank in (0, 1):
        monkeypatch.setattr(dist, "rank", lambda rank=rank: rank)
        pretrain(apply_overrides(Config(), overrides), tmp_path / f"rank{rank}", PretrainOptions())
        flips[rank] = batches.copy()
        batches.clear()
    assert len(flips[0]) == len(flips[1]) == 8 and len(set(flips[0])) > 2
    assert flips[0] != flips[1]
