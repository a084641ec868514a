import json

import numpy as np
import pytest
import torch
import yaml

from nca_cli.core.errors import NCAError
from nca_cli.core.files import sha256_file
from nca_cli.models import build_model, checkpoint
from nca_cli.vwsl import finetune as ft
from nca_cli.vwsl.finetune import metrics_path_for
from nca_cli.vwsl.options import FinetuneOptions

from .conftest import TINY_MEDNCA, disk_image, tiny_model, write_png


def finetune(unlabeled, model, output, **options):
    return ft.finetune(FinetuneOptions(unlabeled=unlabeled, model=model, output=output, **options))


def _files(folder):
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


def _fails(tmp_path, unlabeled, model_file, match):
    out = tmp_path / "out"
    with pytest.raises(NCAError, match=match):
        finetune(unlabeled, model_file, out / "adapted.pt", epochs=1, predictions=2, quiet=True)
    assert _files(out) == []


def test_empty_folder(tmp_path, model_file):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    _fails(tmp_path, tmp_path / "empty", model_file, "holds no readable images")


def test_text_file_named_png(tmp_path, model_file, unlabeled):
    (unlabeled / "broken.png").write_text("this is not an image")
    _fails(tmp_path, unlabeled, model_file, "broken.png")


def test_rgb_image_for_a_grey_model(tmp_path, model_file, unlabeled):
    write_png(unlabeled / "colour.png", np.zeros((32, 32, 3), np.uint8) + 90)
    _fails(tmp_path, unlabeled, model_file, r"colour\.png has 3 channel\(s\) but the model takes 1")


def test_checkpoint_that_is_not_an_nca(tmp_path, unlabeled):
    path = tmp_path / "unet.pt"
    unet = build_model({"architecture": "unet", "dims": 2, "input_channels": 1, "output_channels": 1,
                        "num_encoding_blocks": 2, "out_channels_first_layer": 2})
    checkpoint.save_model(path, unet, None)
    _fails(tmp_path, unlabeled, path, "not an NCA")


def test_finetune_end_to_end(tmp_path, model_file, unlabeled):
    eval_dir = tmp_path / "labeled"
    for i in range(2):
        img, mask = disk_image((32, 32), seed=10 + i)
        write_png(eval_dir / "images" / f"e{i}.png", img)
        write_png(eval_dir / "masks" / f"e{i}.png", mask * 255)
    out = tmp_path / "out" / "adapted.pt"
    res = finetune(unlabeled, model_file, out, epochs=2, predictions=3, gamma=100.0, eval_dir=eval_dir, seed=4,
                   quiet=True)
    assert json.loads(json.dumps(res)) == res                    # the CLI prints it as JSON
    assert res["images"] == 3 and res["epochs"] == 2 and not res["cache_reused"]

    model, payload = checkpoint.load_model(out, require_nca=True)
    ad = payload["metadata"]["adaptation"]
    assert payload["metadata"]["epochs"] == 1                    # the source's metadata is kept
    assert ad["method"] == "vwsl" and ad["gamma"] == 100.0 and ad["epochs"] == 2 and ad["predictions"] == 3
    assert ad["source_checkpoint_sha256"] == sha256_file(model_file)
    assert ad["unlabeled"] == str(unlabeled) and ad["images"] == 3
    ev = ad["eval"]
    assert ev["cases"] == 2 and {"dice_before", "dice_after"} <= set(ev)      # values: the trained-model test
    assert ev["mean_variance_before"] > 0 and res["eval"] == ev
    source, _ = checkpoint.load_model(model_file)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))

    lines = [json.loads(x) for x in metrics_path_for(out).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["l1"] > 0 for r in lines)
    assert sorted(p.name for p in (out.parent / "adapted.vwsl-cache").iterdir()) == \
        ["0000.npz", "0001.npz", "0002.npz", "key.json"]

    # same seed, same output: the cache is reused and the result is identical
    again = finetune(unlabeled, model_file, out, epochs=2, predictions=3, gamma=100.0, seed=4, quiet=True)
    assert again["cache_reused"]
    repeat, _ = checkpoint.load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), repeat.state_dict().values()))


