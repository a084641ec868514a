"""The memory model holds on every path: for every model family, implementation and state type,
single pass, exact tiles and sliding windows, the measured peak of a real `nca segment` (a fresh
process, VmHWM of the input's run) lies between 85 % of the prediction and the prediction + 5 %
+ a few MiB, and never above --memory-budget; a run that cannot fit is refused before it starts,
naming the size that would. The planning itself (single pass, tiles or refusal; the largest input
that fits; the tiled prediction's terms) is checked on hand-computed answers."""
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from nca_cli.core.errors import NCAError
from nca_cli.inference import memory
from nca_cli.inference.memory import largest_fitting_shape, plan_run, single_pass_bytes, tiled_phases
from nca_cli.models import architecture, build_model, checkpoint
from nca_cli.recipes import load_recipe

MIB = 2 ** 20
SLACK = 8 * MIB
LOW = 0.85                   # measured / predicted at least
NCAS = {"octree_nca 2D": "octree_pathology", "octree_nca 3D": "octree_radiology", "med_nca 2D": "mednca_pathology",
        "m3d_nca 3D": "m3d_radiology_2levels"}
WINDOWED = {
    "unet 2D": {"architecture": "unet", "dims": 2, "input_channels": 3, "output_channels": 1,
                "num_encoding_blocks": 3, "out_channels_first_layer": 8},
    "meunet 3D": {"architecture": "meunet", "dims": 3, "input_channels": 1, "output_channels": 3},
    "meunet_cascade 3D": {"architecture": "meunet_cascade", "dims": 3, "input_channels": 1, "output_channels": 3},
    "segresmamba 3D": {"architecture": "segresmamba", "dims": 3, "input_channels": 1, "output_channels": 2,
                       "widths": [8, 16], "blocks_down": [1, 1]},
}
WINDOW = {2: [128, 128], 3: [32, 32, 32]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory-inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (384, 320, 3), dtype=np.uint8)).save(root / "rgb.png")
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(100, 20, (16, 80, 64)).astype(np.float32)), str(root / "vol.nii.gz"))
    return {2: root / "rgb.png", 3: root / "vol.nii.gz"}


def _model(tmp_path, spec):
    torch.manual_seed(0)
    config = load_recipe(spec)["model"] if isinstance(spec, str) else spec
    model = build_model(config)
    nca = architecture(model.config.architecture).is_nca
    if nca:
        for bb in model.backbones:
            torch.nn.init.normal_(bb.fc1.weight, std=0.01)
    recipe = None if nca else {"name": "m", "model": model.config.to_dict(), "data": {"patch": WINDOW[model.config.dims]}}
    path = tmp_path / "model.pt"
    checkpoint.save_model(path, model, recipe)
    return path, model.config.dims


def _segment(model, image, out, *args):
    proc = subprocess.run([sys.executable, "-m", "nca_cli", "segment", str(image), "-o", str(out), "-m", str(model),
                           "-q", *map(str, args)], capture_output=True, text=True)
    meta = out.with_name(out.name.split(".")[0] + ".run_metadata.json")
    return proc, (json.loads(meta.read_text()) if proc.returncode == 0 else None)


def _check_peak(meta, budget):
    predicted, measured = meta["predicted_peak_bytes"], meta["peak_memory_bytes"]
    assert meta["peak_meter"] == "VmHWM of this input"
    why = (meta["impl"], meta["mode"], predicted / MIB, measured / MIB, meta["predicted_phases_bytes"])
    assert LOW * predicted <= measured <= 1.05 * predicted + SLACK, why
    assert measured <= budget


CASES = [(name, impl, dtype) for name in NCAS for impl in ("fused", "torch") for dtype in ("float16", "float32")] + \
        [(name, None, None) for name in WINDOWED]


@pytest.mark.memory
@pytest.mark.parametrize("name,impl,dtype", CASES, ids=[" ".join(filter(None, c)) for c in CASES])
def test_measured_peak_within_the_prediction_and_the_budget(tmp_path, inputs, name, impl, dtype):
    model, dims = _model(tmp_path, NCAS.get(name) or WINDOWED[name])
    out = tmp_path / ("m.png" if dims == 2 else "m.nii.gz")
    extra = ["--impl", impl, "--state-dtype", dtype] if impl else []
    budget = 3 * 2 ** 30
    proc, meta = _segment(model, inputs[dims], out, "--memory-budget", budget, *extra)
    assert proc.returncode == 0, proc.stderr
    assert meta["mode"] == ("single" if impl else "sliding-window")
    if impl:
        assert meta["impl"] == impl
    _check_peak(meta, budget)


TILED = [("octree_nca 2D", "fused", "float16", 128), ("octree_nca 3D", "torch", "float32", 32)]


