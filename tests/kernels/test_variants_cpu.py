"""Every NCA variant of the recipes on the fused CPU kernel, against ``BackboneNCA.run``.

Variants: Med-NCA pathology (2D, kernels 3 and 7, BatchNorm, fc1 to all channels), the
Med-NCA of the VWSL paper (two full convolutions, hidden 128), M3D-NCA (3D, kernels 3, 5
and 7, BatchNorm, fc1 to all channels or to C - IN), fc1 to all channels without
BatchNorm, and one on-demand shape (3D, two full 5x5x5 convolutions, C = 12, hidden 36).
BatchNorm always uses the statistics of the whole batch (batch 2 here) and every cell.

Tolerances:
- float32 storage: 1e-5 (absolute and relative), after 1 step and after 6 steps.
- float16 / bfloat16 storage: after 1 step at most 1 unit in the last place of the storage
  type (relative to max(|x|, 1)) and >= 99 % of the elements bit-identical; after 4 steps
  4 units and >= 90 %, as for OctreeNCA (test_fused_cpu.py).
- Over more steps the share of bit-identical elements falls below 90 % for BatchNorm and
  kernels of 5 and 7 (see nca_cli/kernels/__init__.py): a float32 difference that rounds
  one element to the neighbouring 16-bit value changes, in the next step, every cell within
  the kernel's reach (343 cells for 7x7x7) and, through the batch mean and variance, every
  cell of the batch; the dynamics amplify such differences (about 1.2x per step with these
  weights), so the differing elements multiply. PyTorch evaluating the same model in float64
  departs from its own float32 result just as fast. After 10 steps of the 3D kernel-7 model
  at fire rate 1.0 we require <= 8 units and >= 60 % bit-identical (measured: 3.7 to 5.8
  units and 78 to 87 %, the float64 reference 76 to 84 %) and check the float64 reference
  against the same bound.
"""
import copy

import pytest
import torch

from nca_cli.kernels import (backbone_shape, fused_run, from_channels_last, kept_perception_bytes, kernel_module,
                             pack_weights, statistics_groups, to_channels_last)

from .conftest import make_backbone

ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}

# name -> (dims, input channels, backbone keyword arguments)
VARIANTS = {
    "mednca-k3": (2, 3, dict(kernel_size=3, normalization="batch", fc1_all_channels=True)),
    "mednca-k7": (2, 3, dict(kernel_size=7, normalization="batch", fc1_all_channels=True)),
    "vwsl-full2": (2, 1, dict(hidden=128, perception="full2", normalization="batch", fc1_all_channels=True)),
    "octree-fc1all": (2, 3, dict(fc1_all_channels=True)),
    "m3d-k3": (3, 1, dict(kernel_size=3, normalization="batch")),
    "m3d-k5": (3, 1, dict(kernel_size=5, normalization="batch")),
    "m3d-k7": (3, 1, dict(kernel_size=7, normalization="batch", fc1_all_channels=True)),
    "m3d-rgb-k7": (3, 3, dict(kernel_size=7, normalization="batch", fc1_all_channels=True)),
    "custom-full2-3d": (3, 2, dict(channels=12, hidden=36, kernel_size=5, perception="full2", normalization="batch")),
}

SHAPES = {
    # spatial shape, fire rate, origin: odd / non-square, a size-1 axis, smaller than the kernel
    2: [((17, 23), 0.5, (5, -7)), ((1, 6), 1.0, None), ((5, 3), 0.5, (2, 0)), ((2, 1), 1.0, (0, 3))],
    3: [((5, 9, 11), 0.5, (2, 3, 4)), ((2, 1, 3), 1.0, None), ((1, 4, 2), 0.5, (7, 0, 1)), ((3, 6, 8), 1.0, (1, 1, 1))],
}

CASES = [(name, *case) for name, (dims, _, _) in VARIANTS.items() for case in SHAPES[dims]]


def variant(name: str, fire_rate: float, seed: int = 0):
    dims, inp, kwargs = VARIANTS[name]
    kwargs = dict(kwargs)
    channels = kwargs.pop("channels", 16)
    return make_backbone(dims, inp, fire_rate, channels=channels, seed=seed, **kwargs)


