"""Atomic writes: readers see the old file or the whole new one."""

import os

import pytest

from unrolled.files import write_atomic


def test_write_atomic_replaces(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")

    write_atomic(path, b"new")

    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_write_atomic_creates_folder(tmp_path):
    path = tmp_path / "a" / "b" / "file.txt"

    write_atomic(path, b"new")

    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch, failing):
    path = tmp_path / "file.txt"
    path.write_text("old")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, failing, interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, b"new")
    monkeypatch.undo()

    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]
    write_atomic(path, b"new")
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["file.txt"]
