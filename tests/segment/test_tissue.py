"""--tissue: tiles without tissue are skipped, the mask is the single pass ANDed with the tissue."""
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from nca_cli.io.tissue import detect_tissue
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs

H, W = 768, 1280


def _slide(path):
    """Glass (near-white, a little noise) with a stained region in the upper left: about 20 % tissue."""
    rng = np.random.default_rng(0)
    base = (232 + rng.integers(0, 8, (H, W, 3))).astype(np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    tissue = ((yy - 250) / 220.0) ** 2 + ((xx - 330) / 300.0) ** 2 < 1
    base[tissue] = np.stack([200 + 0 * yy[tissue], 110 + (xx[tissue] % 40), 180 + 0 * yy[tissue]], -1)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, ds in enumerate((1, 4)):
            tw.write(base[::ds, ::ds], tile=(256, 256), photometric="rgb", subfiletype=1 if k else 0,
                     resolution=(1e4 / (0.5 * ds), 1e4 / (0.5 * ds)), resolutionunit="CENTIMETER", metadata=None)
    return path, tissue


def run(src, out, model, **kw):
    segment_inputs(SegmentOptions(inputs=[str(src)], output=out, model=model, quiet=True, **kw))
    return tifffile.imread(out, level=0), json.loads(out.with_name(out.stem + ".run_metadata.json").read_text())


def test_auto_equals_the_single_pass_inside_the_tissue_and_is_empty_outside(tmp_path, models):
    src, truth = _slide(tmp_path / "slide.tif")
    full, off = run(src, tmp_path / "off.tif", models["rgb2d"], tissue="off", tiling="off")
    masked, auto = run(src, tmp_path / "auto.tif", models["rgb2d"], preview=tmp_path / "p.png")
    tissue = detect_tissue(src).pixels(slice(0, H), W, 1.0)
    assert (full[~tissue] > 0).any()                 # the model marks glass too: the AND matters
    assert np.array_equal(masked, np.where(tissue, full, 0))
    assert (tissue & truth).sum() / (tissue | truth).sum() > 0.95
    assert off["tissue"] == "off" and auto["tissue"] == "auto" and auto["mode"] == "tiled"
    assert auto["tiles_skipped"] > 0 and auto["tiles_skipped"] + auto["tiles_with_tissue"] == auto["tiles"]
    assert auto["tissue_fraction"] == pytest.approx(truth.mean(), abs=0.03)
    preview = np.array(Image.open(tmp_path / "p.png"))
    assert (np.abs(preview[..., :3].astype(int) - (0, 160, 0)).sum(-1) == 0).any()   # the tissue outline


def test_a_user_mask_image_or_geojson_limits_the_mask(tmp_path, models):
    src, _ = _slide(tmp_path / "slide.tif")
    full, _ = run(src, tmp_path / "off.tif", models["rgb2d"], tissue="off", tiling="off")
    small = np.zeros((H // 8, W // 8), np.uint8)
    small[:, : W // 16] = 255                          # the left half, at 1/8 scale
    Image.fromarray(small).save(tmp_path / "left.png")
    masked, meta = run(src, tmp_path / "left.tif", models["rgb2d"], tissue=str(tmp_path / "left.png"))
    assert np.array_equal(masked[:, : W // 2], full[:, : W // 2]) and not masked[:, W // 2:].any()
    assert meta["tissue_fraction"] == 0.5
    polygon = [[[0, 0], [W / 2, 0], [W / 2, H], [0, H], [0, 0]]]
    (tmp_path / "left.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": polygon}}]}))
    from_polygons, _ = run(src, tmp_path / "poly.tif", models["rgb2d"], tissue=str(tmp_path / "left.geojson"))
    assert np.array_equal(from_polygons, masked)
