import json
import subprocess
import sys
from pathlib import Path

import pytest

from nca_cli.core.errors import NCAError
from nca_cli.models import build_model, count_parameters
from nca_cli.recipes import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

PUBLISHED = {
    "octree_radiology": 17_600,
    "octree_pathology": 15_520,
    "octree_surgery": 16_960,
    "octree_radiology_2levels": 7_040,
    "octree_radiology_3levels": 10_560,
    "m3d_radiology_2levels": 12_480,
    "m3d_radiology_3levels": 16_000,
    "m3d_radiology_5levels": 19_808,
    "m3d_surgery": 12_480,
    "mednca_pathology": 7_488,
    "mednca_xray_vwsl": 26_432,
}


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, count):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    assert count_parameters(build_model(recipe["model"])) == count


def test_every_recipe_loads():
    for path in RECIPES.glob("*.yaml"):
        assert load_recipe(path)["name"] == path.stem


def test_dry_run_cli_prints_parameters():
    out = subprocess.run([sys.executable, "-m", "nca_cli", "train", str(RECIPES / "octree_radiology.yaml"), "--dry-run"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "parameters: 17600"
    out = subprocess.run([sys.executable, "-m", "nca_cli", "train", str(RECIPES / "mednca_xray_vwsl.yaml"), "--dry-run",
                          "--json"], capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["parameters"] == 26432


def test_misspelled_key_names_key_file_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "octree_pathology.yaml").read_text().replace("  hidden: 64", "  hiden: 64"))
    with pytest.raises(NCAError) as e:
        load_recipe(bad)
    msg = str(e.value)
    assert "model.hiden" in msg and str(bad) in msg and "model.hidden" in msg
    proc = subprocess.run([sys.executable, "-m", "nca_cli", "train", str(bad), "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 1 and "model.hiden" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,fragment", [
    ("training.lr=-1", "training.lr"),
    ("model.fire_rate=1.5", "model.fire_rate"),
    ("data.batch_size=two", "data.batch_size"),
    ("model.steps=[10,10]", "steps"),
    ("trainig.epochs=3", "training"),
])
def test_bad_values_rejected(override, fragment):
    with pytest.raises(NCAError, match=fragment):
        load_recipe(RECIPES / "octree_pathology.yaml", [override])


def test_overrides_apply():
    r = load_recipe(RECIPES / "octree_pathology.yaml", ["training.epochs=3", "model.hidden=48", "model.channels=12"])
    assert r["training"]["epochs"] == 3
    assert count_parameters(build_model(r["model"])) == 5 * (12 * 9 + 12 + 24 * 48 + 48 + 48 * 9)


def test_not_yaml_and_missing(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("model: [unclosed")
    with pytest.raises(NCAError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(NCAError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_shipped_recipes_resolve_by_name():
    from nca_cli.core.resources import bundled_recipes

    assert "octree_pathology" in bundled_recipes()
    r = load_recipe("octree_pathology")
    assert r["name"] == "octree_pathology" and r["_source"].endswith("octree_pathology.yaml")
    with pytest.raises(NCAError, match="shipped recipe"):
        load_recipe("octree_pathologyy")


@pytest.mark.parametrize("override,fragment", [
    ("training.lr=[1,", "not valid YAML"),
    ("training.lr=!!python/object:os.system 'ls'", "not valid YAML"),
    ("training", "must look like section.key=value"),
    ("training..lr=1", "empty key part"),
])
def test_malformed_overrides_end_in_one_sentence(override, fragment):
    with pytest.raises(NCAError, match=fragment):
        load_recipe("octree_pathology", [override])
