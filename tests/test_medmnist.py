"""import-medmnist: round trip on a tiny synthetic npz, and the real AdrenalMNIST3D when it is present."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA
from typer.testing import CliRunner

from medconvnext.cli.main import app
from medconvnext.data.datalist import load_datalist
from medconvnext.data.medmnist import import_medmnist
from medconvnext.data.splits import train_val_split
from medconvnext.errors import UserError

runner = CliRunner()


def tiny_npz(path, side: int = 28, test: bool = True):
    rng = np.random.default_rng(0)
    sizes = {"train": 6, "val": 2, "test": 3} if test else {"train": 6, "val": 2}
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, side, side, side), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_round_trip(tmp_path):
    arrays = tiny_npz(tmp_path / "tiny.npz")
    result = import_medmnist(tmp_path / "tiny.npz", tmp_path / "out")
    assert result.counts == {"train": 6, "val": 2, "test": 3}
    rows = list(csv.DictReader(open(tmp_path / "out" / "labels.csv", encoding="utf-8")))
    assert [r["split"] for r in rows].count("val") == 2 and rows[1]["label"] == "1"
    image = nib.load(tmp_path / "out" / rows[7]["image"])  # the second val volume
    assert image.shape == (28, 28, 28)
    np.testing.assert_allclose(image.header.get_zooms(), [64 / 28] * 3, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(image.dataobj), arrays["val_images"][1])
    datalist = load_datalist(tmp_path / "out")
    split = train_val_split(datalist, 0.2, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (6, 2, 3)
    with pytest.raises(UserError, match="holds an earlier import; pass --overwrite"):
        import_medmnist(tmp_path / "tiny.npz", tmp_path / "out")
    assert import_medmnist(tmp_path / "tiny.npz", tmp_path / "out", overwrite=True, limit=1).counts["train"] == 1
    (tmp_path / "out" / "my_notes.txt").write_text("mine\n", encoding="utf-8")  # the user's: kept
    assert import_medmnist(tmp_path / "tiny.npz", tmp_path / "out", overwrite=True).counts["train"] == 6
    assert (tmp_path / "out" / "my_notes.txt").read_text(encoding="utf-8") == "mine\n"
    (tmp_path / "out" / "labels.csv").write_text("image,label\n", encoding="utf-8")  # edited: never replaced
    with pytest.raises(UserError, match="labels.csv changed since the import wrote it"):
        import_medmnist(tmp_path / "tiny.npz", tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "labels.csv").read_text(encoding="utf-8") == "image,label\n"
    (tmp_path / "mine").mkdir()  # a folder without an import's manifest: never written into
    (tmp_path / "mine" / "labels.csv").write_text("image,label\n", encoding="utf-8")
    with pytest.raises(UserError, match="not an earlier MedMNIST import"):
        import_medmnist(tmp_path / "tiny.npz", tmp_path / "mine", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["labels.csv"]


def test_cli_and_bad_file(tmp_path):
    tiny_npz(tmp_path / "tiny64.npz", side=64)
    result = runner.invoke(app, ["data", "import-medmnist", str(tmp_path / "tiny64.npz"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert nib.load(tmp_path / "o" / "images" / "train_0000.nii.gz").header.get_zooms() == (1.0, 1.0, 1.0)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    result = runner.invoke(app, ["data", "import-medmnist", str(tmp_path / "other.npz"), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "not a MedMNIST 3D file" in result.output
    assert not (tmp_path / "p").exists()


def test_file_without_test_split(tmp_path):
    """VesselMNIST3D's train + val file (test withheld) imports; the split has no test cases."""
    tiny_npz(tmp_path / "trainval.npz", test=False)
    npz = str(tmp_path / "trainval.npz")
    result = runner.invoke(app, ["data", "import-medmnist", npz, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "train 6, val 2 volumes" in result.output
    split = train_val_split(load_datalist(tmp_path / "o"), 0.2, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (6, 2, 0)
    arrays = dict(np.load(tmp_path / "trainval.npz"))
    np.savez(tmp_path / "half.npz", **arrays, test_images=arrays["val_images"])
    result = runner.invoke(app, ["data", "import-medmnist", str(tmp_path / "half.npz"), "--out", str(tmp_path / "h")])
    assert result.exit_code == 2 and "only one of test_images and test_labels" in result.output
    del arrays["val_labels"]
    np.savez(tmp_path / "noval.npz", **arrays)
    result = runner.invoke(app, ["data", "import-medmnist", str(tmp_path / "noval.npz"), "--out", str(tmp_path / "n")])
    assert result.exit_code == 2 and "missing key 'val_labels'" in result.output


@pytest.mark.skipif(not (SHARED_DATA / "adrenalmnist3d.npz").is_file(), reason="AdrenalMNIST3D not present")
def test_real_adrenalmnist3d(tmp_path):
    result = import_medmnist(SHARED_DATA / "adrenalmnist3d.npz", tmp_path / "adrenal")
    assert result.counts == {"train": 1188, "val": 98, "test": 298}
    zooms = nib.load(tmp_path / "adrenal" / "images" / "test_0000.nii.gz").header.get_zooms()
    np.testing.assert_allclose(zooms, [64 / 28] * 3, rtol=1e-6)
