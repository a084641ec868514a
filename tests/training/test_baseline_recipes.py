import json
import subprocess
import sys
from pathlib import Path

import pytest

from nca_cli.core.errors import NCAError
from nca_cli.models import architecture, build_model, count_parameters
from nca_cli.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

UNET_PUBLISHED = {"unet_pathology": 36_951_425, "unet_radiology": 19_071_297, "unet_surgery": 19_073_285}
BASELINE_RECIPES = ["unet_pathology", "unet_radiology", "unet_surgery", "meunet_microct", "meunet_cascade_microct",
                    "segresmamba_radiology", "segresnet_radiology"]


def dry_run(name, *extra):
    proc = subprocess.run([sys.executable, "-m", "nca_cli", "train", str(RECIPES / f"{name}.yaml"), "--dry-run", *extra],
                          capture_output=True, text=True)
    return proc


@pytest.mark.parametrize("name,count", sorted(UNET_PUBLISHED.items()))
def test_unet_dry_run_prints_published_parameters(name, count):
    proc = dry_run(name)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"parameters: {count}"


def test_baseline_recipes_load_with_their_loss_and_patch():
    for name in BASELINE_RECIPES:
        r = load_recipe(RECIPES / f"{name}.yaml")
        assert r["name"] == name
        softmax = not name.startswith("unet")
        assert architecture(r["model"]["architecture"]).loss == ("dice_ce" if softmax else "bce_dice")
        assert len(r["data"]["patch"]) == r["model"]["dims"]
    me = load_recipe(RECIPES / "meunet_microct.yaml")
    assert me["training"]["lr"] == pytest.approx(9e-4) and me["training"]["early_stop"] == 30
    assert me["model"]["expand"] == 1.5


def test_cascade_ablation_override_builds_input_concat():
    r = load_recipe(RECIPES / "meunet_cascade_microct.yaml", ["model.mode=input_concat"])
    model = build_model(r["model"])
    assert model.mode == "input_concat" and r["model"]["stage1"].endswith("model.pt")
    # input_concat feeds the one-hot stage-1 labels (4 classes) with the image into stage 2
    assert model.stage2.encoder[0][0].in_channels == 1 + 4


def test_misspelled_option_names_key_file_and_closest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "meunet_cascade_microct.yaml").read_text().replace("  mode: post_concat", "  mdoe: post_concat"))
    with pytest.raises(NCAError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert "model.mdoe" in msg and str(bad) in msg and "did you mean 'model.mode'" in msg
    proc = subprocess.run([sys.executable, "-m", "nca_cli", "train", str(bad), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 1 and "model.mdoe" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,fragment", [
    ("model.architecture=unett", "model.architecture"),
    ("model.expand=0.5", "model.expand"),
    ("data.patch=[40,40,40]", "multiple of 16"),
    ("data.patch=[32,32]", "one size per axis"),
    ("data.patch=null", "needs data.patch"),
    ("training.loss=bce_dice", "Unknown recipe key 'training.loss'"),
])
def test_bad_baseline_values_rejected(override, fragment):
    with pytest.raises(NCAError, match=fragment):
        load_recipe(RECIPES / "meunet_microct.yaml", [override])


def test_options_of_another_architecture_rejected():
    with pytest.raises(NCAError, match="model.scan_chunk"):
        load_recipe(RECIPES / "segresnet_radiology.yaml", ["model.scan_chunk=32"])
    with pytest.raises(NCAError, match=r"multiple of 32.*\[32, 160, 160\]"):
        load_recipe(RECIPES / "segresmamba_radiology.yaml", ["data.patch=[24,160,160]"])


def test_small_option_values_change_the_network():
    r = load_recipe(RECIPES / "segresmamba_radiology.yaml", ["model.widths=[8,16]", "model.blocks_down=[1,1]",
                                                          "data.patch=[16,32,32]"])
    model = build_model(r["model"])
    assert model.divisor == 8 and count_parameters(model) < 100_000
    with pytest.raises(NCAError, match="inconsistent"):
        load_recipe(RECIPES / "segresmamba_radiology.yaml", ["model.widths=[8,16]"])
    proc = dry_run("unet_pathology", "--json", "--set", "model.out_channels_first_layer=8",
                   "--set", "model.num_encoding_blocks=3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["parameters"] < 100_000
