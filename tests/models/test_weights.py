"""Models draw their own reproducible random weights."""
import torch

from nca_cli.models import BackboneNCA, build_model


def test_randomize_is_reproducible_and_scaled():
    spec = {"architecture": "octree_nca", "dims": 2, "input_channels": 3, "output_channels": 1}
    a = build_model(spec).randomize_(0.2, seed=3)
    b = build_model(spec).randomize_(0.2, seed=3)
    c = build_model(spec).randomize_(0.2, seed=4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert abs(pa.std().item() - 0.2) < 0.01 and abs(pa.mean().item()) < 0.01


def test_randomize_draws_the_parameters_in_order_from_one_generator():
    nca = BackboneNCA(2, 8, 16, input_channels=1).randomize_(0.5, seed=7)
    g = torch.Generator().manual_seed(7)
    for p in nca.parameters():
        assert torch.equal(p, torch.randn(p.shape, generator=g) * 0.5)
