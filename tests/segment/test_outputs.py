"""Nothing lost, nothing half-written: every output name is checked before any work, the run
metadata is written last and names its output, and --continue trusts complete results only."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs

from .conftest import shifted_images


def run(inputs, out, model, **kw):
    kw.setdefault("quiet", True)
    return segment_inputs(SegmentOptions(inputs=[str(i) for i in inputs], output=out, model=model, **kw))


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nca_cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def png(tmp_path, rgb_image):
    path = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(path)
    return path


def _unchanged(folder, before):
    return sorted(p.name for p in folder.iterdir()) == before


def test_output_equal_to_the_input_is_refused(tmp_path, models, png):
    original = png.read_bytes()
    with pytest.raises(NCAError, match=r"mask of .*a\.png would overwrite the input"):
        run([png], png, models["rgb2d"])
    assert png.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_preview_or_uncertainty_on_the_mask_is_refused(tmp_path, models, png):
    with pytest.raises(NCAError, match="would both be written to"):
        run([png], tmp_path / "m.png", models["rgb2d"], preview=tmp_path / "m.png")
    with pytest.raises(NCAError, match="would both be written to"):
        run([png], tmp_path / "m.tif", models["rgb2d"], ensemble=2, uncertainty=tmp_path / "m.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_inputs_with_the_same_stem_are_refused_before_any_work(tmp_path, models, rgb_image):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb_image).save(folder / "case.png")
    Image.fromarray(rgb_image).save(folder / "case.jpg")
    with pytest.raises(NCAError, match=r"case\.(png|jpg) and .*case\.(png|jpg) would both be written to .*case_mask\.png"):
        run([folder], tmp_path / "out", models["rgb2d"])
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_metadata_is_named_after_its_output_and_not_overwritten(tmp_path, models, png):
    out = tmp_path / "out"
    run([png], out / "first.png", models["rgb2d"])
    run([png], out / "second.png", models["rgb2d"], seed=3)
    first = json.loads((out / "first.run_metadata.json").read_text())
    second = json.loads((out / "second.run_metadata.json").read_text())
    assert first["seed"] == 0 and second["seed"] == 3
    assert first["outputs"] == [str(out / "first.png")] and first["output_bytes"][str(out / "first.png")] > 0


def test_wrong_suffix_and_unwritable_location_fail_before_any_work(tmp_path, models, png):
    for bad, fragment in ((tmp_path / "m.jpg", r"mask of .*a\.png to .*m\.jpg: use a \.png / \.tif / \.tiff"),
                          (tmp_path / "m.png", r"preview of .*a\.png to .*p\.jpg: use a \.png")):
        with pytest.raises(NCAError, match=fragment):
            run([png], bad, models["rgb2d"], preview=tmp_path / "p.jpg" if bad.suffix == ".png" else None)
    proc = cli("segment", png, "-o", "/proc/m.png", "-m", models["rgb2d"])
    assert proc.returncode == 1 and "/proc" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("segment", png, "-o", tmp_path / "m.png", "-m", models["rgb2d"], "--preview", "/proc/p.png")
    assert proc.returncode == 1 and "/proc" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_overlay_without_a_video_says_what_it_is_for(tmp_path, models, png):
    with pytest.raises(NCAError, match="--overlay writes an mp4 of a video"):
        run([png], tmp_path / "m.png", models["rgb2d"], overlay=tmp_path / "o.mp4")


def test_continue_trusts_complete_results_only_and_clears_partials(tmp_path, models, rgb_image):
    folder = shifted_images(tmp_path / "in", rgb_image, 3, axis=1)
    out = tmp_path / "out"
    run([folder], out, models["rgb2d"])
    # a killed run: the mask of img1 is there but its metadata (written last) is not; img2 left a partial
    (out / "img1_mask.run_metadata.json").unlink()
    stale = out / ".img2_mask.abcdefgh.partial.png"
    stale.write_bytes(b"half")
    (out / "img2_mask.png").write_bytes(b"changed since")      # an output that no longer matches its record
    res = run([folder], out, models["rgb2d"], resume=True)
    assert [r["status"] for r in res] == ["skipped (complete)", "done", "done"]
    assert not stale.exists() and (out / "img1_mask.run_metadata.json").exists()
    assert np.asarray(Image.open(out / "img2_mask.png")).shape == rgb_image.shape[:2]


def test_nan_in_nifti_is_refused(tmp_path, models):
    vol = np.ones((4, 8, 8), np.float32)
    vol[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "nan.nii.gz"))   # ITK reads NaN back as 0
    with pytest.raises(NCAError, match=r"nan\.nii\.gz contains NaN or Inf"):
        run([tmp_path / "nan.nii.gz"], tmp_path / "m.nii.gz", models["gray3d"])
    inf = np.ones((4, 8, 8), np.float64)
    inf[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(inf), str(tmp_path / "inf.nii"))
    with pytest.raises(NCAError, match="NaN or Inf"):
        run([tmp_path / "inf.nii"], tmp_path / "m2.nii.gz", models["gray3d"])


def test_nan_weights_are_refused_at_load(tmp_path, models, png):
    import torch

    from nca_cli.models import checkpoint

    payload = checkpoint.load(models["rgb2d"])
    name = next(k for k in payload["state_dict"] if k.endswith("fc0.weight"))
    payload["state_dict"][name][0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(payload, bad)
    with pytest.raises(NCAError, match=r"nan\.pt holds NaN or Inf weights .*fc0\.weight"):
        run([png], tmp_path / "m.png", bad)


def test_truncated_pyramidal_tiff_ends_in_one_sentence(tmp_path, models):
    import tifffile

    base = np.random.default_rng(1).integers(0, 255, (600, 700, 3), dtype=np.uint8)
    src = tmp_path / "slide.tif"
    with tifffile.TiffWriter(src, bigtiff=True) as tw:
        tw.write(base, tile=(256, 256), photometric="rgb", compression="zlib", subifds=1)
        tw.write(base[::2, ::2], tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    proc = cli("segment", src, "-o", tmp_path / "m.tif", "-m", models["rgb2d"])
    assert proc.returncode == 1 and "slide.tif" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tif"]


def test_memory_budget_above_the_machine_is_capped_with_a_sentence(tmp_path, models, png):
    proc = cli("segment", png, "-o", tmp_path / "m.png", "-m", models["rgb2d"], "--memory-budget", "200TiB")
    assert proc.returncode == 0, proc.stderr
    assert "more than the" in proc.stdout and "using" in proc.stdout
    meta = json.loads((tmp_path / "m.run_metadata.json").read_text())
    assert meta["memory_budget_bytes"] <= meta["available_bytes"]


def test_a_disk_that_fills_up_ends_in_one_sentence(tmp_path, models, png, monkeypatch):
    import errno

    from nca_cli.io import image as image_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_mod.Image.Image, "save", full)
    with pytest.raises(NCAError, match=r"Cannot write .*m\.png: the disk is full"):
        run([png], tmp_path / "m.png", models["rgb2d"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    assert os.path.exists(png)
