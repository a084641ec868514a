import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.data import make_synthetic
from nca_cli.data.chexmask import decode_rle


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    "kind,size",
    [("pathology", 300), ("radiology", (8, 24, 24)), ("surgery", (3, 20, 36)), ("xray", 48)],
)
def test_deterministic_per_seed(tmp_path, kind, size):
    a = make_synthetic(kind, tmp_path / "a", cases=2, size=size, seed=1)
    b = make_synthetic(kind, tmp_path / "b", cases=2, size=size, seed=1)
    c = make_synthetic(kind, tmp_path / "c", cases=2, size=size, seed=2)
    assert _digest(a) == _digest(b) != _digest(c)


def test_shifted_xray_is_a_different_domain(tmp_path):
    src = make_synthetic("xray", tmp_path / "src", cases=6, size=128, seed=0)
    tgt = make_synthetic("xray", tmp_path / "tgt", cases=6, size=128, seed=0, shifted=True)

    def stats(folder):
        with open(folder / "chexmask.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        lung_level, saturated, ripple = [], [], []
        for row in rows:
            img = np.asarray(Image.open(folder / "images" / f"{row['image_id']}.png")).astype(float)
            lungs = decode_rle(row["Right Lung"], img.shape[0], img.shape[1]).astype(bool)
            lung_level.append(img[lungs].mean())
            saturated.append((img >= 250).mean())
            ripple.append(np.abs(np.diff(img[lungs].reshape(-1))).mean())
        return np.mean(lung_level), np.mean(saturated), np.mean(ripple)

    (l_src, s_src, r_src), (l_tgt, s_tgt, r_tgt) = stats(src), stats(tgt)
    assert l_tgt > l_src + 20  # gamma and the lifted black level brighten the dark lungs
    assert s_tgt > s_src + 0.005  # glare saturates a little
    assert r_tgt > r_src * 1.5  # moiré and sensor noise


def test_surgery_moves_between_frames(tmp_path):
    out = make_synthetic("surgery", tmp_path / "s", cases=1, size=(5, 45, 80), seed=0)
    clip = out / "video01" / "video01_00080"
    first = np.asarray(Image.open(clip / "frame_80_endo_color_mask.png"))
    last = np.asarray(Image.open(clip / "frame_84_endo_color_mask.png"))
    changed = (first != last).any(axis=-1).mean()
    assert 0.01 < changed < 0.6


def test_bad_requests(tmp_path):
    with pytest.raises(NCAError, match="Unknown synthetic kind"):
        make_synthetic("ultrasound", tmp_path / "x")
    with pytest.raises(NCAError, match="pathology and xray kinds only"):
        make_synthetic("radiology", tmp_path / "x", shifted=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(NCAError, match="already holds files"):
        make_synthetic("xray", tmp_path / "full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_shifted_pathology_is_photographed_with_its_mask(tmp_path):
    import tifffile

    out = make_synthetic("pathology", tmp_path / "p", cases=1, size=512, seed=0, shifted=True)
    with tifffile.TiffFile(out / "peso_training_wsi_1" / "pds_1_HE.tif") as tif:
        rgb = tif.pages[0].asarray()
        levels = len(tif.series[0].levels)
    with tifffile.TiffFile(out / "peso_training_masks" / "pds_1_HE_training_mask.tif") as tif:
        mask = tif.pages[0].asarray()
    assert rgb.shape == (512, 512, 3) and mask.shape == (512, 512) and levels >= 1
    assert set(np.unique(mask)) <= {0, 1, 2}
    plain = make_synthetic("pathology", tmp_path / "plain", cases=1, size=512, seed=0)
    with tifffile.TiffFile(plain / "peso_training_wsi_1" / "pds_1_HE.tif") as tif:
        plain_rgb = tif.pages[0].asarray()
    centre = (slice(128, 384), slice(128, 384))

    def spread(a):   # a chroma measure: the photo's tone washes colours out
        return float(np.abs(a[centre].astype(float) - a[centre].mean(axis=2, keepdims=True)).mean())

    assert spread(rgb) < 0.8 * spread(plain_rgb)
    with pytest.raises(NCAError, match="at most"):
        make_synthetic("pathology", tmp_path / "big", cases=1, size=8192, shifted=True)
