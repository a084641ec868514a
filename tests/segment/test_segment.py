import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import openslide
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs

from .conftest import assert_same_geometry, shifted_images, write_oblique_nifti, write_pyramid_slide


def run(inputs, out, model, **kw):
    kw.setdefault("quiet", True)
    return segment_inputs(SegmentOptions(inputs=[str(i) for i in inputs], output=out, model=model, **kw))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nca_cli", "segment", *map(str, args)], capture_output=True, text=True)


def test_png_end_to_end(tmp_path, models, rgb_image):
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    out = tmp_path / "out" / "a_mask.png"
    res = run([src], out, models["rgb2d"], preview=tmp_path / "out" / "preview.png")
    mask = np.array(Image.open(out))
    assert mask.shape == rgb_image.shape[:2] and set(np.unique(mask)) <= {0, 1}
    meta = json.loads((tmp_path / "out" / "a_mask.run_metadata.json").read_text())
    for key in ("version", "checkpoint_sha256", "arguments", "seed", "device", "impl", "peak_memory_bytes",
                "wall_seconds", "level_seconds"):
        assert key in meta
    assert Image.open(tmp_path / "out" / "preview.png").size[0] > 0
    assert res[0]["status"] == "done"


def test_slide_to_pyramidal_tiff(tmp_path, models):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (1100, 1300, 3), dtype=np.uint8)
    src = write_pyramid_slide(tmp_path / "slide.tif", base)
    out = tmp_path / "mask.tif"
    run([src], out, models["rgb2d"])
    s = openslide.OpenSlide(str(out))
    assert s.dimensions == (1300, 1100)
    assert s.level_count > 1
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-3)


def test_nifti_geometry_carried(tmp_path, models):
    vol = (np.random.default_rng(2).random((9, 20, 17)) * 100).astype(np.float32)
    src = tmp_path / "vol.nii.gz"
    img = write_oblique_nifti(src, vol)
    out = tmp_path / "vol_mask.nii.gz"
    run([src], out, models["gray3d"])
    assert_same_geometry(sitk.ReadImage(str(out)), img)


def test_video_labels_and_overlay(tmp_path, models):
    import imageio_ffmpeg

    src = tmp_path / "clip.mp4"
    w = imageio_ffmpeg.write_frames(str(src), (64, 48), fps=10, macro_block_size=1)
    w.send(None)
    for t in range(12):
        frame = np.full((48, 64, 3), 20 * t % 255, dtype=np.uint8)
        frame[10:30, 5 + t:25 + t] = 200
        w.send(frame)
    w.close()
    out = tmp_path / "clip_mask.npz"
    run([src], out, models["rgb3d"], overlay=tmp_path / "overlay.mp4", max_frames=10)
    labels = np.load(out)["labels"]
    assert labels.shape == (10, 48, 64) and labels.max() <= 2
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "overlay.mp4"))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    assert frames == 10 and tuple(meta["size"]) == (64, 48)


@pytest.mark.parametrize("impl", ["torch", "fused"])
def test_tiled_equals_single_pass_2d(tmp_path, models, rgb_image, impl):
    from nca_cli.kernels import fused_available

    if impl == "fused" and not fused_available("cpu"):
        pytest.skip("fused kernel unavailable")
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    run([src], tmp_path / "one.png", models["rgb2d"], tiling="off", impl=impl, state_dtype="float32")
    run([src], tmp_path / "tiles.png", models["rgb2d"], tiling="force", tile_size=16, impl=impl, state_dtype="float32")
    meta = json.loads((tmp_path / "tiles.run_metadata.json").read_text())
    assert meta["mode"] == "tiled" and meta["tiles"] > 4
    a, b = np.array(Image.open(tmp_path / "one.png")), np.array(Image.open(tmp_path / "tiles.png"))
    assert 0.05 < a.mean() < 0.95
    assert np.array_equal(a, b)


@pytest.mark.parametrize("impl", ["torch", "fused"])
def test_tiled_equals_single_pass_3d(tmp_path, models, impl):
    from nca_cli.kernels import fused_available

    if impl == "fused" and not fused_available("cpu"):
        pytest.skip("fused kernel unavailable")
    vol = (np.random.default_rng(3).random((11, 30, 26)) * 50).astype(np.float32)
    src = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(src))
    run([src], tmp_path / "one.nii.gz", models["gray3d"], tiling="off", impl=impl, state_dtype="float32")
    run([src], tmp_path / "tiles.nii.gz", models["gray3d"], tiling="force", tile_size=8, impl=impl, state_dtype="float32")
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "one.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "tiles.nii.gz")))
    assert 0 < a.mean() < 1
    assert np.array_equal(a, b)


def test_ensemble_uncertainty_and_nqm(tmp_path, models, rgb_image):
    """Median labels, std map and NQM of a 3-run ensemble against the three runs computed on
    their own (seeds 0, 1, 2, float16 state as `segment`) and their statistics taken in numpy."""
    import torch

    from nca_cli.inference.octree import predict_logits
    from nca_cli.models import checkpoint

    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    run([src], tmp_path / "m.png", models["rgb2d"], ensemble=3, uncertainty=tmp_path / "std.tif")
    model, _ = checkpoint.load_model(models["rgb2d"])
    x = torch.from_numpy(rgb_image.astype(np.float32) / 255.0).movedim(-1, 0)[None]
    runs = np.stack([predict_logits(model, x, seed=s, state_dtype=torch.float16)[0, 0].numpy() for s in range(3)])
    runs = runs.astype(np.float64)
    median = np.sort(runs, axis=0)[1]
    prob = 1 / (1 + np.exp(-runs))
    std_expected = np.sqrt(((prob - prob.mean(0)) ** 2).mean(0))
    mask = np.array(Image.open(tmp_path / "m.png"))
    sure = np.abs(median) > 1e-3              # the file path and the in-memory path round alike but for a few ulps
    assert np.array_equal(mask[sure], (median[sure] > 0).astype(np.uint8)) and sure.mean() > 0.99
    assert 0.05 < mask.mean() < 0.95                                  # both classes present
    std = tifffile.imread(tmp_path / "std.tif")
    assert std.shape == rgb_image.shape[:2]
    assert np.abs(std - std_expected).max() < 1e-3 and std.max() > 0.05   # float16 logits kept
    fg = median > 0
    meta = json.loads((tmp_path / "m.run_metadata.json").read_text())
    assert meta["nqm"] == pytest.approx(std_expected[fg].sum() / prob.mean(0)[fg].sum(), rel=1e-3)


