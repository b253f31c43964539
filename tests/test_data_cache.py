"""Disk cache: unchanged -> hit; changed preprocessing -> miss; rewritten file -> miss; corrupt entry -> rebuilt."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_volume
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.dataset import make_dataset
from medconvnext.data.pipeline import PreprocessingPipeline
from medconvnext.data.preprocessing import PreprocessingPlan

torch.set_num_threads(1)
PRE = PreprocessingPlan(orientation="RAS", spacing=(1.0, 1.0, 1.0), input_size=(8, 8, 8), intensity="zscore")


def dataset(records, cache_dir, pre=PRE):
    return make_dataset(records, PreprocessingPipeline(pre).deterministic(), "disk", cache_dir=cache_dir)


def test_hits_misses_and_rebuilds(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    records = [{"image": str(path), "label": 1, "case_id": "a"}]
    cache = tmp_path / "cache"
    first = dataset(records, cache)
    item = first[0]
    assert (first.hits, first.misses) == (0, 1) and item["image"].shape == (1, 8, 8, 8) and item["label"] == 1

    again = dataset(records, cache)
    torch.testing.assert_close(again[0]["image"], item["image"])
    assert (again.hits, again.misses) == (1, 0)

    changed = dataset(records, cache, PreprocessingPlan("RAS", (1.0, 1.0, 1.0), (8, 8, 8), "none"))
    changed[0]
    assert changed.misses == 1

    stat = path.stat()
    write_volume(path, np.random.rand(8, 8, 8).astype(np.float32))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # same size: the mtime must tell
    rewritten = dataset(records, cache)
    assert not torch.equal(rewritten[0]["image"], item["image"]) and rewritten.misses == 1

    entry = rewritten.entry_path(records[0])
    entry.write_bytes(b"garbage")
    rebuilt = dataset(records, cache)
    rebuilt[0]
    assert rebuilt.misses == 1 and dataset(records, cache)[0]["image"].shape == (1, 8, 8, 8)


def test_random_part_runs_after_the_cache_and_cli(tmp_path):
    path = write_volume(tmp_path / "a.nii.gz", np.random.rand(8, 8, 8).astype(np.float32))
    records = [{"image": str(path), "label": 0, "case_id": "a"}]
    ds = make_dataset(records, PreprocessingPipeline(PRE).training("heavy"), "disk", cache_dir=tmp_path / "c")
    assert ds[0]["image"].shape == (1, 8, 8, 8) and ds[0]["image"].shape == (1, 8, 8, 8)
    assert ds.misses == 1 and ds.hits == 1
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path / "c")])
    assert info.exit_code == 0 and "1 entries" in info.output
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path / "c")])
    assert cleared.exit_code == 0 and "removed 1" in cleared.output


def test_every_pipeline_variant_has_its_own_disk_entries(tmp_path):
    """Cropped, uncropped (sliding-window validation) and patch-training pipelines cache different volumes:
    each works with the disk cache, hits on a second pass, and never serves another variant's entry."""
    path = write_volume(tmp_path / "a.nii.gz", np.random.rand(12, 12, 12).astype(np.float32))
    records = [{"image": str(path), "label": 0, "case_id": "a"}]
    cache = tmp_path / "cache"
    pipeline = PreprocessingPipeline(PRE)
    builders = {"cropped": lambda: pipeline.deterministic("cropped"),
                "uncropped": lambda: pipeline.deterministic("uncropped"),
                "patches": lambda: pipeline.training("none", patches="random")}
    shapes = {}
    for name, build in builders.items():
        first = make_dataset(records, build(), "disk", cache_dir=cache)
        shapes[name] = tuple(first[0]["image"].shape)
        again = make_dataset(records, build(), "disk", cache_dir=cache)
        again[0]
        assert (first.misses, again.hits) == (1, 1), name
    assert shapes == {"cropped": (1, 8, 8, 8), "uncropped": (1, 12, 12, 12), "patches": (1, 8, 8, 8)}
    assert len(list(cache.rglob("*.pt"))) == 3


def test_cache_keys_of_the_variants_are_those_of_the_entries_already_on_disk():
    """The key names the variant and its steps exactly as before the pipeline object existed: caches filled by
    earlier versions keep hitting, and the crop mode is part of the key."""
    pipeline = PreprocessingPipeline(PRE)
    start = ("LoadCaseImaged", "EnsureTyped", "Orientationd", "Spacingd", "NormalizeIntensityd")
    assert pipeline.deterministic().cache_key == ("cropped", *start, "ResizeWithPadOrCropd", "EnsureTyped")
    assert pipeline.deterministic(keep_meta=True).cache_key[0] == "cropped+meta"
    assert pipeline.deterministic("uncropped").cache_key == ("uncropped+meta", *start, "EnsureTyped")
    assert pipeline.training("light", "foreground").cache_key == ("padded-full-volume", *start, "SpatialPadd",
                                                                   "EnsureTyped")
    assert pipeline.training("heavy").cache_key == pipeline.deterministic().cache_key


@pytest.mark.parametrize(("patches", "inference"), [("none", "whole"), ("foreground", "sliding"),
                                                    ("random", "auto")])
