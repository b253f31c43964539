from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA, write_volume

from medconvnext.data.datalist import load_datalist
from medconvnext.data.splits import train_val_split
from medconvnext.errors import UserError


def test_sample_data_csv_is_read_with_sorted_classes():
    datalist = load_datalist(SAMPLE_DATA)
    assert len(datalist.cases) == 60
    assert datalist.classes == ["cystic", "solid"]
    assert all(Path(c.images[0]).is_file() for c in datalist.cases)


def test_class_folders(tmp_path):
    for label in ("b", "a"):
        for i in range(2):
            write_volume(tmp_path / label / f"{label}{i}.nii.gz", np.zeros((4, 4, 4), np.float32))
    datalist = load_datalist(tmp_path)
    assert datalist.classes == ["a", "b"]
    assert [c.label for c in datalist.cases] == ["a", "a", "b", "b"]


def test_numeric_class_names_sort_numerically(tmp_path):
    lines = ["image,label"]
    for i, label in enumerate(["10", "2", "1"]):
        write_volume(tmp_path / f"x{i}.nii.gz", np.zeros((4, 4, 4), np.float32))
        lines.append(f"x{i}.nii.gz,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(lines), encoding="utf-8")
    assert load_datalist(tmp_path).classes == ["1", "2", "10"]


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("image\nimg/c00.nii.gz\n", "missing column 'label'"),
        ("image,label\nimg/nope.nii.gz,normal\nimg/c01.nii.gz,lesion\n", "row 2: image img/nope.nii.gz not found"),
        ("image,label,split\nimg/c00.nii.gz,normal,training\nimg/c01.nii.gz,lesion,\n", "split 'training'"),
        ("image,label\nimg/c00.nii.gz,normal\nimg/c02.nii.gz,normal\n", "need at least 2"),
        ("image,label\nimg/c00.nii.gz,normal\nimg/c00.nii.gz,lesion\n", "duplicate case id 'c00'"),
    ],
)
def test_bad_label_tables_name_the_problem(csv_dataset, csv_text, message):
    (csv_dataset / "labels.csv").write_text(csv_text, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_datalist(csv_dataset)


def test_missing_data_path_and_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_datalist(tmp_path / "missing")
    with pytest.raises(UserError, match="no class subfolders"):
        load_datalist(tmp_path)


def test_non_image_file_in_class_folder(tmp_path):
    write_volume(tmp_path / "a" / "x.nii.gz", np.zeros((4, 4, 4), np.float32))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(UserError, match="notes.txt: not a supported image file"):
        load_datalist(tmp_path)


def test_stratified_split_keeps_both_classes_and_is_seeded():
    datalist = load_datalist(SAMPLE_DATA)
    split = train_val_split(datalist, 0.25, seed=3)
    assert len(split.val) == 15 and len(split.train) == 45
    assert not set(split.val) & set(split.train)
    labels = {c.case_id: c.label for c in datalist.cases}
    assert sorted(labels[i] for i in split.val).count("cystic") in (7, 8)
    assert split == train_val_split(datalist, 0.25, seed=3)


def test_split_column_is_respected(csv_dataset):
    text = (csv_dataset / "labels.csv").read_text(encoding="utf-8").splitlines()
    rows = [text[0] + ",split"] + [line + ("," + ("val" if i < 4 else "test" if i < 6 else "train")) for i, line in
                                   enumerate(text[1:])]
    (csv_dataset / "labels.csv").write_text("\n".join(rows), encoding="utf-8")
    split = train_val_split(load_datalist(csv_dataset), 0.2, seed=0)
    assert split.val == ["c00", "c01", "c02", "c03"]
    assert split.test == ["c04", "c05"]
    assert len(split.train) == 6
