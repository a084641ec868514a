"""Fused CPU kernel against the PyTorch reference (BackboneNCA.run).

Tolerances:
- float32 storage: 1e-5 (absolute and relative). Only the order of the float32 sums differs.
- float16 / bfloat16 storage: both sides round the state to the storage type after every
  step (round to nearest even). A value within float32 noise of a rounding midpoint may
  round the other way, one unit in the last place of the storage type, and such a
  difference propagates through later steps. We allow 4 units in the last place, relative
  to max(|value|, 1): 4 * 2^-10 for float16, 4 * 2^-7 for bfloat16, and require at least
  90 % of the elements to be bit-identical.
"""
import pytest
import torch

from nca_cli.core.firemask import fire_mask
from nca_cli.kernels import from_channels_last, fused_run, to_channels_last

from .conftest import make_backbone

ULP = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}

CASES = [
    # dims, spatial shape, input channels, fire rate, origin
    (2, (17, 23), 3, 0.5, (5, -7)),
    (2, (17, 23), 1, 1.0, None),
    (3, (5, 9, 11), 1, 0.5, (2, 3, 4)),
    (3, (5, 9, 11), 3, 1.0, None),
    (2, (1, 6), 3, 0.5, None),                   # a size-1 axis
    (2, (2, 1), 1, 1.0, (0, 3)),                 # smaller than the kernel
    (3, (2, 1, 3), 3, 0.5, (7, 0, 1)),
    (3, (1, 4, 2), 1, 1.0, None),
    (2, (40, 37), 3, 0.5, (-5, 4294967290)),     # coordinates wrap modulo 2^32
]


def _reference(m, state_cf, steps, seed, level, origin, state_dtype=None):
    with torch.no_grad():
        return m.run(state_cf, steps, seed=seed, level=level, origin=origin, state_dtype=state_dtype)


@pytest.mark.parametrize("dims,shape,inp,fire_rate,origin", CASES)
def test_float32_matches_reference(cpu_kernels, dims, shape, inp, fire_rate, origin):
    m = make_backbone(dims, inp, fire_rate)
    state = torch.randn(2, 16, *shape)
    ref = _reference(m, state, 10, 3, 1, origin)
    cl = to_channels_last(state)
    out = fused_run(m, cl, 10, seed=3, level=1, origin=origin, threads=2)
    assert out is cl and out.data_ptr() == cl.data_ptr()          # updated in place
    torch.testing.assert_close(from_channels_last(out), ref, atol=1e-5, rtol=1e-5)
    assert not torch.equal(from_channels_last(out), state)        # the update did something


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dims,shape,inp,fire_rate", [(2, (17, 23), 3, 0.5), (3, (5, 9, 11), 1, 1.0)])
def test_half_storage_matches_reference(cpu_kernels, dtype, dims, shape, inp, fire_rate):
    m = make_backbone(dims, inp, fire_rate)
    state = torch.randn(2, 16, *shape).to(dtype)
    ref = _reference(m, state.float(), 10, 5, 0, None, state_dtype=dtype)
    out = fused_run(m, to_channels_last(state), 10, seed=5)
    assert out.dtype == dtype
    got = from_channels_last(out).float()
    err = (got - ref).abs()
    assert (err <= 4 * ULP[dtype] * ref.abs().clamp(min=1.0)).all(), err.max()
    assert (err == 0).float().mean() >= 0.9


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_storage_rounding_is_exact(cpu_kernels, dtype):
    """One step whose update per channel is one exact float32 number: the stored result must
    be bit-identical to torch's float32 -> dtype rounding (ties, subnormals, overflow)."""
    m = make_backbone(2, 3, 1.0)
    with torch.no_grad():
        for p in (m.p0.weight, m.p0.bias, m.fc0.weight, m.fc0.bias, m.fc1.weight):
            p.zero_()
        m.fc0.bias[7] = 1.0                       # h = one-hot: delta = fc1.weight[:, 7] exactly
        m.fc1.weight[:, 7] = torch.tensor([2.0 ** -11, 3 * 2.0 ** -11, -2.0 ** -12, 2.0 ** -25, 3e-5, 16.0, -1e-8,
                                           0.1, 2.0 ** -8, 1e-3, 5.0, -0.3, 2.0 ** -17])
    state = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0 ** -24, 65504.0, 2.0 ** -14, 3.0, 256.0, -1.0, 1000.0, 0.7, -2.0])
    state = torch.cat([torch.zeros(3), state]).reshape(1, 16, 1, 1).expand(1, 16, 3, 5).to(dtype).contiguous()
    state[0, :, 1, 2] = torch.randn(16).to(dtype)
    expected = (state.float() + torch.cat([torch.zeros(3), m.fc1.weight[:, 7].detach()]).reshape(1, 16, 1, 1)).to(dtype)
    out = fused_run(m, to_channels_last(state), 1)
    assert torch.equal(from_channels_last(out), expected)


def test_thread_count_does_not_change_the_result(cpu_kernels):
    m = make_backbone(2, 3, 0.5)
    state = to_channels_last(torch.randn(1, 16, 7, 29))
    outs = [fused_run(m, state.clone(), 6, seed=2, threads=t) for t in (1, 2, 3, 8)]
    for o in outs[1:]:
        assert torch.equal(o, outs[0])
    m3 = make_backbone(3, 1, 0.5)
    state3 = to_channels_last(torch.randn(1, 16, 5, 6, 19))
    assert torch.equal(fused_run(m3, state3.clone(), 4, threads=1), fused_run(m3, state3.clone(), 4, threads=5))