@pytest.mark.memory
@pytest.mark.parametrize("name,impl,dtype,tile", TILED, ids=[" ".join(map(str, c)) for c in TILED])
def test_tiled_runs_within_the_prediction(tmp_path, inputs, name, impl, dtype, tile):
    model, dims = _model(tmp_path, NCAS[name])
    out = tmp_path / ("m.png" if dims == 2 else "m.nii.gz")
    budget = 3 * 2 ** 30
    proc, meta = _segment(model, inputs[dims], out, "--memory-budget", budget, "--impl", impl, "--state-dtype",
                          dtype, "--tiling", "force", "--tile-size", tile)
    assert proc.returncode == 0, proc.stderr
    assert meta["mode"] == "tiled" and meta["tiles"] > 1
    _check_peak(meta, budget)


@pytest.mark.memory
def test_a_run_that_cannot_fit_is_refused_before_it_starts(tmp_path, inputs):
    model, _ = _model(tmp_path, NCAS["med_nca 2D"])            # BatchNorm: cannot be tiled exactly
    image = tmp_path.parent / "large.png"                      # ~2 MP: about 90 MiB above nca's own (~365 MiB)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (1536, 1280, 3), dtype=np.uint8)).save(image)
    proc, _ = _segment(model, image, tmp_path / "m.png", "--memory-budget", "440MiB")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "largest input of its proportions that fits" in proc.stderr and " MP)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.memory
