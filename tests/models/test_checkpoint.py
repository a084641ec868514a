"""Every checkpoint format the loader accepts, each built here by hand as its writer wrote it."""
import pytest
import torch

from nca_cli.core.errors import NCAError
from nca_cli.models import NCAConfig, OctreeNCA, build_model, checkpoint

UNET = {"architecture": "unet", "dims": 2, "input_channels": 1, "output_channels": 1}
UNET_OPTIONS = {"num_encoding_blocks": 2, "out_channels_first_layer": 2}


def _weights(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model, state):
    return set(model.state_dict()) == set(state) and all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_current_format_round_trip(tmp_path):
    model = OctreeNCA(NCAConfig(dims=2, input_channels=3, output_channels=2, levels=2, steps=[2, 3]))
    state = _weights(model)
    checkpoint.save_model(tmp_path / "m.pt", model, {"name": "r"}, {"epochs": 3})
    loaded, payload = checkpoint.load_model(tmp_path / "m.pt")
    assert isinstance(loaded, OctreeNCA) and _same(loaded, state) and not loaded.training
    metadata = dict(payload["metadata"])
    contract = metadata.pop("contract")          # added on loading when the file has none (models.contract)
    assert payload["recipe"] == {"name": "r"} and metadata == {"epochs": 3}
    assert contract["version"] >= 1 and contract["channels"] == 3 and contract["dims"] == 2


def test_first_format_with_baseline_settings_under_options(tmp_path):
    model = build_model({**UNET, **UNET_OPTIONS})
    state = _weights(model)
    torch.save({"format": "nca-model/1", "model_config": {**UNET, "options": dict(UNET_OPTIONS)},
                "state_dict": state, "recipe": None, "metadata": {}}, tmp_path / "old.pt")
    loaded, _ = checkpoint.load_model(tmp_path / "old.pt")
    assert loaded.config.out_channels_first_layer == 2 and loaded.config.num_encoding_blocks == 2
    assert _same(loaded, state)


def test_nca_config_written_before_the_later_keys(tmp_path):
    """Only the keys of the first model files: every later key takes its default."""
    model = OctreeNCA(NCAConfig(dims=2, input_channels=1, output_channels=1, levels=2, steps=[2, 2]))
    state = _weights(model, seed=1)
    first = {"architecture": "octree_nca", "dims": 2, "input_channels": 1, "output_channels": 1, "levels": 2,
             "steps": [2, 2]}
    torch.save({"format": "nca-model/1", "model_config": first, "state_dict": state}, tmp_path / "first.pt")
    loaded, payload = checkpoint.load_model(tmp_path / "first.pt")     # no recipe, no metadata
    assert loaded.config.to_dict() == model.config.to_dict() and _same(loaded, state)
    assert payload.get("recipe") is None


@pytest.mark.parametrize("payload,match", [
    ({"model": {}, "epoch": 3}, "not an nca model file"),                          # a training state (last.pt)
    ({"format": "nca-model/0", "model_config": {}, "state_dict": {}}, "not an nca model file"),
    ({"format": "nca-model/1", "model_config": {**UNET, "options": {"num_encoding_blocks": 3}},
      "state_dict": {}}, "does not match its own model configuration"),
])
def test_files_that_are_not_model_files_are_refused_in_one_sentence(tmp_path, payload, match):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(NCAError, match=match):
        checkpoint.load_model(tmp_path / "x.pt")
