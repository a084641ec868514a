import numpy as np
import pytest
import yaml

from nca_cli.core.errors import NCAError
from nca_cli.data.dataset import (
    BLOCK,
    PreparedDataset,
    foreground_blocks,
    label_masks,
    load_manifest,
)
from nca_cli.data.writer import DatasetWriter

from .conftest import assert_patient_split


def _info(**extra):
    info = dict(
        name="tiny",
        kind="pathology",
        modality="H&E",
        classes=["epithelium"],
        spacing=[0.5, 0.5],
        spacing_unit="um",
        normalization={"method": "none", "dtype": "uint8", "divide_by": 255.0},
    )
    info.update(extra)
    return info


def _write_sparse(dst, n=6, side=600):
    """n cases of side x side RGB; case k has one 3x3 foreground spot."""
    spots = {}
    with DatasetWriter(dst, seed=3, val_fraction=0.2, test_fraction=0.2) as w:
        for k in range(n):
            image = np.full((side, side, 3), k, np.uint8)
            label = np.zeros((side, side), np.uint8)
            y, x = 50 + 80 * k, side - 60 - 70 * k
            label[y : y + 3, x : x + 3] = 1
            spots[f"case{k}"] = (y, x)
            w.add_case(f"case{k}", f"patient{k // 2}", image, label)
        w.set_info(**_info())
    return spots


def test_round_trip_manifest_and_lazy_arrays(tmp_path):
    dst = tmp_path / "ds"
    _write_sparse(dst)
    manifest = load_manifest(dst)
    assert manifest["dims"] == 2 and manifest["channels"] == 3 and manifest["classes"] == ["epithelium"]
    assert manifest["synthetic"] is False and manifest["label_encoding"] == "index"
    assert [c["shape"] for c in manifest["cases"]] == [[600, 600]] * 6
    assert_patient_split(manifest)
    assert manifest["split"]["seed"] == 3
    everything = PreparedDataset(dst, "all")
    assert len(everything) == 6 and everything.ids == [f"case{k}" for k in range(6)]
    image, label = everything.image(2), everything.label("case2")
    assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
    assert image.shape == (600, 600, 3) and image.dtype == np.uint8 and int(image[0, 0, 0]) == 2
    assert label.dtype == np.uint8 and int(label.sum()) == 9
    assert np.allclose(everything.to_float(image[:1, :1]), 2 / 255)
    sizes = [len(PreparedDataset(dst, s)) for s in ("train", "val", "test")]
    assert sum(sizes) == 6 and min(sizes) >= 1
    # same seed, same split; the yaml is plain safe_load-able
    assert yaml.safe_load((dst / "dataset.yaml").read_text())["split"] == manifest["split"]


def test_sample_patch_finds_sparse_foreground(tmp_path):
    dst = tmp_path / "ds"
    spots = _write_sparse(dst)
    ds = PreparedDataset(dst, "all")
    gen = np.random.default_rng(1)
    for k in range(len(ds)):
        for _ in range(3):
            image, label = ds.sample_patch(k, 64, gen, require_foreground=True)
            assert image.shape == (64, 64, 3) and label.shape == (64, 64)
            assert label.any(), f"no foreground in patch of {ds.ids[k]} (spot at {spots[ds.ids[k]]})"
            assert not isinstance(label, np.memmap)
    torch = pytest.importorskip("torch")
    a = ds.sample_patch(1, 32, torch.Generator().manual_seed(7), require_foreground=True)
    b = ds.sample_patch(1, 32, torch.Generator().manual_seed(7), require_foreground=True)
    assert a[1].any() and all(np.array_equal(x, y) for x, y in zip(a, b))
    # without the requirement, 64-px patches of a 600-px image mostly miss a 3-px spot
    misses = sum(not ds.sample_patch(0, 64, gen)[1].any() for _ in range(20))
    assert misses >= 15


def test_sample_patch_pads_small_axes_and_3d(tmp_path):
    dst = tmp_path / "vol"
    with DatasetWriter(dst) as w:
        image = np.random.default_rng(0).random((6, 20, 30, 1)).astype(np.float32)
        label = np.zeros((6, 20, 30), np.uint8)
        label[5, 19, 29] = 1
        w.add_case("v", "p", image, label)
        w.set_info(**_info(kind="radiology", classes=["prostate"], spacing=[3, 1, 1], spacing_unit="mm", normalization={"method": "none", "divide_by": 1.0}))
    ds = PreparedDataset(dst, "all")
    img, lab = ds.sample_patch(0, (8, 16, 16), np.random.default_rng(0), require_foreground=True)
    assert img.shape == (8, 16, 16, 1) and lab.shape == (8, 16, 16)
    assert lab.sum() == 1
    assert (img[6:] == 0).all()  # depth 6 < 8: zero padding


def test_foreground_blocks_and_masks():
    label = np.zeros((2 * BLOCK + 5, BLOCK + 1), np.uint8)
    label[BLOCK + 3, BLOCK] = 2
    label[2 * BLOCK + 4, 0] = 1
    assert foreground_blocks(label).tolist() == [[1, 1], [2, 0]]
    masks = label_masks(np.array([[0, 1, 2, 3]], np.uint8), 2, "index")
    assert masks[0].tolist() == [[0, 0], [1, 0], [0, 1], [0, 0]]
    bits = label_masks(np.array([[0, 1, 2, 3]], np.uint8), 2, "bitmask")
    assert bits[0].tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]


def test_load_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(NCAError, match="No dataset.yaml"):
        load_manifest(tmp_path)
    dst = tmp_path / "ds"
    _write_sparse(dst, n=3)
    manifest = yaml.safe_load((dst / "dataset.yaml").read_text())
    del manifest["classes"], manifest["spacing"]
    (dst / "dataset.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(NCAError, match=r"dataset\.yaml lacks the key\(s\) classes, spacing"):
        PreparedDataset(dst)
    (dst / "dataset.yaml").write_text("a: [")
    with pytest.raises(NCAError, match="not valid YAML"):
        load_manifest(dst)
    with pytest.raises(NCAError, match="Unknown split"):
        PreparedDataset(dst, "training")


def test_missing_array_is_reported(tmp_path):
    dst = tmp_path / "ds"
    _write_sparse(dst, n=3)
    (dst / "labels" / "case1.npy").unlink()
    ds = PreparedDataset(dst, "all")
    with pytest.raises(NCAError, match="case1.npy"):
        ds.label("case1")