def test_only_firing_cells_change_and_inputs_stay(cpu_kernels):
    m = make_backbone(2, 3, 0.5)
    state = torch.randn(1, 16, 12, 35)
    out = from_channels_last(fused_run(m, to_channels_last(state), 1, seed=9, level=2, origin=(4, 6)))
    changed = (out != state).any(dim=1)[0]
    mask = fire_mask((12, 35), seed=9, level=2, step=0, fire_rate=0.5, origin=(4, 6))
    assert torch.equal(changed, mask)
    assert torch.equal(out[:, :3], state[:, :3])


def test_seed_and_level_wrap_like_the_reference(cpu_kernels):
    m = make_backbone(2, 1, 0.5)
    state = torch.randn(1, 16, 9, 10)
    ref = _reference(m, state, 3, 2 ** 33 + 5, 2 ** 32 + 1, None)
    out = fused_run(m, to_channels_last(state), 3, seed=2 ** 33 + 5, level=2 ** 32 + 1)
    torch.testing.assert_close(from_channels_last(out), ref, atol=1e-5, rtol=1e-5)


def test_no_steps_and_no_firing_leave_the_state(cpu_kernels):
    state = to_channels_last(torch.randn(1, 16, 6, 7))
    before = state.clone()
    assert torch.equal(fused_run(make_backbone(2, 3, 0.5), state, 0), before)
    assert torch.equal(fused_run(make_backbone(2, 3, 0.0), state, 5), before)


def test_rejects_wrong_inputs(cpu_kernels):
    m = make_backbone(2, 3, 0.5)
    with pytest.raises(ValueError, match="channels-last"):
        fused_run(m, torch.randn(1, 16, 8, 8), 1)                      # channels first
    with pytest.raises(ValueError, match="contiguous"):
        fused_run(m, torch.randn(1, 8, 16, 16).transpose(1, 2), 1)
    with pytest.raises(TypeError, match="dtype"):
        fused_run(m, torch.randn(1, 8, 8, 16, dtype=torch.float64), 1)
    with pytest.raises(ValueError, match="origin"):
        fused_run(m, torch.randn(1, 8, 8, 16), 1, origin=(1, 2, 3))
    with pytest.raises(ValueError, match="not fusable"):
        fused_run(make_backbone(2, 3, 0.5, kernel_size=11), torch.randn(1, 8, 8, 16), 1)


def test_the_launcher_states_its_sizes(cpu_kernels):
    """The sizes Python plans with come from the launcher itself (cuda/nca_cpu.cpp exports them)."""
    from nca_cli.kernels import statistics_groups, strip_rows, workspace_bytes

    k = cpu_kernels.constants()
    lanes = k["lanes"]
    assert lanes == cpu_kernels.lanes() and lanes in (4, 8, 16)
    assert (k["stats_group_cells"], k["stats_max_groups"], k["strip_bytes"]) == (1 << 15, 1024, 1 << 20)
    # groups of whole planes of at least 32 K cells, at most 1024 groups per item
    assert statistics_groups((64, 128, 128)) == 32          # 2 planes of 16 K cells per group
    assert statistics_groups((3000, 8)) == 1                 # 4096 rows of 8 cells would be needed
    assert statistics_groups((100000, 64)) == 196            # 512 rows per group
    # 3D strips: rows whose float32 ring (3 rows of 18 blocks of 16 x 16 floats) fits 1 MiB, in
    # whole groups of 8 rows
    assert strip_rows(256, 18 * 16 * 16 * 4, 1) == 16
    assert strip_rows(12, 18 * 16 * 16 * 4, 1) == 12         # a plane smaller than a strip is swept whole
    # per thread: a ring of 3 blocked float32 rows (one block of padding each side), 2 raw halo
    # rows, 64 bytes of alignment; the 2D plane is one row
    row_floats = (-(-37 // lanes) + 2) * lanes * 16
    m = make_backbone(2, 1, 0.5)
    assert workspace_bytes(m, (100, 37), 1, 2, threads=2) == 2 * (3 * row_floats * 4 + 2 * 37 * 16 * 2 + 64)
    assert workspace_bytes(m, (100, 37), 1, 2, threads=1) == 3 * row_floats * 4 + 2 * 37 * 16 * 2 + 64
    # 3D: planes of 256 x 256 swept in strips; the ring holds strip + 2 rows per plane, and each
    # thread saves 1 original row per plane of its band (2 planes each)
    m3 = make_backbone(3, 1, 0.5)
    row_floats = (-(-256 // lanes) + 2) * lanes * 16
    strip = strip_rows(256, row_floats * 4, 1)
    per_thread = 3 * (strip + 2) * row_floats * 4 + 2 * 256 * 256 * 16 * 4 + 256 * 16 * 4 * 2 + 64
    assert workspace_bytes(m3, (4, 256, 256), 1, 4, threads=2) == 2 * per_thread
    # BatchNorm adds per thread the moment buffers (256 cells of 32 features, the 32 x 32 float
    # products per lane, W0 and a scratch row in double) and per statistics group (one here) its
    # sums (2 x 64), its record (2 x 32 + 32 x 32 + 2) in double, and alpha, beta in float
    bn = make_backbone(2, 1, 0.5, normalization="batch")
    row_floats = (-(-64 // lanes) + 2) * lanes * 16
    moments = 4 * (256 * 32 + 32 * 32 * lanes) + 8 * (32 * 64 + 64)
    groups = (2 * 64 + 2 * 32 + 32 * 32 + 2) * 8 + 2 * 64 * 4
    assert workspace_bytes(bn, (64, 64), 1, 4, threads=1) == 3 * row_floats * 4 + 2 * 64 * 16 * 4 + 64 + moments + groups
