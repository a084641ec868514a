import pytest
import torch

from nca_cli.models import build_model


def build_unet(dims, cin, cout):
    return build_model({"architecture": "unet", "dims": dims, "input_channels": cin, "output_channels": cout})


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "dims, cin, cout, published",
    [(2, 3, 1, 36_951_425), (3, 1, 1, 19_071_297), (3, 3, 5, 19_073_285)],
)
def test_parameter_counts_equal_published(dims, cin, cout, published):
    assert n_params(build_unet(dims, cin, cout)) == published


def test_same_size_logits_2d_and_3d():
    torch.manual_seed(0)
    net2 = build_unet(2, 3, 1).eval()
    assert net2.divisor == 16
    y = net2(torch.randn(1, 3, 32, 48))
    assert y.shape == (1, 1, 32, 48)
    net3 = build_unet(3, 3, 5).eval()
    assert net3.divisor == 8
    y = net3(torch.randn(2, 3, 8, 16, 24))
    assert y.shape == (2, 5, 8, 16, 24)
    assert (y < 0).any() and (y > 0).any()  # raw logits, no activation


def test_state_dict_keys_are_the_packages():
    from unet import UNet3D

    ours = build_unet(3, 1, 1).state_dict()
    theirs = UNet3D(in_channels=1, out_classes=1).state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_indivisible_size_is_rejected():
    net = build_unet(3, 1, 1)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 8, 12, 8))
    with pytest.raises(ValueError, match="spatial axes"):
        net(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="dims"):
        build_unet(1, 1, 1)
