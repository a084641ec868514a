import numpy as np
import pytest

from nca_cli.core.errors import NCAError
from nca_cli.data.dataset import load_manifest
from nca_cli.data.split import patient_split
from nca_cli.data.writer import DatasetWriter, safe_id

from .conftest import no_leftovers

INFO = dict(
    name="t",
    kind="generic",
    modality="x",
    classes=["a"],
    spacing=[1, 1],
    spacing_unit="px",
    normalization={"method": "none", "divide_by": 255.0},
)


def _write(dst, value=0, **kw):
    with DatasetWriter(dst, **kw) as w:
        w.add_case("c", "p", np.full((4, 4, 1), value, np.uint8), np.zeros((4, 4), np.uint8))
        w.set_info(**INFO)


def test_non_empty_destination_needs_overwrite(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(NCAError, match=r"out is not empty"):
        _write(dst)
    with pytest.raises(NCAError, match="not a prepared dataset"):
        _write(dst, overwrite=True)
    assert (dst / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob("out.partial-*"))


def test_overwrite_replaces_a_prepared_dataset(tmp_path):
    dst = tmp_path / "out"
    _write(dst, value=1)
    with pytest.raises(NCAError, match="not empty"):
        _write(dst, value=2)
    _write(dst, value=2, overwrite=True)
    assert int(np.load(dst / "images" / "c.npy")[0, 0, 0]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "out") as w:
            w.add_case("c", "p", np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4), np.uint8))
            raise RuntimeError("boom")
    assert no_leftovers(tmp_path, "out")
    with pytest.raises(NCAError, match="No cases"):
        with DatasetWriter(tmp_path / "out") as w:
            w.set_info(**INFO)
    assert no_leftovers(tmp_path, "out")


def test_inconsistent_cases_are_rejected(tmp_path):
    with pytest.raises(NCAError, match="all cases of a dataset must match"):
        with DatasetWriter(tmp_path / "out") as w:
            w.add_case("a", "p", np.zeros((4, 4, 1), np.uint8), np.zeros((4, 4), np.uint8))
            w.add_case("b", "q", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
            w.set_info(**INFO)
    assert no_leftovers(tmp_path, "out")


def test_streamed_case_and_relabel(tmp_path):
    dst = tmp_path / "out"
    with DatasetWriter(dst) as w:
        image, label = w.create_case("big", "p", (40, 30), 3, np.uint8, level=1)
        image[:] = 7
        label[10:20] = 5
        lut = np.arange(256, dtype=np.uint8)
        lut[5] = 1
        w.relabel(lut)
        w.set_info(**INFO)
    manifest = load_manifest(dst)
    assert manifest["cases"][0]["level"] == 1 and manifest["cases"][0]["shape"] == [40, 30]
    assert np.unique(np.load(dst / "labels" / "big.npy")).tolist() == [0, 1]
    assert int(np.load(dst / "images" / "big.npy", mmap_mode="r")[39, 29, 2]) == 7


def test_patient_split_rules():
    cases = {f"c{i}": f"p{i // 3}" for i in range(30)}  # 10 patients, 3 cases each
    split = patient_split(cases, seed=5, val_fraction=0.1, test_fraction=0.2)
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (21, 3, 6)
    assert split == patient_split(cases, seed=5, val_fraction=0.1, test_fraction=0.2)
    assert split != patient_split(cases, seed=6, val_fraction=0.1, test_fraction=0.2)
    for part in ("val", "test"):
        assert {cases[c] for c in split[part]}.isdisjoint({cases[c] for c in split["train"]})
    one = patient_split({"a": "x", "b": "x"}, seed=0, val_fraction=0.1, test_fraction=0.2)
    assert one["train"] == ["a", "b"]
    with pytest.raises(NCAError, match="leaves nothing to train on"):
        patient_split(cases, seed=0, val_fraction=0.5, test_fraction=0.5)


def test_safe_id():
    assert safe_id("files/p10/x y.jpg") == "files_p10_x_y.jpg"
    with pytest.raises(NCAError):
        safe_id("///")
