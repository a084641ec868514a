"""The CUDA launcher (cuda/nca_cuda.cu) run on the CPU under the emulator (cuda/emu), with
AddressSanitizer and UBSan, against the CPU launcher (``fused_run`` on a CPU state).

Every kernel of the GPU path runs here as it would on a device, block by block and thread by
thread: indexing, reflect borders, batch offsets, the fire mask, the launch geometry, the
block and warp reductions of the BatchNorm statistics. Variants: OctreeNCA 2D / 3D (IN 1 and
3), Med-NCA pathology (kernels 3 and 7, BatchNorm, fc1 to all channels), the VWSL Med-NCA (two
full convolutions, hidden 128: weights of 52 KB, read from global memory), M3D-NCA (3D,
kernels 3, 5, 7, BatchNorm), in float32, float16 and bfloat16 storage, batch 2, odd sizes, a
size-1 axis, states smaller than the kernel, fire rates 0.5 and 1.

The GPU's default step runs in place (bands of planes, border planes and a ring kept aside);
it gives the very bits of the double-buffered step, for bands thinner than the kernel too.

Expected agreement with the CPU launcher:
- 2D without BatchNorm: the very bits (both sum every convolution, fc0 and fc1 in the same
  order, with fused multiply-adds).
- 3D depthwise (the CPU launcher sums 8 rows at a time in another order) and BatchNorm (the
  CPU launcher takes the statistics from feature moments, the CUDA launcher from z per cell,
  both in double): float32 within 1e-5, 16-bit storage as the parity table of the CPU path
  (``benchmarks/results/parity_cpu.md``): after 1 step at most 1 unit in the last place
  (relative to max(|x|, 1)) and >= 99 % bit-identical, after 3 steps 4 units and >= 90 %.
"""
import math
import shutil

import pytest
import torch

from nca_cli.kernels import backbone_shape, fused_run, to_channels_last
from nca_cli.kernels.build import LIBRARIES
from nca_cli.kernels.emulator import build_emulator, emulated_run, run_driver

from .conftest import make_backbone
from .test_variants_cpu import VARIANTS, variant

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: the CUDA emulator cannot be built")

ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
EMULATED = {
    "octree-2d": (2, 3, {}),
    "octree-2d-in1": (2, 1, {}),
    "octree-3d": (3, 1, {}),
    "octree-3d-in3": (3, 3, {}),
    **{name: VARIANTS[name] for name in ("mednca-k3", "mednca-k7", "vwsl-full2", "octree-fc1all", "m3d-k3", "m3d-k5",
                                         "m3d-k7", "m3d-rgb-k7")},
}
SHAPES = {
    # spatial shape, fire rate, origin: odd sizes, a size-1 axis, smaller than the kernel
    2: [((13, 11), 0.5, (5, -7)), ((1, 6), 1.0, None), ((5, 3), 1.0, (2, 0))],
    3: [((5, 7, 6), 0.5, (2, 3, 4)), ((2, 1, 3), 1.0, None), ((3, 4, 5), 1.0, (1, 1, 1))],
}


@pytest.fixture(scope="module")
def emulator():
    """One driver binary for every shape of the kernel libraries (built once, then cached)."""
    return build_emulator(tuple(s for shapes in LIBRARIES.values() for s in shapes))


def model(name: str, fire_rate: float):
    dims, inp, kwargs = EMULATED[name]
    if name in VARIANTS:
        return variant(name, fire_rate)
    return make_backbone(dims, inp, fire_rate, seed=1, **kwargs)


def same_order(m) -> bool:
    """Whether the CPU launcher sums every value in the CUDA launcher's order."""
    return m.dims == 2 and m.normalization is None


def compare(m, state, steps, emulator, *, seed=3, level=1, origin=None):
    got, log = emulated_run(m, state, steps, seed=seed, level=level, origin=origin, binary=emulator)
    cpu = fused_run(m, state.clone(), steps, seed=seed, level=level, origin=origin, threads=2)
    assert got.dtype == state.dtype and got.shape == state.shape
    return got, cpu, log


def ulps(got, ref, dtype):
    return ((got.float() - ref.float()).abs() / ref.float().abs().clamp(min=1.0) / ULP[dtype]).max().item()


CASES = [(name, *case) for name, (dims, _, _) in EMULATED.items() for case in SHAPES[dims]]


@pytest.mark.parametrize("name,shape,fire_rate,origin", CASES)
def test_emulated_float32_matches_the_cpu_launcher(emulator, name, shape, fire_rate, origin):
    m = model(name, fire_rate)
    state = to_channels_last(torch.randn(2, m.channels, *shape))
    for steps in (1, 3):
        got, cpu, log = compare(m, state, steps, emulator, origin=origin)
        if same_order(m):
            assert torch.equal(got, cpu), steps
        else:
            torch.testing.assert_close(got, cpu, atol=1e-5, rtol=1e-5)
        assert torch.equal(got[..., :m.input_channels], state[..., :m.input_channels])
        assert log["band_step"]["launches"] == steps
        assert ("statistics" in log) == (m.normalization == "batch")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(EMULATED))
