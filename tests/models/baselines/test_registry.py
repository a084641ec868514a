import torch

from nca_cli.models.baselines import BASELINES


def test_registry_names_and_builders():
    assert set(BASELINES) == {"unet", "meunet", "meunet_cascade", "segresmamba", "segresnet"}
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for name, build in BASELINES.items():
        model = build(2, 3, 2).eval()
        assert 32 % model.divisor == 0, name
        with torch.no_grad():
            assert model(x).shape == (1, 2, 32, 32), name
