"""fusedkat.files: atomic writes (temporary file + rename) and the early writability checks."""
from __future__ import annotations

import os
import stat

import pytest

from fusedkat.files import (OutputError, atomic_open, atomic_save, atomic_write_bytes, atomic_write_text,
                            check_writable, check_writable_dir)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_and_bytes_replace_the_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "one")
    assert p.read_text() == "one"
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    atomic_write_bytes(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError, OSError])
def test_interrupted_writer_leaves_the_previous_file_intact(tmp_path, exc):
    """A writer that raises part-way (Ctrl-C, a crash, a full disk) after writing half its data."""
    p = tmp_path / "model.pth"
    p.write_bytes(b"previous valid content" * 1000)

    def writer(fh):
        fh.write(b"half of the new fi")
        fh.flush()
        raise exc("interrupted mid-write")

    with pytest.raises(exc):
        atomic_save(p, writer)
    assert p.read_bytes() == b"previous valid content" * 1000
    assert _leftovers(tmp_path) == []  # the temporary file is gone


def test_interrupted_first_write_creates_nothing(tmp_path):
    p = tmp_path / "new.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(p, "w") as fh:
            fh.write("{")
            raise KeyboardInterrupt
    assert not p.exists() and _leftovers(tmp_path) == []


def test_permissions_are_those_of_a_plain_open(tmp_path):
    p, q = tmp_path / "atomic", tmp_path / "plain"
    atomic_write_text(p, "x")
    q.write_text("x")
    assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(q.stat().st_mode)


def test_atomic_open_rejects_append_and_read_modes(tmp_path):
    for mode in ("a", "r", "r+"):
        with pytest.raises(ValueError, match="whole files"):
            with atomic_open(tmp_path / "x", mode):
                pass


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new.json") == tmp_path / "new.json"
    assert not (tmp_path / "new.json").exists()  # creates nothing
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path)
    with pytest.raises(OutputError, match="does not exist"):
        check_writable(tmp_path / "missing" / "x.json")
    existing = tmp_path / "old.pth"
    existing.write_text("x")
    check_writable(existing)  # force=True by default
    with pytest.raises(OutputError, match="already exists; pass --force"):
        check_writable(existing, force=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_writable_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable(ro / "x.json")
        with pytest.raises(OutputError, match="not writable"):
            check_writable_dir(ro)
    finally:
        ro.chmod(0o700)


def test_check_writable_dir(tmp_path):
    d = check_writable_dir(tmp_path / "a" / "b")
    assert d.is_dir()
    with pytest.raises(OutputError, match="does not exist"):
        check_writable_dir(tmp_path / "c", create=False)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        check_writable_dir(f)
    with pytest.raises(OutputError, match="cannot create"):
        check_writable_dir(f / "sub")


def test_output_error_is_an_oserror_naming_the_path(tmp_path):
    with pytest.raises(OSError) as e:
        check_writable(tmp_path)
    assert str(tmp_path) in str(e.value)