def _reference(m, state_cf, steps, *, seed=3, level=1, origin=None, state_dtype=None):
    with torch.no_grad():
        return m.run(state_cf, steps, seed=seed, level=level, origin=origin, state_dtype=state_dtype)


def _ulps(got, ref, dtype):
    return ((got - ref).abs() / ref.abs().clamp(min=1.0) / ULP[dtype]).max().item()


@pytest.mark.parametrize("name,shape,fire_rate,origin", CASES)
def test_float32_matches_reference(cpu_kernels, name, shape, fire_rate, origin):
    m = variant(name, fire_rate)
    assert m.fusable
    state = torch.randn(2, m.channels, *shape)
    for steps in (1, 6):
        ref = _reference(m, state, steps, origin=origin)
        cl = to_channels_last(state)
        out = fused_run(m, cl, steps, seed=3, level=1, origin=origin, threads=2)
        assert out.data_ptr() == cl.data_ptr()                        # updated in place
        torch.testing.assert_close(from_channels_last(out), ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(from_channels_last(out)[:, :m.input_channels], state[:, :m.input_channels])
        assert not torch.equal(from_channels_last(out), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_half_storage_matches_reference(cpu_kernels, name, dtype):
    dims = VARIANTS[name][0]
    shape, fire_rate, origin = SHAPES[dims][0]
    m = variant(name, fire_rate)
    state = torch.randn(2, m.channels, *shape).to(dtype)
    for steps, ulps, identical in ((1, 1.0, 0.99), (4, 4.0, 0.9)):
        ref = _reference(m, state.float(), steps, seed=5, origin=origin, state_dtype=dtype)
        out = fused_run(m, to_channels_last(state), steps, seed=5, level=1, origin=origin)
        assert out.dtype == dtype
        got = from_channels_last(out).float()
        assert _ulps(got, ref, dtype) <= ulps, (steps, _ulps(got, ref, dtype))
        assert (got == ref).float().mean() >= identical, steps


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_over_many_steps_stays_as_close_as_float64_torch(cpu_kernels, dtype):
    """The worst case (see the module docstring): 10 steps of the 3D kernel-7 BatchNorm model."""
    m = variant("m3d-k7", 1.0)
    m64 = copy.deepcopy(m).double()
    state = torch.randn(2, 16, 5, 9, 11).to(dtype)
    ref = _reference(m, state.float(), 10, seed=5, state_dtype=dtype)
    ref64 = _reference(m64, state.double(), 10, seed=5, state_dtype=dtype).float()
    got = from_channels_last(fused_run(m, to_channels_last(state), 10, seed=5, level=1)).float()
    for other in (got, ref64):
        assert _ulps(other, ref, dtype) <= 8.0
        assert (other == ref).float().mean() >= 0.6


def test_batch_norm_uses_the_statistics_of_the_whole_batch(cpu_kernels):
    m = variant("mednca-k3", 0.5)
    state = torch.randn(2, 16, 9, 13)
    state[1] = 3 * state[1] + 1                               # a second image with other statistics
    together = from_channels_last(fused_run(m, to_channels_last(state), 2, seed=1))
    alone = torch.cat([from_channels_last(fused_run(m, to_channels_last(state[i:i + 1]), 2, seed=1)) for i in (0, 1)])
    torch.testing.assert_close(together, _reference(m, state, 2, seed=1, level=0), atol=1e-5, rtol=1e-5)
    assert (together - alone).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["mednca-k7", "m3d-k5", "vwsl-full2"])
def test_thread_count_does_not_change_the_result(cpu_kernels, name):
    """The statistics are summed per group of planes, then in group order, whatever the thread count."""
    m = variant(name, 0.5)
    shape = (11, 29) if m.dims == 2 else (7, 5, 19)
    state = to_channels_last(torch.randn(2, 16, *shape))
    outs = [fused_run(m, state.clone(), 4, seed=2, threads=t) for t in (1, 2, 3, 8)]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


# Spatial shapes of several BatchNorm statistics groups per item (statistics_groups: 3 and 2).
MULTI_GROUP = {2: (300, 230), 3: (10, 64, 64)}


@pytest.mark.parametrize("name", ["mednca-k3", "vwsl-full2", "m3d-k3", "m3d-k7"])
def test_batch_norm_over_many_statistics_groups(cpu_kernels, name):
    """States of several statistics groups per item: the reference within 1e-5, the same bits
    for any thread count (groups do not follow the threads' bands)."""
    m = variant(name, 0.5)
    shape = MULTI_GROUP[m.dims]
    assert statistics_groups(shape) > 1
    state = torch.randn(2, 16, *shape)
    outs = [fused_run(m, to_channels_last(state), 1, seed=3, level=1, threads=t) for t in (1, 2, 3)]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    torch.testing.assert_close(from_channels_last(outs[0]), _reference(m, state, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mednca-k7", "vwsl-full2", "m3d-k5"])
def test_batch_norm_statistics_stay_accurate_for_features_with_a_large_mean(cpu_kernels, name):
    """The statistics come from feature moments about a reference cell: with features far from
    zero (a state offset by 100, so E[z^2] is about 10^4 times the variance) the fused step
    stays as close to a float64 evaluation as PyTorch's own float32 step (moments about zero
    instead: 1.4 to 4 times PyTorch's error). A large fc1 makes the statistics' errors show."""
    m = variant(name, 1.0)
    torch.manual_seed(5)
    torch.nn.init.normal_(m.fc1.weight, std=1.0)
    shape = MULTI_GROUP[m.dims]
    state = torch.randn(2, 16, *shape) * 0.5 + 100.0
    with torch.no_grad():
        exact = copy.deepcopy(m).double().run(state.double(), 1, seed=3, level=1)
    fused = from_channels_last(fused_run(m, to_channels_last(state), 1, seed=3, level=1)).double()
    torch_f32 = _reference(m, state, 1).double()
    err_fused, err_torch = (fused - exact).abs().max().item(), (torch_f32 - exact).abs().max().item()
    assert err_fused <= 1.25 * err_torch + 1e-6, (err_fused, err_torch)


def test_only_firing_cells_change(cpu_kernels):
    from nca_cli.core.firemask import fire_mask

    m = variant("m3d-rgb-k7", 0.5)
    state = torch.randn(2, 16, 4, 6, 9)
    out = from_channels_last(fused_run(m, to_channels_last(state), 1, seed=9, level=2, origin=(4, 6, 1)))
    changed = (out != state).any(dim=1)
    mask = fire_mask((4, 6, 9), seed=9, level=2, step=0, fire_rate=0.5, origin=(4, 6, 1))
    assert torch.equal(changed, mask.expand_as(changed))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_packed_weights_follow_the_kernel_layout(cpu_kernels, name):
    m = variant(name, 0.5)
    shape = backbone_shape(m)
    mod = kernel_module("cpu", shape)
    assert all(mod.has(*shape, code) for code in (0, 1, 2))
    w = pack_weights(m, "cpu")
    assert w.dtype == torch.float32 and w.numel() == mod.weight_count(*shape)
    # fc1 comes last: its rows for channels IN..C-1 only (the update of the inputs is discarded).
    fc1 = m.fc1.weight.detach()[m.input_channels:] if m.fc1_all_channels else m.fc1.weight.detach()
    assert torch.equal(w[-fc1.numel():], fc1.reshape(-1))
    if m.norm is not None:
        bn = torch.cat([m.norm.weight.detach(), m.norm.bias.detach()])
        assert torch.equal(w[-fc1.numel() - bn.numel():-fc1.numel()], bn)


@pytest.mark.parametrize("name,shape", [("octree-fc1all", None), ("m3d-k3", (7, 13, 9)), ("m3d-k5", (6, 17, 11)),
                                        ("m3d-k7", (7, 30, 9))])
@pytest.mark.parametrize("fire_rate", [0.5, 1.0])
def test_3d_planes_swept_in_strips_of_rows(cpu_kernels, monkeypatch, name, shape, fire_rate):
    """Large 3D planes are swept in strips of rows (here forced to 4 x the kernel radius, so
    the last strip is shorter than the radius for kernel 5): the reference within 1e-5 with 1
    and 3 threads; without BatchNorm the very bits of the whole-plane sweep."""
    if name == "octree-fc1all":
        m, shape = make_backbone(3, 3, fire_rate, seed=4, fc1_all_channels=True), (5, 11, 7)
    else:
        m = variant(name, fire_rate)
    state = torch.randn(2, 16, *shape)
    whole = fused_run(m, to_channels_last(state), 3, seed=2, level=1)
    monkeypatch.setenv("NCA_CPU_STRIP_ROWS", "1")
    for threads in (1, 3):
        strips = fused_run(m, to_channels_last(state), 3, seed=2, level=1, threads=threads)
        torch.testing.assert_close(from_channels_last(strips), _reference(m, state, 3, seed=2, level=1),
                                   atol=1e-5, rtol=1e-5)
        if m.norm is None:
            assert torch.equal(strips, whole)


BATCH_NORM_VARIANTS = [name for name, (_, _, kw) in VARIANTS.items() if kw.get("normalization") == "batch"]


@pytest.mark.parametrize("name", BATCH_NORM_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kept_perception_gives_the_very_bits_of_perceiving_again(cpu_kernels, monkeypatch, name, dtype):
    """keep_perception: the update sweep reads the conv outputs the statistics sweep kept. The
    same bits as perceiving again, over 3 steps of a batch of 2, fire rates 0.5 and 1, 1 and 3
    threads, whole planes and strips; 3D planes of 23 rows go in row groups of 8, 8, 4, 2, 1."""
    dims = VARIANTS[name][0]
    shape = (13, 21) if dims == 2 else (5, 23, 11)
    for fire_rate in (0.5, 1.0):
        m = variant(name, fire_rate)
        state = to_channels_last(torch.randn(2, m.channels, *shape).to(dtype))
        again = fused_run(m, state.clone(), 3, seed=5, level=1)
        assert not torch.equal(again, state)
        for threads in (1, 3):
            kept = fused_run(m, state.clone(), 3, seed=5, level=1, threads=threads, keep_perception=True)
            assert torch.equal(kept, again)
        buffer = torch.full((kept_perception_bytes(m, shape, 2) // 4,), float("nan"))
        kept = fused_run(m, state.clone(), 3, seed=5, level=1, keep_perception=True, keep_buffer=buffer)
        assert torch.equal(kept, again) and not buffer.isnan().all()
    if dims == 3:
        monkeypatch.setenv("NCA_CPU_STRIP_ROWS", "1")
        again = fused_run(m, state.clone(), 3, seed=5, level=1)
        kept = fused_run(m, state.clone(), 3, seed=5, level=1, keep_perception=True)
        assert torch.equal(kept, again)


def test_3d_row_groups_sum_every_cell_in_one_order(cpu_kernels, monkeypatch):
    """3D rows are perceived 8 at a time, the rest in groups of 4, 2 and 1; each cell's
    convolution is summed in the same order whichever group it falls in, so strips of any
    height give the very bits of whole planes (no BatchNorm: nothing else depends on them)."""
    m = make_backbone(3, 1, 1.0, seed=6)
    state = to_channels_last(torch.randn(1, 16, 4, 29, 10))
    whole = fused_run(m, state.clone(), 2, seed=1)
    for rows in ("12", "13", "17"):
        monkeypatch.setenv("NCA_CPU_STRIP_ROWS", rows)
        assert torch.equal(fused_run(m, state.clone(), 2, seed=1), whole)
    torch.testing.assert_close(from_channels_last(whole), _reference(m, from_channels_last(state), 2, seed=1, level=0),
                               atol=1e-5, rtol=1e-5)


def test_a_kept_perception_buffer_that_is_too_small_or_misaligned_is_refused(cpu_kernels):
    m = variant("m3d-k5", 0.5)
    state = to_channels_last(torch.randn(1, 16, 3, 5, 7))
    need = kept_perception_bytes(m, (3, 5, 7)) // 4
    with pytest.raises(RuntimeError, match="needs .* floats"):
        fused_run(m, state, 1, keep_perception=True, keep_buffer=torch.zeros(need - 1))
    with pytest.raises(RuntimeError, match="64-byte aligned"):
        fused_run(m, state, 1, keep_perception=True, keep_buffer=torch.zeros(need + 1)[1:])