@pytest.mark.parametrize("impl", ["fused", "torch"])
def test_a_video_is_read_within_the_prediction(tmp_path, impl):
    """Videos are decoded a band of frames at a time during the run (and again for the
    overlay), so their frames count against the prediction instead of lying in the baseline."""
    import imageio_ffmpeg

    src = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    writer = imageio_ffmpeg.write_frames(str(src), (160, 96), fps=25, macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for _ in range(96):
        writer.send(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
    writer.close()
    model, _ = _model(tmp_path, "octree_surgery")
    out = tmp_path / "m.npz"
    proc, meta = _segment(model, src, out, "--impl", impl, "--state-dtype", "float16", "--overlay",
                          tmp_path / "overlay.mp4", "--memory-budget", 3 * 2 ** 30)
    assert proc.returncode == 0, proc.stderr
    _check_peak(meta, 3 * 2 ** 30)
    assert np.load(out)["labels"].shape == (96, 96, 160)


# -- planning, on hand-computed answers ------------------------------------------------------------

def test_largest_fitting_shape_keeps_the_proportions_within_the_budget():
    def cells(s):
        return 1000 + s[0] * s[1]

    assert largest_fitting_shape(cells, (1000, 500), 1000 + 500 * 250) == (500, 250)
    assert largest_fitting_shape(cells, (1000, 500), 1000 + 500 * 250 - 1) == (499, 249)
    assert largest_fitting_shape(cells, (1000, 500), 10 ** 9) == (1000, 500)     # the input itself fits
    assert largest_fitting_shape(cells, (1000, 500), 1000) is None               # not even one cell
    assert largest_fitting_shape(lambda s: s[0] * s[1] * s[2], (40, 200, 100), 20 * 100 * 50) == (20, 100, 50)


def _fused_model(spec):
    from nca_cli.kernels import fused_available

    if not fused_available("cpu"):
        pytest.skip("fused CPU kernel unavailable")
    return build_model(load_recipe(spec)["model"] if isinstance(spec, str) else spec)


def test_plan_run_chooses_single_pass_tiles_or_refusal_by_the_budget():
    model = _fused_model("octree_pathology")
    shape, where = (1024, 1024), {"dtype": torch.float16, "impl": "fused"}
    single = single_pass_bytes(model, shape, **where)
    enough = memory.budget_for(single)          # the budget whose usable part (after the margin) is single
    assert memory.usable_budget(enough) >= single > memory.usable_budget(enough - 1)
    plan = plan_run(model, shape, budget=enough, **where)
    assert plan.mode == "single" and plan.predicted_bytes == single
    assert plan_run(model, shape, budget=memory.budget_for(single + 100), baseline=100, **where).mode == "single"
    tiled = plan_run(model, shape, budget=enough - 1, **where)
    usable = memory.usable_budget(enough - 1)
    assert tiled.mode == "tiled" and tiled.split == 1 and tiled.predicted_bytes <= usable
    side = tiled.tile[0]          # the largest power of two that fits at split 1
    assert side < 1024 and tiled.tiles == (1024 // side) ** 2
    bigger = tiled_phases(model, shape, split=1, tile=[2 * side] * 2, cost=memory.InputCost(3), **where)[0]
    assert max(bigger.values()) > usable
    with pytest.raises(NCAError, match="in one pass needs about"):
        plan_run(model, shape, budget=enough - 1, tiling="off", **where)
    with pytest.raises(NCAError, match="too small to segment the input even in tiles"):
        plan_run(model, shape, budget=memory.budget_for(MIB), **where)
    whole = plan_run(model, shape, budget=2 ** 40, tiling="force", **where)
    assert (whole.mode, whole.split, whole.tile, whole.tiles) == ("tiled", 1, [1024, 1024], 1)
    forced = plan_run(model, shape, budget=2 ** 40, tiling="force", tile_size=256, **where)
    assert (forced.tile, forced.tiles) == ([256, 256], 16)


def test_a_model_with_batchnorm_on_every_level_is_refused_rather_than_tiled():
    model = _fused_model("mednca_pathology")
    shape, where = (1024, 1024), {"dtype": torch.float16, "impl": "fused"}
    single = single_pass_bytes(model, shape, **where)
    with pytest.raises(NCAError, match="cannot be tiled exactly.*largest input of its proportions"):
        plan_run(model, shape, budget=memory.budget_for(single) - 1, **where)


def test_tiled_prediction_adds_the_coarse_levels_the_pyramid_two_tile_levels_and_the_labels(monkeypatch):
    """A 2-level model (C 16, 3 inputs, 10 steps per level) on 256 x 256 in float32, split at
    level 1, tiles of 64: the largest tile is a middle one, grown by 10 cells each side (84 x 84)
    whose level-1 nodes are 42 x 42; the transient of a tile is left out here."""
    model = build_model({"architecture": "octree_nca", "dims": 2, "input_channels": 3, "output_channels": 1,
                         "levels": 2, "steps": [10, 10]})
    monkeypatch.setattr(memory, "_tile_transient", lambda *a: 0)
    phases, count = tiled_phases(model, (256, 256), split=1, tile=[64, 64], dtype=torch.float32, impl="fused",
                                 cost=memory.InputCost(3))
    coarse = 128 * 128 * 16 * 4           # level 1's state, the tail of the shared buffer
    pyramid = 128 * 128 * 3 * 4           # level 1's inputs
    labels = 256 * 256                    # the uint8 label map
    states = (84 * 84 + 42 * 42) * 16 * 4
    band = 64 * 64 * (4 + 3)              # one tile's float32 logits and label temporaries
    assert count == 16
    assert phases["levels"] == coarse + pyramid + labels + states + band
    assert phases["write"] == labels + 2 * labels


def test_building_the_pyramid_states_its_largest_step():
    """1000 x 1000 cells, 8-bit values divided by 255, pooled 2 x 2 into a float16 level: reading
    holds raw and float32 values (5 bytes per value); pooling a channels-last RGB band holds the
    float32 band, the contiguous copy the pooling makes and the pooled quarter; one channel (or
    nearest picking) needs no copy, and the cast of the pooled quarter is then the largest step."""
    from nca_cli.inference.sources import build_bytes
    from nca_cli.io.normalize import Normalization

    divide = Normalization("none", divide_by=255.0)
    rgb = 3 * 10 ** 6
    assert build_bytes(10 ** 6, 3, 1, divide, (2, 2), "average", 2) == rgb * 4 + rgb * 4 + rgb // 4 * 4
    assert build_bytes(10 ** 6, 3, 1, divide, (2, 2), "nearest", 2) == rgb * 4 + rgb // 4 * 6
    assert build_bytes(10 ** 6, 1, 1, divide, (2, 2), "average", 2) == 10 ** 6 * 4 + 10 ** 6 // 4 * 6


@pytest.mark.memory
def test_a_tight_budget_bounds_the_whole_process(tmp_path):
    """The budget bounds the whole process's measured peak, also when tiling makes the run's
    prediction nearly equal to the budget: such a run keeps its budget, or is refused before it
    starts."""
    model, _ = _model(tmp_path, NCAS["octree_nca 2D"])
    image = tmp_path / "large.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (1536, 1280, 3), dtype=np.uint8)).save(image)
    proc, meta = _segment(model, image, tmp_path / "a.png", "--memory-budget", 3 * 2 ** 30)
    assert proc.returncode == 0, proc.stderr
    base, single = meta["baseline_rss_bytes"], meta["predicted_peak_bytes"]
    for k, budget in enumerate([base + 0.4 * (single - base), single - MIB]):   # 30 tiles / a few tiles
        proc, meta = _segment(model, image, tmp_path / f"b{k}.png", "--memory-budget", int(budget))
        if proc.returncode == 1 and k == 0:
            assert len(proc.stderr.strip().splitlines()) == 1 and "too small" in proc.stderr, proc.stderr
            continue
        assert proc.returncode == 0, proc.stderr
        assert meta["tiles"] > 1 and meta["peak_memory_bytes"] <= budget, (meta["peak_memory_bytes"] / MIB, budget / MIB)


def test_the_margin_and_the_budget_below_nca_itself():
    from nca_cli.core.errors import NCAError
    from nca_cli.inference.memory import BUDGET_FLOOR, budget_for, check_budget, usable_budget

    assert usable_budget(376 * MIB) == 376 * MIB - BUDGET_FLOOR          # small budgets: the floor
    assert usable_budget(24 * 2 ** 30) == pytest.approx(0.96 * 24 * 2 ** 30, abs=1)   # large ones: 4 %
    with pytest.raises(NCAError, match=r"^The memory budget 64.0 MiB is below what nca itself takes before any "
                                       r"input \(about 300.0 MiB.*raise --memory-budget above 332.0 MiB\.$"):
        check_budget(64 * MIB, 300 * MIB)
    check_budget(budget_for(300 * MIB) + 1, 300 * MIB)
    with pytest.raises(NCAError):
        check_budget(budget_for(300 * MIB) - 1, 300 * MIB)
