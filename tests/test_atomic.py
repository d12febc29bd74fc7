"""Atomic writes (hasa_flwr/data/atomic.py): whole or nothing, and readable as ``open`` would make them."""

import os
import stat

import pytest

from hasa_flwr.data.atomic import atomic_path, umask, write_text_atomic


@pytest.fixture
def mask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_s_permissions_not_private_ones(tmp_path, mask_022):
    assert umask() == 0o022
    out = write_text_atomic(tmp_path / "results.json", "{}")
    assert out.read_text() == "{}" and mode(out) == 0o644  # tempfile's own would be 0600
    with atomic_path(tmp_path / "model", folder=True) as tmp:
        (tmp / "model.json").write_text("1")
        (tmp / "sub").mkdir()
    assert mode(tmp_path / "model") == 0o755 and mode(tmp_path / "model" / "model.json") == 0o644
    assert mode(tmp_path / "model" / "sub") == 0o755
    with atomic_path(tmp_path / "model", folder=True) as tmp:  # replaces the older folder whole
        (tmp / "model.json").write_text("2")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["model.json"]
    assert (tmp_path / "model" / "model.json").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "results.json"]


def test_a_failed_write_leaves_the_old_output_and_no_temp(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "old")
    for folder in (False, True):
        with pytest.raises(RuntimeError):
            with atomic_path(tmp_path / ("d" if folder else "a.txt"), folder=folder) as tmp:
                (tmp / "x" if folder else tmp).write_text("half")
                raise RuntimeError("killed mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"