def test_recipe_crop_and_prepared_eval_dataset(tmp_path, unlabeled):
    recipe = {"name": "tiny", "model": TINY_MEDNCA, "data": {"crop": [16, 16], "crop_levels": 1},
              "vwsl": {"epochs": 1, "gamma": 10.0, "predictions": 2, "lr": 1e-3, "batch_size": 2, "seed": 1}}
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    model_file = tmp_path / "model.pt"
    checkpoint.save_model(model_file, tiny_model(), None)

    root = tmp_path / "prepared"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases = []
    for i in range(2):
        img, mask = disk_image((24, 24), seed=20 + i)
        np.save(root / "images" / f"c{i}.npy", img[..., None])
        np.save(root / "labels" / f"c{i}.npy", mask)
        cases.append({"id": f"c{i}", "patient": f"p{i}", "image": f"images/c{i}.npy", "label": f"labels/c{i}.npy",
                      "shape": [24, 24]})
    (root / "dataset.yaml").write_text(yaml.safe_dump({
        "name": "t", "synthetic": True, "kind": "xray", "modality": "XR", "dims": 2, "channels": 1,
        "classes": ["lung"], "spacing": [1.0, 1.0], "normalization": {"divide_by": 255, "method": "none"},
        "split": {"seed": 0, "val_fraction": 0, "test_fraction": 0.5, "train": ["c0"], "val": [], "test": ["c1"]},
        "cases": cases}))

    res = finetune(unlabeled, model_file, tmp_path / "a.pt", recipe=recipe_file, eval_dir=root, quiet=True)
    assert res["epochs"] == 1 and res["gamma"] == 10.0 and res["predictions"] == 2 and res["seed"] == 1
    assert res["crop"] == [16, 16] and res["crop_levels"] == 1
    assert res["eval"]["cases"] == 1                           # the test split only
    _, payload = checkpoint.load_model(tmp_path / "a.pt")
    assert payload["recipe"]["name"] == "tiny"


def test_output_must_not_replace_the_model(tmp_path, model_file, unlabeled):
    with pytest.raises(NCAError, match="starting model"):
        finetune(unlabeled, model_file, model_file, epochs=1, predictions=2, quiet=True)


def test_holdout_split_is_seeded_and_disjoint():
    train, held = ft.split_holdout(10, 0.2, seed=3)
    assert len(held) == 2 and not set(train) & set(held) and sorted(train + held) == list(range(10))
    assert ft.split_holdout(10, 0.2, seed=3) == (train, held)
    assert ft.split_holdout(4, 0.2, seed=3) == ([0, 1, 2, 3], [0, 1, 2, 3])   # too few: no hold-out
    assert ft.split_holdout(10, 0.0, seed=3)[1] == list(range(10))


def test_best_selection_keeps_the_start_when_no_epoch_beats_it(tmp_path, model_file):
    folder = tmp_path / "many"
    for i in range(6):
        write_png(folder / f"c{i}.png", disk_image((32, 32), seed=20 + i)[0])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "model": TINY_MEDNCA, "vwsl": {"lr": 0.5}}))  # ruins the model
    out = tmp_path / "adapted.pt"
    res = finetune(folder, model_file, out, epochs=2, predictions=2, recipe=str(recipe), quiet=True)
    records = [json.loads(line) for line in metrics_path_for(out).read_text().splitlines()]
    assert res["selection_images"] == 1 and res["selection_held_out"]
    assert all(r["selection"] > res["selection_score_start"] for r in records)
    assert res["selected_epoch"] == 0
    start, _ = checkpoint.load_model(model_file)
    adapted, _ = checkpoint.load_model(out)
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), adapted.state_dict().values()))
    last = finetune(folder, model_file, tmp_path / "last.pt", epochs=2, predictions=2, recipe=str(recipe),
                    select="last", quiet=True)
    assert last["selected_epoch"] == 2


def test_adapting_a_trained_model_keeps_what_it_learned(tmp_path, unlabeled):
    """The source model first learns the disks (supervised, 150 small steps); the evaluation
    then sees a Dice far above chance before the adaptation, and the adaptation on images of
    the same kind keeps most of it."""
    from nca_cli.training.losses import bce_dice_loss

    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        pairs = [disk_image((32, 32), seed=100 + 4 * step + k) for k in range(4)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None] / 255.0).float()
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None]).float()
        logits, _ = model(x, seed=step)
        loss = bce_dice_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    source = tmp_path / "trained.pt"
    checkpoint.save_model(source, model, None)
    eval_dir = tmp_path / "labeled"
    for i in range(3):
        img, mask = disk_image((32, 32), seed=50 + i)
        write_png(eval_dir / "images" / f"e{i}.png", img)
        write_png(eval_dir / "masks" / f"e{i}.png", mask * 255)
    res = finetune(unlabeled, source, tmp_path / "adapted.pt", epochs=2, predictions=3, eval_dir=eval_dir, seed=0,
                   quiet=True)
    ev = res["eval"]
    assert ev["dice_before"] > 0.8 and ev["dice_after"] > 0.7, ev
