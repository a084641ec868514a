import pytest
import torch

from nca_cli.models.baselines.segresmamba import (
    MambaBlock,
    SegResMamba,
    TriOrientedMamba,
    scan_orders,
)


def test_scan_orders():
    forward, reverse, interleaved = scan_orders((2, 3))
    assert forward is None
    assert reverse.tolist() == [5, 4, 3, 2, 1, 0]
    assert interleaved.tolist() == [0, 3, 1, 4, 2, 5]
    _, _, inter3 = scan_orders((3, 2, 2))
    # same (h, w) position in consecutive slices of the first axis
    assert inter3[:3].tolist() == [0, 4, 8]
    assert sorted(inter3.tolist()) == list(range(12))


def test_mamba_block_parameters_and_causality():
    torch.manual_seed(0)
    block = MambaBlock(32)
    assert block.d_inner == 64 and block.dt_rank == 2 and block.d_state == 16
    assert block.conv1d.kernel_size == (4,) and block.conv1d.groups == 64
    assert block.x_proj.out_features == 2 + 2 * 16
    assert torch.all(-torch.exp(block.A_log) < 0)
    x = torch.randn(2, 40, 32)
    y = block(x)
    assert y.shape == x.shape
    changed = x.clone()
    changed[:, 25:] += torch.randn(2, 15, 32)
    y2 = block(changed)
    assert torch.allclose(y[:, :25], y2[:, :25], atol=1e-6)
    assert not torch.allclose(y[:, 25:], y2[:, 25:])


def test_tri_oriented_mamba_is_the_sum_of_three_directions():
    torch.manual_seed(0)
    tom = TriOrientedMamba(16)
    spatial = (3, 4, 5)
    tokens = torch.randn(1, 60, 16)
    forward, reverse, inter = tom.directions
    order = scan_orders(spatial)[2]
    expected = forward(tokens) + reverse(tokens.flip(1)).flip(1)
    expected[:, order] += inter(tokens[:, order])
    assert torch.allclose(tom(tokens, spatial), expected, atol=1e-6)


def test_segresmamba_3d_trains_its_mamba_layers():
    torch.manual_seed(0)
    net = SegResMamba(1, 3)
    assert net.divisor == 32
    assert [net.stages[i][-1].mamba.norm.normalized_shape[0] for i in range(4)] == [48, 96, 192, 384]
    mamba = net.mamba_parameters()
    assert len(mamba) == 4 * 3 * 9
    x = torch.randn(1, 1, 32, 32, 64)  # deepest Mamba sees 2 tokens
    y = net(x)
    assert y.shape == (1, 3, 32, 32, 64)
    y.square().mean().backward()
    for p in mamba:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_plain_segresnet_and_2d():
    torch.manual_seed(0)
    plain = SegResMamba(1, 2, use_mamba=False)
    assert plain.divisor == 16 and plain.mamba_parameters() == []
    assert not any("mamba" in name for name, _ in plain.named_parameters())
    y = plain(torch.randn(1, 1, 16, 16, 32))
    assert y.shape == (1, 2, 16, 16, 32)
    y.sum().backward()
    net2 = SegResMamba(3, 2, dims=2)
    y2 = net2(torch.randn(2, 3, 64, 32))
    assert y2.shape == (2, 2, 64, 32)
    y2.sum().backward()
    assert all(p.grad is not None for p in net2.mamba_parameters())


def test_input_checks():
    with pytest.raises(ValueError, match="divisible by 32"):
        SegResMamba(1, 2)(torch.randn(1, 1, 16, 32, 32))
    with pytest.raises(ValueError, match="2 or 3"):
        SegResMamba(1, 2, dims=1)
