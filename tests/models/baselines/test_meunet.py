import math

import pytest
import torch

from nca_cli.models.baselines.meunet import (
    MeUNet,
    MeUNetCascade,
    class_weights,
    expanded_size,
    meunet_loss,
    meunet_training_loss,
)


def grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_architecture_widths():
    net = MeUNet(1, 3)
    assert [blk[3].out_channels for blk in net.encoder] == [16, 32, 64, 128, 128]
    assert [blk[3].out_channels for blk in net.decoder] == [16, 16, 32, 64]
    # skip first: decoder level 3 sees 128 (skip) + 128 (upsampled bottleneck)
    assert net.decoder[3][0].in_channels == 256
    assert net.decoder[0][0].in_channels == 16 + 16
    assert net.aux_head.in_channels == 16 and net.head.in_channels == 16


def test_forward_and_expanded_shapes_3d_and_2d():
    torch.manual_seed(0)
    net = MeUNet(1, 3)
    assert net(torch.randn(1, 1, 16, 16, 32)).shape == (1, 3, 16, 16, 32)
    assert net.forward_expanded(torch.randn(1, 1, 32, 32, 16)).shape == (1, 3, 16, 16, 8)
    net2 = MeUNet(3, 2, dims=2)
    assert net2(torch.randn(2, 3, 32, 48)).shape == (2, 2, 32, 48)
    assert net2.forward_expanded(torch.randn(1, 3, 48, 48)).shape == (1, 2, 24, 24)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, 16, 16, 24))


def test_expanded_path_leaves_first_level_and_full_res_head_untouched():
    torch.manual_seed(0)
    net = MeUNet(1, 2)
    net.forward_expanded(torch.randn(1, 1, 32, 32, 32)).square().mean().backward()
    assert grad_norm(net.encoder[0]) == 0
    assert grad_norm(net.decoder[0]) == 0 and grad_norm(net.head) == 0
    for module in (*net.encoder[1:], *net.decoder[1:], net.aux_head):
        assert grad_norm(module) > 0


def test_expanded_size():
    assert expanded_size((160, 160, 160)) == (240, 240, 240)
    assert expanded_size((32, 64)) == (48, 96)
    assert expanded_size((16,)) == (32,)


def test_class_weights_softmax_of_inverse_frequency():
    labels = torch.tensor([[0] * 6 + [1] * 3 + [2] + [-1] * 5])
    w = class_weights(labels, 4)
    expected = torch.softmax(torch.tensor([10 / 6, 10 / 3, 10 / 1], dtype=torch.float64), 0).float()
    assert torch.allclose(w[:3], expected)
    assert w[3] == 0
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


def test_loss_small_for_perfect_prediction_and_ignores_outside():
    labels = torch.randint(0, 3, (1, 8, 8, 8))
    good = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float() * 40 - 20
    bad = -good
    assert meunet_loss(good, labels) < 1e-3
    assert meunet_loss(bad, labels) > 1.0
    outside = labels.clone()
    outside[..., :4] = -1
    scrambled = good.clone()
    scrambled[..., :4] = bad[..., :4]
    assert meunet_loss(scrambled, outside) < 1e-3


class Recording(MeUNet):
    def forward(self, x, extra=None):
        self.seen_standard = x.detach().clone()
        return super().forward(x, extra)

    def forward_expanded(self, x):
        self.seen_expanded = x.detach().clone()
        return super().forward_expanded(x)


def test_training_loss_centres_the_expanded_patch_and_trains_everything():
    torch.manual_seed(0)
    net = Recording(1, 2)
    shape = (40, 36, 44)
    coords = torch.arange(math.prod(shape), dtype=torch.float32).reshape(1, 1, *shape) + 1
    labels = (torch.rand(1, *shape) > 0.7).long()
    loss = meunet_training_loss(net, coords, labels, 32, torch.Generator().manual_seed(3))
    assert torch.isfinite(loss) and loss > 0
    std, big = net.seen_standard, net.seen_expanded
    assert std.shape[2:] == (32, 32, 32) and big.shape[2:] == (48, 48, 48)
    assert torch.equal(big[..., 8:40, 8:40, 8:40], std)
    assert (std > 0).all()  # the standard patch lies inside the volume
    loss.backward()
    for module in (*net.encoder, *net.decoder, net.head, net.aux_head):
        assert grad_norm(module) > 0


def test_training_loss_on_volume_smaller_than_patch_2d():
    torch.manual_seed(0)
    net = MeUNet(3, 3, dims=2)
    image = torch.randn(2, 3, 20, 40)
    labels = torch.randint(0, 3, (2, 20, 40))
    loss = meunet_training_loss(net, image, labels, (32, 32), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="multiple of 16"):
        meunet_training_loss(net, image, labels, 24)
    with pytest.raises(ValueError, match="Expected volume"):
        meunet_training_loss(net, image, labels[:, :10], 16)


@pytest.mark.parametrize("mode", ["post_concat", "input_concat"])
def test_cascade_both_modes(mode):
    torch.manual_seed(0)
    stage1 = MeUNet(1, 3)
    cascade = MeUNetCascade(stage1, 1, 3, mode=mode)
    cascade.train()
    assert not stage1.training
    first = cascade.stage2.encoder[0][0].in_channels
    assert first == (1 if mode == "post_concat" else 4)
    extra = 3 if mode == "post_concat" else 0
    assert cascade.stage2.decoder[3][0].in_channels == 256 + extra
    assert cascade.stage2.decoder[0][0].in_channels == 32 + extra

    x = torch.randn(1, 1, 32, 32, 16)
    out = cascade(x)
    assert out.shape == (1, 3, 32, 32, 16)
    out.square().mean().backward()
    assert grad_norm(cascade.stage2) > 0
    assert all(p.grad is None for p in stage1.parameters())

    pred = cascade.stage1_prediction(x)
    assert pred.shape == (1, 3, 32, 32, 16) and torch.equal(pred.sum(1), torch.ones(1, 32, 32, 16))
    cascade.eval()
    with torch.no_grad():
        same = cascade(x, stage1_prediction=pred)
        other = cascade(x, stage1_prediction=pred.roll(1, dims=1))
        assert torch.allclose(cascade(x), same)
    assert not torch.allclose(same, other)


def test_cascade_2d_and_bad_mode():
    cascade = MeUNetCascade([MeUNet(3, 2, dims=2), MeUNet(3, 2, dims=2)], 3, 2, dims=2)
    assert cascade(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        MeUNetCascade(MeUNet(1, 2), 1, 2, mode="pre")
