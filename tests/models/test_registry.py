import dataclasses

import pytest
import torch

from nca_cli.models import NCAConfig, architecture, build_model, list_models
from nca_cli.models.config import ModelConfig

BASELINES = {"unet", "meunet", "meunet_cascade", "segresmamba", "segresnet"}


def test_one_entry_per_architecture():
    assert set(list_models()) == BASELINES | {"octree_nca", "med_nca", "m3d_nca"}
    for name in list_models():
        arch = architecture(name)
        assert issubclass(arch.config, ModelConfig) and arch.name == name
        assert arch.output in ("sigmoid", "softmax") and arch.predictor in ("octree", "window")
    assert architecture("unet").output == "sigmoid" and architecture("meunet").softmax
    assert architecture("med_nca").config is NCAConfig and architecture("m3d_nca").is_nca
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        architecture("nope")


def test_baselines_build_from_their_config_and_run():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for name in sorted(BASELINES):
        model = build_model({"architecture": name, "dims": 2, "input_channels": 3, "output_channels": 2}).eval()
        assert model.config.architecture == name and dataclasses.is_dataclass(model.config)
        assert 32 % model.divisor == 0, name
        with torch.inference_mode():
            assert model(x).shape == (1, 2, 32, 32), name
        assert build_model(model.config.to_dict()).config == model.config


def test_config_checks_share_one_rule():
    with pytest.raises(ValueError, match="hidden"):
        NCAConfig(dims=2, input_channels=3, output_channels=1, hidden=0)
    with pytest.raises(ValueError, match="widths"):
        build_model({"architecture": "segresnet", "dims": 3, "input_channels": 1, "output_channels": 2, "widths": [4]})


def test_the_cascade_is_a_strategy_of_its_registry_entry():
    """meU-net's cascade supplies its two stages and what holding stage 1's labels costs; the
    memory model adds exactly that to one stage's sliding-window pass."""
    from nca_cli.inference.memory import InputCost, window_phases
    from nca_cli.models import architecture, build_model

    assert architecture("meunet").cascade is None and architecture("unet").cascade is None
    strategy = architecture("meunet_cascade").cascade
    spec = {"dims": 3, "input_channels": 1, "output_channels": 3}
    cascade = build_model({"architecture": "meunet_cascade", **spec}).eval()
    assert strategy.held_bytes(cascade, 1000, 100) == 1000 + 100 * (2 * 3 + 1) * 4
    first, second = strategy.first(cascade), strategy.second(cascade)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        probs = first(x)
        assert torch.allclose(probs.sum(1), torch.ones(1, 16, 16, 16))
        onehot = torch.nn.functional.one_hot(probs.argmax(1), 3).movedim(-1, 1).float()
        assert torch.equal(second(torch.cat([x, onehot], 1)), cascade(x, stage1_prediction=onehot))
    single = build_model({"architecture": "meunet", **spec})
    shape, window, cost = (40, 32, 32), (16, 16, 16), InputCost(1)
    two = window_phases(cascade, shape, window, cost=cost, forward=10 ** 6)["windows"]
    one = window_phases(single, shape, window, cost=cost, forward=10 ** 6)["windows"]
    assert two - one == strategy.held_bytes(cascade, 40 * 32 * 32, 16 * 32 * 32)


def test_architectures_build_their_published_variant_from_dims_and_channels():
    """The parameter counts the papers give (REFERENCE.md): Med-NCA 7,488, M3D-NCA 12,480,
    OctreeNCA 15,520 (pathology) and 17,600 (radiology)."""
    from nca_cli.models.registry import count_parameters

    def built(name, dims, inputs, **keys):
        return build_model({"architecture": name, "dims": dims, "input_channels": inputs, "output_channels": 1, **keys})

    med = built("med_nca", 2, 3)
    assert count_parameters(med) == 7488 and med.config.kernel_sizes == [3, 7] and med.config.normalization == "batch"
    assert count_parameters(built("m3d_nca", 3, 1)) == 12480
    assert count_parameters(built("octree_nca", 2, 3)) == 15520 and count_parameters(built("octree_nca", 3, 1)) == 17600
    assert built("med_nca", 2, 3, hidden=32).config.kernel_sizes == [3, 7]          # a key overrides only itself
    three = built("octree_nca", 2, 3, levels=3)                                     # per-level lists follow levels
    assert three.config.steps == [10, 10, 10] and three.config.factors == [[2, 2], [2, 2]]