def test_disk_cache_serves_every_training_and_validation_mode(tmp_path, patches, inference):
    """A second run of the same training recipe with data.cache=disk reads every volume from the cache."""
    from conftest import make_dataset as make_data

    data = make_data(tmp_path / "data", n=6, test=0)
    cache = tmp_path / "cache"
    args = ["train", "--data", str(data), "--epochs", "1", "--batch-size", "2", "--set", "train.device=cpu",
            "--set", "data.cache=disk", "--set", f"data.cache_dir={cache}", "--set", f"train.patches={patches}",
            "--set", f"inference.mode={inference}", "--set", "preprocessing.input_size=[32,32,32]"]
    first = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    entries = {path: path.stat().st_mtime_ns for path in cache.rglob("*.pt")}
    assert len(entries) == 6  # every case once: train cases in the training variant, val cases in validation's
    second = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert {path: path.stat().st_mtime_ns for path in cache.rglob("*.pt")} == entries  # nothing rewritten


def test_entries_are_float16_read_back_as_float32_and_warmed_in_worker_processes(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        path = write_volume(tmp_path / f"v{i}.nii.gz", rng.normal(0, 1, (8, 8, 8)).astype(np.float32))
        records.append({"image": str(path), "label": i % 2, "case_id": f"v{i}"})
    cache = tmp_path / "cache"
    ds = dataset(records, cache)
    assert ds.warm(workers=2) == 3 and ds.warm(workers=2) == 0  # built once, by two forked processes
    entry = torch.load(ds.entry_path(records[1]), weights_only=True)
    assert entry["image"].dtype == torch.float16  # half the bytes of float32
    item = ds[1]
    assert item["image"].dtype == torch.float32 and ds.hits == 1 and ds.misses == 0
    exact = PreprocessingPipeline(PRE).deterministic()(dict(records[1]))["image"]
    torch.testing.assert_close(item["image"], torch.as_tensor(exact), atol=5e-3, rtol=1e-3)
    # raw intensities (HU) stay float32: 1000.3 HU is not rounded to 1000.5
    raw_path = write_volume(tmp_path / "raw.nii.gz", np.full((8, 8, 8), 1000.3, np.float32))
    raw = PreprocessingPlan(orientation="RAS", spacing=(1.0, 1.0, 1.0), input_size=(8, 8, 8), intensity="none")
    raw_ds = dataset([{"image": str(raw_path), "label": 0, "case_id": "raw"}], cache, raw)
    raw_ds.warm(1)
    assert torch.load(raw_ds.entry_path(raw_ds.data[0]), weights_only=True)["image"].dtype == torch.float32
    assert float(raw_ds[0]["image"].max()) == pytest.approx(1000.3, abs=1e-3)


def test_a_memory_cache_that_would_not_fit_is_refused_before_any_work():
    from medconvnext.data.dataset import check_memory_cache
    from medconvnext.errors import UserError

    pre = PreprocessingPlan(orientation="RAS", spacing=(1.0, 1.0, 1.0), input_size=(128, 128, 128), intensity="none")
    check_memory_cache(48, pre, "memory", available=8 * 2**30)  # 0.4 GiB of 8: fine
    with pytest.raises(UserError, match=r"data.cache=memory would hold 600 volumes .*\(4.7 GiB\).* use --set "
                                         r"data.cache=disk"):
        check_memory_cache(600, pre, "memory", available=8 * 2**30)
    check_memory_cache(600, pre, "disk", available=8 * 2**30)


def test_a_disk_cache_that_would_not_fit_the_free_space_is_refused_before_any_work(tmp_path):
    from medconvnext.data.dataset import check_disk_cache
    from medconvnext.errors import UserError

    pre = PreprocessingPlan(orientation="RAS", spacing=(1.0, 1.0, 1.0), input_size=(128, 128, 128), intensity="zscore")
    check_disk_cache(100, pre, "disk", tmp_path / "new" / "cache", free=2**30)  # 0.4 GiB in float16: fits
    with pytest.raises(UserError, match=r"data.cache=disk: .*new/cache has 1.0 GiB free and the cache of 300 "
                                         r"volumes needs about 1.2 GiB"):
        check_disk_cache(300, pre, "disk", tmp_path / "new" / "cache", free=2**30)
    assert not (tmp_path / "new").exists()
    check_disk_cache(300, pre, "memory", tmp_path, free=2**30)


def test_cache_clear_memos_removes_only_the_memos(tmp_path, monkeypatch):
    from conftest import SAMPLE_DATA

    monkeypatch.setenv("MEDCONVNEXT_CACHE_DIR", str(tmp_path / "c"))
    runner = CliRunner()
    config = Path(__file__).resolve().parents[1] / "configs" / "ct.yaml"  # crop to the body: the plan scans it
    assert runner.invoke(app, ["data", "check", "--data", str(SAMPLE_DATA), "--config", str(config)]).exit_code == 0
    memos = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    # file_digests.json may be absent: digests of files written moments ago are not stored (racily clean), and
    # digests already known in this process are not stored again
    assert {"image_checks.json", "image_hashes.json"} <= {p.name for p in memos}
    assert any(p.parent.name == "foreground" for p in memos)
    (tmp_path / "c" / "notes.txt").write_text("mine")
    assert runner.invoke(app, ["cache", "clear"]).exit_code == 0  # without --memos they stay
    assert all(p.exists() for p in memos)
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and f"{len(memos)} memo files" in info.output
    cleared = runner.invoke(app, ["cache", "clear", "--memos"])
    assert cleared.exit_code == 0 and f"removed {len(memos)} memo files" in cleared.output
    assert not any(p.exists() for p in memos) and (tmp_path / "c" / "notes.txt").read_text() == "mine"
