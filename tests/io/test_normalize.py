"""One normalisation: an image prepared for training and the same file read by `segment` reach
the network as identical tensors."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from nca_cli import io
from nca_cli.data.dataset import PreparedDataset
from nca_cli.data.prepare import prepare
from nca_cli.inference.sources import FileSource
from nca_cli.io.normalize import Normalization, Normalizer


def _as_segment_reads_it(path, manifest_normalization):
    image = io.open_input(path)
    norm = Normalization.from_entry(manifest_normalization, image.dtype)
    source = FileSource(image, [], "average", torch.float32, normalization=norm)
    return source.read([slice(0, n) for n in image.spatial_shape])


@pytest.mark.parametrize("kind", ["rgb8", "grey16", "volume"])
def test_prepared_and_segmented_inputs_are_identical(tmp_path, kind):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for i in range(3):
        if kind == "volume":
            vol = (rng.normal(300, 80, (6, 20, 18)) * (1 + i)).astype(np.float32)
            sitk.WriteImage(sitk.GetImageFromArray(vol), str(src / "images" / f"c{i}.nii.gz"))
            sitk.WriteImage(sitk.GetImageFromArray((vol > 300).astype(np.uint8)), str(src / "masks" / f"c{i}.nii.gz"))
            continue
        if kind == "rgb8":
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(src / "images" / f"c{i}.png")
        else:
            Image.fromarray(rng.integers(0, 60000, (30, 40), dtype=np.uint16)).save(src / "images" / f"c{i}.png")
        Image.fromarray((rng.random((30, 40)) > 0.5).astype(np.uint8)).save(src / "masks" / f"c{i}.png")
    ds = PreparedDataset(prepare("generic", src, tmp_path / "ds"), "all")
    assert ds.normalization["method"] == ("none" if kind == "rgb8" else "percentile")
    for case in ds.cases:
        ext = ".nii.gz" if kind == "volume" else ".png"
        trained = torch.from_numpy(ds.to_float(ds.image(case["id"])))
        segmented = _as_segment_reads_it(src / "images" / f"{case['id']}{ext}", ds.normalization)
        assert segmented.dtype == trained.dtype == torch.float32
        assert torch.equal(segmented, trained), case["id"]


def test_percentiles_from_a_strided_sample_do_not_depend_on_the_band_size(monkeypatch):
    from nca_cli.io import normalize

    monkeypatch.setattr(normalize, "SAMPLE", 1000)
    x = np.random.default_rng(1).normal(size=(97, 53, 2)).astype(np.float32)
    whole = Normalizer.fit(Normalization("percentile"), x)
    banded = Normalizer.fit(Normalization("percentile"), lambda rows: x[rows], x.shape[:-1], 2)
    assert np.array_equal(whole.lo, banded.lo) and np.array_equal(whole.hi, banded.hi)
    out = whole(x)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


def test_how_a_models_training_normalisation_applies_to_inputs():
    uint8 = Normalization("none", divide_by=255.0).entry("uint8")
    assert Normalization.from_entry(uint8, np.uint8) == Normalization("none", divide_by=255.0)
    assert Normalization.from_entry(uint8, np.uint16).method == "percentile"    # unknown range: rescale
    pct = Normalization("percentile", 1.0, 99.0).entry("float32")
    assert Normalization.from_entry(pct, np.uint8) == Normalization("percentile", 1.0, 99.0)
    assert Normalization.from_entry(None, np.float32) == Normalization("percentile")
