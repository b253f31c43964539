"""File content digests: what the caches are keyed by; memoised per size/mtime/ctime/inode, never stale."""

from __future__ import annotations

import hashlib
import os

import pytest
from bad_inputs import good_dataset

from medconvnext.data import content
from medconvnext.data.content import file_digest, file_digests
from medconvnext.data.datalist import load_datalist
from medconvnext.data.validate import CHECKS_CACHE_NAME, validate_datalist
from medconvnext.errors import UserError


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(content, "_memo", {})


def _count_hashes(monkeypatch) -> list:
    hashed = []
    real = content._hash_bytes
    monkeypatch.setattr(content, "_hash_bytes", lambda p: hashed.append(p.name) or real(p))
    return hashed


def test_digest_is_blake2b_of_the_bytes(tmp_path):
    path = tmp_path / "scan.nii"
    path.write_bytes(b"\x00\x01" * 5000)
    assert file_digest(path) == hashlib.blake2b(b"\x00\x01" * 5000, digest_size=16).hexdigest()


def test_rewrite_with_size_and_mtime_restored_changes_the_digest_even_when_memoised(tmp_path, monkeypatch):
    monkeypatch.setattr(content, "RACY_SECONDS", -1e9)  # memoise even a file written just now
    hashed = _count_hashes(monkeypatch)
    path = tmp_path / "scan.nii"
    path.write_bytes(b"a" * 4096)
    first = file_digest(path)
    assert file_digest(path) == first and hashed == ["scan.nii"]  # the second lookup is a memo hit
    monkeypatch.setattr(content, "_memo", {})
    assert file_digest(path) == first and hashed == ["scan.nii"]  # from file_digests.json
    stat = path.stat()
    path.write_bytes(b"b" * 4096)  # cp -p: same size, old mtime; only ctime tells
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_digest(path) != first and len(hashed) == 2


def test_a_racily_clean_file_is_hashed_again(tmp_path, monkeypatch):
    hashed = _count_hashes(monkeypatch)
    path = tmp_path / "scan.nii"
    path.write_bytes(b"a" * 100)  # ctime = now: within RACY_SECONDS, never memoised
    file_digest(path)
    file_digest(path)
    assert hashed == ["scan.nii", "scan.nii"]


def test_a_folder_digest_covers_every_file(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        (series / f"slice_{k}.dcm").write_bytes(bytes([k]) * 64)
    first = file_digest(series)
    (series / "slice_1.dcm").write_bytes(bytes([9]) * 64)
    second = file_digest(series)
    (series / "slice_2.dcm").unlink()
    assert len({first, second, file_digest(series)}) == 3
    with pytest.raises(OSError):
        file_digests([tmp_path / "missing.nii"])


def test_validation_results_are_cached_by_content(tmp_path, monkeypatch):
    from medconvnext.data import validate

    data = good_dataset(tmp_path / "data", n=4)
    datalist = load_datalist(data)
    validate_datalist(datalist)
    assert (content.default_memo_dir() / CHECKS_CACHE_NAME).is_file()
    inspected = []
    real = validate._inspect_image
    monkeypatch.setattr(validate, "_inspect_image", lambda p, m: inspected.append(p) or real(p, m))
    validate_datalist(datalist)
    assert inspected == []  # no voxel read the second time
    (data / "img" / "c02.nii.gz").write_bytes(b"not a scan any more")
    with pytest.raises(UserError, match="c02.nii.gz: unreadable"):
        validate_datalist(datalist)
    assert [os.path.basename(p) for p in inspected] == ["c02.nii.gz"]
