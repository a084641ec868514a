import errno
import os
import subprocess
import sys
import time

import pytest

from nca_cli.core.errors import NCAError
from nca_cli.core.files import atomic_folder, atomic_path, check_writable, owner_tag, remove_partials, write_json


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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_temporaries_whose_process_is_gone_are_removed(tmp_path):
    target = tmp_path / "m.nii.gz"
    host = owner_tag().rpartition("-")[0]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead": f".m.nii.{host}-{_dead_pid()}.abcd1234.partial.nii.gz",
                 "alive": f".m.nii.{host}-{sleeper.pid}.abcd1234.partial.nii.gz",
                 "mine": f".m.nii.{owner_tag()}.abcd1234.partial.nii.gz",
                 "other_host": f".m.nii.elsewhere_{host}-{_dead_pid()}.abcd1234.partial.nii.gz",
                 "other_target": f".m.nii.x.{host}-{_dead_pid()}.abcd1234.partial.nii.gz"}
        for name in names.values():
            (tmp_path / name).write_bytes(b"x")
        assert remove_partials(target) == [tmp_path / names["dead"]]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v for k, v in names.items() if k != "dead")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_second_run_leaves_the_first_runs_temporary_alone(tmp_path):
    target = tmp_path / "m.png"
    code = ("import sys; from nca_cli.core.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp: tmp.write_bytes(b'complete')\n")
    env = os.environ | {"NCA_TEST_PAUSE_BEFORE_RENAME": "m.png:3"}
    first = subprocess.Popen([sys.executable, "-c", code, str(target)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".m.*.partial.png")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(tmp_path.glob(".m.*.partial.png")), "the first run never created its temporary file"
    assert remove_partials(target) == []              # what a second run does at its start
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert target.read_bytes() == b"complete" and list(tmp_path.iterdir()) == [target]
