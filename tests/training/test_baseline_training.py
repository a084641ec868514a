import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nca_cli.core.errors import NCAError
from nca_cli.data.dataset import PreparedDataset
from nca_cli.data.prepare import prepare
from nca_cli.models import checkpoint
from nca_cli.models.baselines import MeUNet, MeUNetCascade, SegResMamba
from nca_cli.recipes import load_recipe
from nca_cli.training.steps import ContextSampler, masks_to_labels
from nca_cli.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["data.patch=[16,16,16]", "data.batch_size=2", "data.batches_per_epoch=1", "training.validate_every=1"]
TINY_SEGRES = ["model.widths=[8,16]", "model.blocks_down=[1,1]", "model.output_channels=4"]


@pytest.fixture(scope="module")
def microct(tmp_path_factory):
    root = tmp_path_factory.mktemp("microct")
    return prepare("synthetic", None, root / "data", kind="microct", cases=3, size=16, seed=0)


@pytest.fixture(scope="module")
def meunet_run(microct, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "meunet"
    r = load_recipe(ROOT / "recipes" / "meunet_microct.yaml", [f"data.dataset={microct}", *QUICK])
    record = train(r, run, epochs=2, quiet=True)
    return run, record


def test_masks_to_labels_background_is_zero():
    masks = torch.zeros(1, 3, 2, 2)
    masks[0, 0, 0, 0] = 1
    masks[0, 2, 1, 1] = 1
    assert masks_to_labels(masks).tolist() == [[[1, 0], [0, 3]]]


def test_patch_sampler_centres_context_and_ignores_outside(microct):
    ds = PreparedDataset(microct, "train")
    sampler = ContextSampler(ds, 2, (8, 8, 8), (16, 16, 16))
    extra = [np.full(ds.label(i).shape, 7, np.uint8) for i in range(len(ds))]
    x, y, maps = sampler.batch(torch.Generator().manual_seed(0), extra)
    assert x.shape == (2, 1, 16, 16, 16) and y.shape == maps.shape == (2, 16, 16, 16)
    assert y.dtype == torch.int64 and (y == -1).any() and (y >= 0).any()
    assert torch.equal(maps == -1, y == -1) and set(maps[maps >= 0].unique().tolist()) == {7}
    assert (x[:, 0][y == -1] == 0).all()
    # the standard patch (centre) always lies inside the volume
    assert (y[:, 4:12, 4:12, 4:12] >= 0).all()
    again = sampler.batch(torch.Generator().manual_seed(0), extra)
    assert all(torch.equal(a, b) for a, b in zip((x, y, maps), again))


@pytest.mark.slow
def test_meunet_trains_and_reloads(meunet_run, microct):
    run, record = meunet_run
    assert record["epoch"] == 2 and np.isfinite(record["loss"]) and 0 <= record["val_dice"] <= 1
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and all("val_dice" in x for x in lines)
    model, payload = checkpoint.load_model(run / "model.pt")
    assert isinstance(model, MeUNet) and payload["model_config"]["architecture"] == "meunet"
    assert payload["model_config"]["expand"] == 1.5
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)


@pytest.mark.slow
def test_meunet_resume_is_exact(meunet_run, microct, tmp_path):
    full, _ = meunet_run
    r = load_recipe(ROOT / "recipes" / "meunet_microct.yaml", [f"data.dataset={microct}", *QUICK])
    train(r, tmp_path / "half", epochs=1, quiet=True)
    train(r, tmp_path / "half", epochs=2, quiet=True, resume=True)
    a, b = checkpoint.load(full / "last.pt"), checkpoint.load(tmp_path / "half" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.slow
def test_segresmamba_trains_and_reloads(microct, tmp_path):
    r = load_recipe(ROOT / "recipes" / "segresmamba_radiology.yaml",
                    [f"data.dataset={microct}", *QUICK, *TINY_SEGRES])
    record = train(r, tmp_path / "run", epochs=2, quiet=True)
    assert np.isfinite(record["loss"]) and 0 <= record["val_dice"] <= 1
    model, payload = checkpoint.load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, SegResMamba) and model.use_mamba and payload["recipe"]["name"] == "segresmamba_radiology"


@pytest.mark.slow
def test_cascade_uses_the_trained_stage1(meunet_run, microct, tmp_path):
    run, _ = meunet_run
    stage1, _ = checkpoint.load_model(run / "model.pt")
    r = load_recipe(ROOT / "recipes" / "meunet_cascade_microct.yaml",
                    [f"data.dataset={microct}", *QUICK, f"model.stage1={run / 'model.pt'}"])
    train(r, tmp_path / "cascade", epochs=1, quiet=True)
    model, _ = checkpoint.load_model(tmp_path / "cascade" / "model.pt")
    assert isinstance(model, MeUNetCascade)
    for k, v in stage1.state_dict().items():
        assert torch.equal(model.stage1[0].state_dict()[k], v), k
    missing = load_recipe(ROOT / "recipes" / "meunet_cascade_microct.yaml",
                          [f"data.dataset={microct}", *QUICK, "model.stage1=null"])
    with pytest.raises(NCAError, match="train recipes/meunet_microct.yaml first"):
        train(missing, tmp_path / "nostage1", epochs=1, quiet=True)


def test_unet_learns_sigmoid_classes(tmp_path_factory, tmp_path):
    """An easy task (synthetic micro-CT, 3 classes, 32^3): 20 epochs of a tiny UNet reach a
    validation Dice far above the untrained model's (0.0 to 0.25 here)."""
    data = prepare("synthetic", None, tmp_path_factory.mktemp("microct32") / "data", kind="microct", cases=5,
                   size=32, seed=0)
    r = load_recipe(ROOT / "recipes" / "unet_radiology.yaml",
                    [f"data.dataset={data}", "data.patch=[16,16,16]", "data.batch_size=2", "data.batches_per_epoch=4",
                     "training.validate_every=10", "training.lr=1e-2", "training.augmentation={}",
                     "model.output_channels=3", "model.num_encoding_blocks=2", "model.out_channels_first_layer=4"])
    record = train(r, tmp_path / "run", epochs=20, quiet=True)
    assert record["val_dice"] > 0.45, record
    model, payload = checkpoint.load_model(tmp_path / "run" / "model.pt")
    assert payload["model_config"]["out_channels_first_layer"] == 4 and model.divisor == 2
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_output_channels_must_count_the_background(microct, tmp_path):
    r = load_recipe(ROOT / "recipes" / "meunet_microct.yaml", [f"data.dataset={microct}", *QUICK, "model.output_channels=3"])
    with pytest.raises(NCAError, match=r"output_channels=4 \(the classes plus background\)"):
        train(r, tmp_path / "run", epochs=1, quiet=True)