def test_emulated_half_storage_matches_the_cpu_launcher(emulator, name, dtype):
    dims = EMULATED[name][0]
    shape, fire_rate, origin = SHAPES[dims][0]
    m = model(name, fire_rate)
    state = to_channels_last(torch.randn(2, m.channels, *shape)).to(dtype)
    for steps, max_ulps, identical in ((1, 1.0, 0.99), (3, 4.0, 0.9)):
        got, cpu, _ = compare(m, state, steps, emulator, seed=5, origin=origin)
        if same_order(m):
            assert torch.equal(got, cpu), steps
        else:
            assert ulps(got, cpu, dtype) <= max_ulps, (steps, ulps(got, cpu, dtype))
            assert (got == cpu).float().mean() >= identical, steps


@pytest.mark.parametrize("name,shape", [("mednca-k3", (41, 29)), ("vwsl-full2", (41, 29)), ("m3d-k5", (5, 15, 13))])
def test_emulated_batch_norm_statistics_over_many_blocks(emulator, name, shape):
    """Enough cells that the statistics kernel's blocks (8 in the emulator's build) loop over
    several groups of cells each, with a partial last warp: every block and warp reduction
    counts, and the batch's two images have other statistics."""
    m = variant(name, 0.5)
    state = torch.randn(2, 16, *shape)
    state[1] = 3 * state[1] + 1
    state = to_channels_last(state)
    got, cpu, log = compare(m, state, 2, emulator)
    cells = 2 * math.prod(shape)
    assert cells % 32 and log["statistics"]["blocks"] == 2 * 8
    torch.testing.assert_close(got, cpu, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(EMULATED))
def test_emulated_in_place_step_gives_the_bits_of_the_double_buffered_step(emulator, name):
    """Bands of 1 and 3 planes (thinner than kernel 7's 3 border planes on each side, and one
    band of 1 plane at the end of each item) and the launcher's own choice, over 3 steps;
    float32 or bfloat16 storage, by turns. Blocks run first to last and last to first, so a
    band that read a neighbour band's planes after that band's block overwrote them would show."""
    dims = EMULATED[name][0]
    shape = (7, 5) if dims == 2 else (7, 4, 5)
    m = model(name, 0.5)
    for dtype in [(torch.float32, torch.bfloat16)[list(EMULATED).index(name) % 2]]:
        state = to_channels_last(torch.randn(2, m.channels, *shape)).to(dtype)
        double, log = emulated_run(m, state, 3, seed=2, level=1, in_place=False, binary=emulator)
        assert "band_step" not in log and log["step"]["launches"] == 3
        for band_planes, reverse in ((1, False), (1, True), (3, True), (0, False)):
            got, log = emulated_run(m, state, 3, seed=2, level=1, band_planes=band_planes, reverse_blocks=reverse,
                                    binary=emulator)
            assert torch.equal(got, double), (dtype, band_planes, reverse)
            assert "step" not in log
            assert log["band_step"]["blocks"] == 3 * 2 * (-(-shape[0] // band_planes) if band_planes else 1)


def test_emulated_launches_stay_within_the_device_limits(emulator):
    """Weights go to shared memory when they fit in 48 KB; the VWSL model's 52 KB are read
    from global memory, so no launch asks for more than the default limit."""
    for name, has_shared in (("octree-2d", True), ("mednca-k7", True), ("vwsl-full2", False)):
        m = model(name, 1.0)
        _, log = emulated_run(m, to_channels_last(torch.randn(1, 16, 5, 7)), 1, binary=emulator)
        assert all(rec["max_shared"] <= 48 * 1024 and rec["max_threads"] == 128 for rec in log.values())
        assert (log["band_step"]["max_shared"] > 0) == has_shared, name


def test_emulated_launch_limits_are_those_of_a_device(emulator):
    proc = run_driver(emulator, "LIMITS")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert got == {
        "block_1024": "no error",
        "block_1025": "invalid configuration argument",
        "block_32x32x2": "invalid configuration argument",
        "block_z_65": "invalid configuration argument",
        "grid_0": "invalid configuration argument",
        "grid_y_65536": "invalid configuration argument",
        "shared_48k": "no error",
        "shared_48k_plus_1": "invalid argument",
        "opt_in_100k": "no error",
        "shared_100k_opted_in": "no error",
        "shared_100k_plus_1_opted_in": "invalid argument",
        "opt_in_228k": "invalid argument",
    }


@pytest.mark.parametrize("mode,message", [
    ("DIVERGENT_SYNC", "__syncthreads that other threads of the block never reach"),
    ("DIVERGENT_SHUFFLE", "a warp shuffle that this lane of the warp never joins"),
])
def test_emulated_barriers_not_reached_by_every_thread_abort(emulator, mode, message):
    proc = run_driver(emulator, mode)
    assert proc.returncode != 0 and message in proc.stderr


def test_emulated_kernels_run_under_address_sanitizer(emulator):
    """A kernel writing one byte past its block's dynamic shared memory is stopped by ASan."""
    proc = run_driver(emulator, "SHARED_OVERFLOW")
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr


def test_emulated_shape_not_compiled_in_is_an_error(emulator):
    m = make_backbone(2, 3, 1.0, hidden=32)
    with pytest.raises(RuntimeError, match="no compiled CUDA kernel for this model shape"):
        emulated_run(m, to_channels_last(torch.randn(1, 16, 4, 4)), 1, binary=emulator)


def test_emulated_shape_names_its_kernel_library():
    assert backbone_shape(model("vwsl-full2", 1.0)) in LIBRARIES["mednca"]
