"""``nca segment`` on a 2-worker Dask cluster (127.0.0.1, processes, one thread each): the same
outputs as the serial run, a lost worker costs only its tasks, a bad input only itself."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from nca_cli.segment.dask_tasks import KILL_HOOK
from nca_cli.segment.distributed import segment_distributed
from nca_cli.segment.options import SegmentOptions
from nca_cli.segment.run import segment_inputs
from nca_cli.segment.run_manifest import RunManifest

from .conftest import shifted_images, write_pyramid_slide

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, memory_limit=0) as c:
        yield c


def run(inputs, out, model, **kw):
    """The serial run, or the distributed one when a cluster option is given."""
    kw.setdefault("quiet", True)
    opts = SegmentOptions(inputs=[str(i) for i in inputs], output=out, model=model, **kw)
    return segment_distributed(opts) if opts.distributed else segment_inputs(opts)


def write_slide(path):
    return write_pyramid_slide(path, np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8),
                               tile=128)


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_images_and_a_volume_equal_the_serial_run(tmp_path, models, rgb_image, cluster):
    imgs = shifted_images(tmp_path / "imgs", rgb_image, 3, axis=1)
    run([imgs], tmp_path / "serial", models["rgb2d"], seed=3)
    run([imgs], tmp_path / "dask", models["rgb2d"], seed=3, scheduler=cluster.scheduler_address)
    for name in ("img0_mask.png", "img1_mask.png", "img2_mask.png"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes()
    vol = (np.random.default_rng(2).random((20, 24, 28)) * 200).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(tmp_path / "vol.nii.gz"))
    run([tmp_path / "vol.nii.gz"], tmp_path / "s.nii.gz", models["gray3d"], tiling="force", tile_size=16)
    # this time through a scheduler file (its "address" is what a client reads)
    (tmp_path / "scheduler.json").write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler_address}))
    run([tmp_path / "vol.nii.gz"], tmp_path / "d.nii.gz", models["gray3d"], tiling="force", tile_size=16,
        scheduler_file=tmp_path / "scheduler.json")
    serial, dask = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / n))) for n in ("s.nii.gz", "d.nii.gz"))
    assert serial.any() and np.array_equal(serial, dask)
    meta = json.loads((tmp_path / "d.run_metadata.json").read_text())
    assert meta["mode"] == "tiled" and meta["tiles"] == 8 and meta["distributed"]


def test_a_slide_tiled_across_workers_equals_the_serial_tiff(tmp_path, models, cluster):
    src = write_slide(tmp_path / "slide.tif")
    run([src], tmp_path / "s" / "mask.tif", models["rgb2d"])    # one pass
    run([src], tmp_path / "d" / "mask.tif", models["rgb2d"], tiling="force", tile_size=128,
        scheduler=cluster.scheduler_address)
    assert (tmp_path / "d" / "mask.tif").read_bytes() == (tmp_path / "s" / "mask.tif").read_bytes()
    manifest = json.loads((tmp_path / "d" / "mask.run_manifest.json").read_text())
    entry = manifest["inputs"][str(src)]
    assert entry["status"] == "done" and entry["tiles_total"] == 12 and len(entry["tiles_done"]) == 12
    assert files(tmp_path / "d") == ["mask.run_manifest.json", "mask.run_metadata.json", "mask.tif"]


def test_a_worker_killed_in_a_tile_costs_only_its_tasks(tmp_path, models, monkeypatch):
    src = write_slide(tmp_path / "slide.tif")
    run([src], tmp_path / "s" / "mask.tif", models["rgb2d"])
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_HOOK, str(marker))
    run([src], tmp_path / "d" / "mask.tif", models["rgb2d"], tiling="force", tile_size=128, workers=2)
    assert marker.exists()   # a tile task did kill its worker
    assert (tmp_path / "d" / "mask.tif").read_bytes() == (tmp_path / "s" / "mask.tif").read_bytes()
    assert json.loads((tmp_path / "d" / "mask.run_manifest.json").read_text())["tasks_retried"] >= 1
    assert files(tmp_path / "d") == ["mask.run_manifest.json", "mask.run_metadata.json", "mask.tif"]


def test_a_bad_input_fails_alone_and_is_named(tmp_path, models, rgb_image, cluster):
    imgs = shifted_images(tmp_path / "imgs", rgb_image, 2, axis=0)
    Image.fromarray(rgb_image[..., 0]).save(imgs / "gray.png")    # one channel for an RGB model
    done = subprocess.run([sys.executable, "-m", "nca_cli", "segment", str(imgs), "-o", str(tmp_path / "out"), "-m",
                           str(models["rgb2d"]), "--scheduler", cluster.scheduler_address, "-q"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert re.fullmatch(r"error: 1 of 3 inputs failed.*gray\.png \(.*channel.*--continue\.\n", done.stderr)
    assert "img0" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img0_mask.png", "img1_mask.png"]
    manifest = json.loads((tmp_path / "out" / "run_manifest.json").read_text())
    assert "channel" in manifest["inputs"][str(imgs / "gray.png")]["error"]


def test_the_manifest_trusts_tiles_of_the_same_checkpoint_options_and_tile_only(tmp_path):
    class Job:
        input, mask = tmp_path / "a.tif", tmp_path / "m.tif"

    first = RunManifest(tmp_path / "run.json", "ck", "op", resume=False)
    first.set_tiled(Job, [64, 64], 4, {(0, 0)})
    first.add_tile(Job, [0, 64])
    first.write(force=True)
    assert RunManifest(tmp_path / "run.json", "ck", "op", resume=True).tiles_done(Job, [64, 64]) == {(0, 0), (0, 64)}
    assert RunManifest(tmp_path / "run.json", "ck", "op", resume=True).tiles_done(Job, [32, 32]) == set()
    assert RunManifest(tmp_path / "run.json", "other", "op", resume=True).tiles_done(Job, [64, 64]) == set()
    assert RunManifest(tmp_path / "run.json", "ck", "op2", resume=True).tiles_done(Job, [64, 64]) == set()
    assert RunManifest(tmp_path / "run.json", "ck", "op", resume=False).tiles_done(Job, [64, 64]) == set()


def test_continue_after_a_killed_client_recomputes_only_the_missing_tiles(tmp_path, models, cluster):
    from nca_cli.core.files import sha256_file
    from nca_cli.segment.dask_tasks import TaskSpec, input_task
    from nca_cli.segment.outputs import plan_jobs
    from nca_cli.segment.run_manifest import manifest_path, options_hash
    from nca_cli.segment.tile_store import open_labels, scratch_folder

    src = write_slide(tmp_path / "slide.tif")
    run([src], tmp_path / "s" / "mask.tif", models["rgb2d"])
    opts = SegmentOptions(inputs=[str(src)], output=tmp_path / "d" / "mask.tif", model=models["rgb2d"], quiet=True,
                          tiling="force", tile_size=128, scheduler=cluster.scheduler_address, resume=True)
    jobs = plan_jobs([src], opts)
    tiled = input_task(TaskSpec(opts, jobs[0], None, None))   # the killed client's first task, then one tile:
    open_labels(scratch_folder(jobs[0].mask), tiled["shape"], tiled["tile"])[0:128, 128:256] = 7   # marked
    manifest = RunManifest(manifest_path(jobs, opts), sha256_file(opts.model), options_hash(opts), resume=False)
    manifest.set_tiled(jobs[0], tiled["tile"], len(tiled["corners"]), {(0, 128)})
    manifest.write(force=True)
    segment_distributed(opts)
    got, want = (tifffile.imread(tmp_path / n / "mask.tif", level=0) for n in ("d", "s"))
    assert (got[0:128, 128:256] == 7).all()    # the tile the manifest lists was not computed again
    got[0:128, 128:256] = want[0:128, 128:256]
    assert np.array_equal(got, want)
    entry = json.loads((tmp_path / "d" / "mask.run_manifest.json").read_text())["inputs"][str(src)]
    assert len(entry["tiles_done"]) == 12 and entry["status"] == "done"


def test_dask_is_imported_only_for_a_distributed_run():
    code = ("import sys, nca_cli.cli, nca_cli.segment.run, nca_cli.segment.options; "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_mostly_glass_slide_skips_the_same_tiles_as_the_serial_run(tmp_path, models, cluster):
    """``--tissue auto`` (the slides' default): the tiles without tissue are skipped and the mask
    ANDed with the tissue on the cluster exactly as in the serial run."""
    rng = np.random.default_rng(4)
    base = np.full((600, 800, 3), 242, dtype=np.uint8)                        # glass
    base[40:260, 60:300] = rng.integers(60, 200, (220, 240, 3), dtype=np.uint8) * np.array([1.0, 0.4, 0.9])
    path = write_pyramid_slide(tmp_path / "glass.tif", base, tile=128, levels=3)
    run([path], tmp_path / "s" / "mask.tif", models["rgb2d"])
    run([path], tmp_path / "d" / "mask.tif", models["rgb2d"], scheduler=cluster.scheduler_address)
    serial = json.loads((tmp_path / "s" / "mask.run_metadata.json").read_text())
    dask = json.loads((tmp_path / "d" / "mask.run_metadata.json").read_text())
    assert serial["mode"] == "tiled" and serial["tiles_skipped"] > 0
    assert (dask["tiles_skipped"], dask["tissue_fraction"]) == (serial["tiles_skipped"], serial["tissue_fraction"])
    assert (tmp_path / "d" / "mask.tif").read_bytes() == (tmp_path / "s" / "mask.tif").read_bytes()
