import errno
import os

import pytest

from nca_cli.core.errors import NCAError
from nca_cli.core.files import atomic_folder, atomic_path, check_writable, remove_partials, write_json


def test_atomic_output_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "m.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.name.endswith(".partial.nii.gz") and tmp.parent == target.parent
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").read_text().strip().startswith("{")


def test_a_full_disk_ends_in_one_sentence(tmp_path):
    with pytest.raises(NCAError, match=r"Cannot write .*m\.png: the disk is full; free disk space"):
        with atomic_path(tmp_path / "m.png") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_locations_are_refused_before_any_work(tmp_path):
    with pytest.raises(NCAError, match="/proc"):
        check_writable("/proc/m.png")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NCAError, match="not a folder|Cannot create"):
        check_writable(tmp_path / "file" / "m.png")
    check_writable(tmp_path / "new" / "m.png")        # creates the folder, leaves no file
    assert list((tmp_path / "new").iterdir()) == []


def test_partials_of_a_killed_run_are_removed(tmp_path):
    target = tmp_path / "case_mask.tif"
    stale = tmp_path / ".case_mask.abcd1234.partial.tif"
    other = tmp_path / ".case_mask2.abcd1234.partial.tif"
    stale.write_bytes(b"x")
    other.write_bytes(b"y")
    assert remove_partials(target) == [stale]
    assert other.exists() and not stale.exists()
    os.remove(other)


def test_a_folder_output_appears_only_when_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "m.ome.zarr") as tmp:
            (tmp / "0").write_text("partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(tmp_path / "m.ome.zarr") as tmp:
        (tmp / "0").write_text("done")
    assert [p.name for p in tmp_path.iterdir()] == ["m.ome.zarr"] and (tmp_path / "m.ome.zarr" / "0").read_text() == "done"
    stale = tmp_path / ".m.ome.abcd1234.partial.ome.zarr"      # what a killed run leaves
    (stale / "0").mkdir(parents=True)
    assert remove_partials(tmp_path / "m.ome.zarr") == [stale] and not stale.exists()
