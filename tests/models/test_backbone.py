import pytest
import torch
import torch.nn.functional as F

from nca_cli.models import BackboneNCA
from nca_cli.models.backbone import reflect_index, reflect_pad


@pytest.mark.parametrize("dims", [2, 3])
def test_parameter_layout(dims):
    nca = BackboneNCA(dims, 16, 64, input_channels=3 if dims == 2 else 1)
    n = sum(p.numel() for p in nca.parameters())
    assert n == (3104 if dims == 2 else 3520)
    assert torch.count_nonzero(nca.fc1.weight) == 0 and nca.fc1.bias is None
    assert nca.fc0.bias is not None and nca.p0.bias is not None


def test_reflect_index_rule():
    assert reflect_index(5, 1).tolist() == [1, 0, 1, 2, 3, 4, 3]
    assert reflect_index(3, 3).tolist() == [1, 2, 1, 0, 1, 2, 1, 0, 1]
    assert reflect_index(1, 2).tolist() == [0] * 5
    x = torch.randn(1, 2, 6, 7)
    assert torch.equal(reflect_pad(x, 1, 2), F.pad(x, (1, 1, 1, 1), mode="reflect"))


def test_reflect_border_matches_explicit_conv():
    g = torch.Generator().manual_seed(1)
    nca = BackboneNCA(2, 8, 16, input_channels=1, fire_rate=1.0).randomize_(0.3, seed=1)
    s = torch.randn(1, 8, 5, 6, generator=g)
    padded = F.pad(s, (1, 1, 1, 1), mode="reflect")
    perceived = F.conv2d(padded, nca.p0.weight, nca.p0.bias, groups=8)
    feats = torch.cat([s, perceived], 1).permute(0, 2, 3, 1)
    delta = F.linear(torch.relu(F.linear(feats, nca.fc0.weight, nca.fc0.bias)), nca.fc1.weight).permute(0, 3, 1, 2)
    expected = s.clone()
    expected[:, 1:] += delta
    assert torch.allclose(nca.step(s), expected, atol=1e-6)


@pytest.mark.parametrize("dims,shape", [(2, (9, 13)), (3, (5, 7, 3)), (2, (1, 4)), (3, (1, 1, 2))])
def test_inputs_unchanged_and_deterministic(dims, shape):
    g = torch.Generator().manual_seed(2)
    nca = BackboneNCA(dims, 16, 32, input_channels=2, fire_rate=0.5).randomize_(0.3, seed=2)
    s = torch.randn(2, 16, *shape, generator=g)
    out = nca.run(s, 5, seed=7)
    assert torch.equal(out[:, :2], s[:, :2])
    assert not torch.equal(out[:, 2:], s[:, 2:])
    assert torch.equal(out, nca.run(s, 5, seed=7))
    assert not torch.equal(out, nca.run(s, 5, seed=8))


def test_fire_rate_one_updates_every_cell_deterministically():
    g = torch.Generator().manual_seed(3)
    nca = BackboneNCA(2, 16, 32, input_channels=3, fire_rate=1.0).randomize_(0.3, seed=3)
    s = torch.randn(1, 16, 8, 8, generator=g)
    a, b = nca.run(s, 3, seed=1), nca.run(s, 3, seed=99)
    assert torch.equal(a, b)
    assert (nca.step(s)[:, 3:] != s[:, 3:]).all()


def test_fire_mask_one_value_per_cell():
    g = torch.Generator().manual_seed(4)
    nca = BackboneNCA(2, 16, 32, input_channels=1, fire_rate=0.5).randomize_(0.3, seed=4)
    s = torch.randn(1, 16, 16, 16, generator=g)
    changed = nca.step(s, seed=5)[:, 1:] != s[:, 1:]
    per_cell = changed.any(1)
    assert torch.equal(per_cell, changed.all(1))  # a cell updates all its channels or none
    assert 0.3 < per_cell.float().mean() < 0.7


@pytest.mark.parametrize("dims,shape", [(2, (11, 7)), (3, (3, 5, 9))])
def test_batch_of_two_equals_two_alone(dims, shape):
    g = torch.Generator().manual_seed(5)
    nca = BackboneNCA(dims, 16, 32, input_channels=1, fire_rate=0.5).randomize_(0.3, seed=5)
    s = torch.randn(2, 16, *shape, generator=g)
    both = nca.run(s, 4, seed=3)
    tol = 1e-6 * both.abs().max().item()   # float rounding only: convolution blocking may differ with batch size
    assert torch.allclose(both[:1], nca.run(s[:1], 4, seed=3), rtol=0, atol=tol)
    assert torch.allclose(both[1:], nca.run(s[1:], 4, seed=3), rtol=0, atol=tol)


def test_batchnorm_and_full_perception_variants():
    nca = BackboneNCA(2, 16, 128, input_channels=1, normalization="batch", perception="full2", fc1_all_channels=True)
    assert sum(p.numel() for p in nca.parameters()) == 13216
    assert nca.fusable and BackboneNCA(2).fusable          # the fused kernels implement every variant
    assert not BackboneNCA(2, kernel_size=11).fusable
    s = torch.randn(2, 16, 6, 6)
    assert torch.equal(nca.run(s, 2)[:, :1], s[:, :1])


def test_large_pointwise_layers_are_split_without_changing_the_result(monkeypatch):
    import nca_cli.models.backbone as backbone

    g = torch.Generator().manual_seed(6)
    nca = BackboneNCA(2, 16, 64, input_channels=3, fire_rate=0.5).randomize_(0.3, seed=6)
    s = torch.randn(1, 16, 40, 30, generator=g)
    whole = nca.run(s, 3, seed=1)
    monkeypatch.setattr(backbone, "POINTWISE_LIMIT", 1000)   # forces many chunks
    assert torch.allclose(nca.run(s, 3, seed=1), whole, atol=1e-5, rtol=1e-5)
