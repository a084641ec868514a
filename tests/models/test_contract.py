"""The I/O contract in model.pt: recorded by prepare and train, migrated for old checkpoints."""
from pathlib import Path

import torch

from nca_cli.data.prepare import prepare
from nca_cli.models import build_model, checkpoint
from nca_cli.models.contract import CONTRACT_VERSION, dataset_contract
from nca_cli.recipes import load_recipe
from nca_cli.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"architecture": "octree_nca", "dims": 2, "input_channels": 3, "output_channels": 1, "levels": 2,
         "factors": [2], "steps": [2, 2], "kernel_sizes": [3, 3], "hidden": 8, "channels": 8}
MANIFEST = {"dims": 2, "channels": 3, "modality": "H&E", "kind": "pathology", "classes": ["epithelium"],
            "normalization": {"method": "none", "divide_by": 255}, "spacing": [0.48, 0.48], "spacing_unit": "um"}


def _payload(model, metadata, config=None):
    return {"format": checkpoint.MODEL_FORMAT, "model_config": config or model.config.to_dict(),
            "state_dict": model.state_dict(), "recipe": None, "metadata": metadata}


def test_a_2d_dataset_in_um_gives_its_mpp_and_one_in_pixels_none():
    assert dataset_contract(MANIFEST)["mpp"] == 0.48
    assert dataset_contract({**MANIFEST, "spacing": [0.0005, 0.0005], "spacing_unit": "mm"})["mpp"] == 0.5
    pixels = dataset_contract({**MANIFEST, "spacing": [1.0, 1.0], "spacing_unit": "px"})
    assert pixels["mpp"] is None and pixels["spacing"] is None


def test_a_3d_dataset_records_its_spacing_and_fixed_shape():
    c = dataset_contract({**MANIFEST, "dims": 3, "channels": 1, "spacing": [3.6, 0.6, 0.6], "spacing_unit": "mm",
                          "resize_shape": [32, 128, 128]})
    assert c["mpp"] is None and c["spacing"] == [3.6, 0.6, 0.6] and c["resize_shape"] == [32, 128, 128]
    assert c["version"] == CONTRACT_VERSION and c["channels"] == 1


def test_format_1_without_contract_loads_with_an_unknown_resolution(tmp_path):
    """The layout `nca train` wrote before the contract: classes and normalisation in metadata."""
    model = build_model(SMALL)
    checkpoint.save(_payload(model, {"classes": ["gland"], "normalization": {"method": "none", "divide_by": 255}}),
                    tmp_path / "old.pt")
    _, payload = checkpoint.load_model(tmp_path / "old.pt")
    contract = payload["metadata"]["contract"]
    assert contract["version"] == CONTRACT_VERSION and contract["mpp"] is None and contract["spacing"] is None
    assert contract["classes"] == ["gland"] and contract["channels"] == 3 and contract["dims"] == 2
    assert contract["normalization"] == {"method": "none", "divide_by": 255}


def test_format_1_with_options_is_flattened(tmp_path):
    """The first layout kept a model's settings under ``options``."""
    model = build_model(SMALL)
    config = model.config.to_dict()
    nested = {k: v for k, v in config.items() if k not in ("hidden", "steps")}
    nested["options"] = {"hidden": config["hidden"], "steps": config["steps"]}
    checkpoint.save(_payload(model, {}, nested), tmp_path / "old.pt")
    loaded, payload = checkpoint.load_model(tmp_path / "old.pt")
    assert payload["model_config"]["hidden"] == 8 and "options" not in payload["model_config"]
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_recorded_contract_is_kept(tmp_path):
    model = build_model(SMALL)
    contract = {**dataset_contract(MANIFEST)}
    checkpoint.save_model(tmp_path / "new.pt", model, None, {"contract": contract})
    assert checkpoint.load_model(tmp_path / "new.pt")[1]["metadata"]["contract"] == contract


def test_train_stores_the_resolution_of_its_dataset(tmp_path):
    data = prepare("synthetic", None, tmp_path / "data", kind="pathology", cases=3, size=96, seed=0)
    recipe = load_recipe(ROOT / "recipes" / "octree_pathology.yaml", [
        f"data.dataset={data}", "model.levels=2", "model.factors=[2]", "model.steps=[2,2]",
        "model.kernel_sizes=[3,3]", "model.hidden=8", "data.patch=[32,32]", "data.batch_size=1",
        "data.batches_per_epoch=1", "training.save_every=1"])
    train(recipe, tmp_path / "run", epochs=1, quiet=True, impl="torch")
    contract = checkpoint.load_model(tmp_path / "run" / "model.pt")[1]["metadata"]["contract"]
    assert contract["dims"] == 2 and contract["channels"] == 3 and contract["kind"] == "pathology"
    assert contract["mpp"] == 0.48   # the synthetic PESO slides are prepared at PESO's 0.48 µm/px
    assert contract["normalization"]["divide_by"] == 255