def test_many_inputs_parts_and_continue(tmp_path, models, rgb_image):
    folder = shifted_images(tmp_path / "in", rgb_image, 4, axis=0)
    out = tmp_path / "out"
    res = run([folder], out, models["rgb2d"], num_parts=2, part_id=1)
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["img1_mask.png", "img3_mask.png"]
    assert all((out / f"img{i}_mask.run_metadata.json").exists() for i in (1, 3))
    res = run([str(folder / "*.png")], out, models["rgb2d"], resume=True)
    assert [r["status"] for r in res].count("done") == 2
    assert not list(out.glob(".*partial*"))


def test_bad_inputs_one_sentence_and_nothing_written(tmp_path, models, rgb_image):
    gray = tmp_path / "g.png"
    Image.fromarray(rgb_image[..., 0]).save(gray)
    with pytest.raises(NCAError, match="channel"):
        run([gray], tmp_path / "o.png", models["rgb2d"])
    vol = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(vol))
    with pytest.raises(NCAError, match="2D"):
        run([vol], tmp_path / "o.nii.gz", models["gray2d"])
    nan = np.ones((4, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.mha"))  # NIfTI I/O drops NaN
    with pytest.raises(NCAError, match="NaN"):
        run([tmp_path / "nan.mha"], tmp_path / "o2.mha", models["gray3d"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(NCAError, match="no supported image"):
        run([tmp_path / "empty"], tmp_path / "o", models["rgb2d"])
    src = tmp_path / "a.png"
    Image.fromarray(rgb_image).save(src)
    with pytest.raises(NCAError, match=r"The memory budget 1.0 KiB is below what nca itself takes before any input"):
        run([src], tmp_path / "o3.png", models["rgb2d"], memory_budget="1KiB")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["g.png", "v.nii.gz", "nan.mha", "empty", "a.png"])


def test_cli_errors_exit_nonzero_without_traceback(tmp_path, models):
    bad = tmp_path / "broken.svs"
    bad.write_text("not a slide")
    proc = cli(bad, "-o", tmp_path / "m.tif", "--model", models["rgb2d"])
    assert proc.returncode == 1
    assert "broken.svs" in proc.stderr and "Traceback" not in proc.stderr
    trunc = tmp_path / "model.pt"
    trunc.write_bytes(models["rgb2d"].read_bytes()[:300])
    proc = cli(bad, "-o", tmp_path / "m.tif", "--model", trunc)
    assert proc.returncode == 1 and "model.pt" in proc.stderr and "Traceback" not in proc.stderr
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        png = tmp_path / "x.png"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
        proc = cli(png, "-o", ro / "m.png", "--model", models["rgb2d"])
        assert proc.returncode == 1 and "writable" in proc.stderr


def _sigterm_when(proc, folder, pattern, timeout=120.0):
    """SIGTERM ``proc`` as soon as a file matching ``pattern`` appears in ``folder``; returns
    the names complete at that moment (every non-temporary file)."""
    deadline = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    complete = {p.name for p in folder.iterdir() if ".partial" not in p.name}
    proc.send_signal(signal.SIGTERM)
    return complete


@pytest.mark.parametrize("moment", ["img0_mask.png", "img0_mask.run_metadata.json", "img1_mask.png"])
def test_sigterm_keeps_only_complete_files_and_continue_finishes(tmp_path, models, rgb_image, moment):
    folder = shifted_images(tmp_path / "in", rgb_image, 2, axis=0)
    out = tmp_path / "out"
    out.mkdir()
    args = [sys.executable, "-m", "nca_cli", "segment", folder, "-o", out, "-m", models["rgb2d"], "-q"]
    env = os.environ | {"NCA_TEST_PAUSE_BEFORE_RENAME": moment}     # that file's write waits before its rename
    proc = subprocess.Popen(list(map(str, args)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    stem, _, suffix = moment.partition(".")
    complete = _sigterm_when(proc, out, f".{stem}.*.partial.{suffix}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines() == ["stopped by SIGTERM; nothing half-written was kept"]
    assert {p.name for p in out.iterdir()} == complete         # nothing new, no temporary file
    done = subprocess.run(list(map(str, [*args, "--continue"])), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["img0_mask.png", "img0_mask.run_metadata.json",
                                                     "img1_mask.png", "img1_mask.run_metadata.json"]


def test_negative_spacing_nifti_is_segmented_in_its_own_geometry(tmp_path, models):
    from tests.io.test_volume import write_negative_spacing_nifti

    vol = (np.random.default_rng(0).random((8, 24, 20)) * 1000).astype(np.int16)
    src = tmp_path / "neg.nii"
    write_negative_spacing_nifti(src, vol)
    run([src], tmp_path / "neg_mask.nii.gz", models["gray3d"])
    got = sitk.ReadImage(str(tmp_path / "neg_mask.nii.gz"))
    assert_same_geometry(got, sitk.ReadImage(str(src)))
