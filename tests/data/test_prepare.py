import numpy as np
import pytest

from nca_cli.core.errors import NCAError
from nca_cli.data import KINDS, PreparedDataset, prepare

from .conftest import assert_patient_split, no_leftovers


def test_kinds():
    assert KINDS == ("msd-prostate", "peso", "cholecseg8k", "chexmask", "generic", "synthetic")


@pytest.mark.parametrize(
    "which,options,dims,channels,name",
    [
        ("radiology", dict(cases=3, size=(8, 32, 32), shape=(8, 64, 64)), 3, 1, "synthetic-radiology"),
        ("pathology", dict(cases=3, size=400), 2, 3, "synthetic-pathology"),
        ("surgery", dict(cases=3, size=(3, 27, 48), frame_size=(30, 54)), 3, 3, "synthetic-surgery"),
        ("xray", dict(cases=6, size=64, shifted=True, image_size=(64, 64)), 2, 1, "synthetic-xray-shifted"),
    ],
)
def test_synthetic_end_to_end(tmp_path, which, options, dims, channels, name):
    dst = prepare("synthetic", None, tmp_path / "ds", kind=which, seed=3, **options)
    assert (dst / f"raw-synthetic-{which}").is_dir()
    ds = PreparedDataset(dst, "all")
    m = ds.manifest
    assert m["synthetic"] is True and m["name"] == name
    assert (m["dims"], m["channels"]) == (dims, channels)
    assert m["source"]["path"] == f"raw-synthetic-{which}" and m["split"]["seed"] == 3
    assert_patient_split(m)
    assert any(ds.label(k).any() for k in range(len(ds)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_real_kind_dispatch(tmp_path):
    raw = prepare("synthetic", None, tmp_path / "first", kind="xray", cases=4, size=48) / "raw-synthetic-xray"
    ds = PreparedDataset(prepare("chexmask", raw, tmp_path / "second", val_fraction=0.25, test_fraction=0.25), "all")
    assert ds.manifest["synthetic"] is False and ds.manifest["name"] == "chexmask"
    assert ds.manifest["split"]["val_fraction"] == 0.25
    first = PreparedDataset(tmp_path / "first", "all")
    np.testing.assert_array_equal(first.label(0), ds.label(0))


def test_bad_calls(tmp_path):
    with pytest.raises(NCAError, match="Unknown dataset kind"):
        prepare("nifti", tmp_path, tmp_path / "out")
    with pytest.raises(NCAError, match=r"option 'frame_size' does not apply to `prepare chexmask`"):
        prepare("chexmask", tmp_path, tmp_path / "out", frame_size=(1, 2))
    with pytest.raises(NCAError, match="needs kind"):
        prepare("synthetic", None, tmp_path / "out")
    with pytest.raises(NCAError, match="source .* is not used"):
        prepare("synthetic", tmp_path, tmp_path / "out", kind="xray")
    with pytest.raises(NCAError, match="option 'mpp' does not apply to `prepare synthetic xray`"):
        prepare("synthetic", None, tmp_path / "out", kind="xray", mpp=0.5)
    assert no_leftovers(tmp_path, "out")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_signal_while_preparing_leaves_nothing_and_one_line(tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "nca_cli", "prepare", "synthetic", "--kind", "pathology",
                             "--cases", "400", "--size", "512", "-o", str(tmp_path / "ds"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("ds.partial-*")):               # the dataset is being built
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig)
    assert err.strip().splitlines() == [f"stopped by {sig}; nothing half-written was kept"]
    assert not list(tmp_path.glob("ds.partial-*"))
    # stopped; or, where a library swallowed the interruption, complete and still reported as stopped
    assert not (tmp_path / "ds").exists() or (tmp_path / "ds" / "dataset.yaml").is_file()
