import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nca_cli.core.errors import NCAError
from nca_cli.models import build_model, count_parameters
from nca_cli.core.schema import SettingError
from nca_cli.recipes import (
    DataSettings,
    Recipe,
    TrainingSettings,
    VwslSettings,
    load_recipe,
    stored_recipe,
    validate_recipe,
)

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
    assert count_parameters(build_model(recipe.model)) == count


def test_every_recipe_loads():
    for path in RECIPES.glob("*.yaml"):
        assert load_recipe(path).name == path.stem


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
    assert r.training.epochs == 3
    assert count_parameters(build_model(r.model)) == 5 * (12 * 9 + 12 + 24 * 48 + 48 + 48 * 9)


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
    assert r.name == "octree_pathology" and r.source.endswith("octree_pathology.yaml")
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


def test_sections_are_typed_dataclasses_with_defaults_declared_once(tmp_path):
    """A recipe without data, training or vwsl sections gets each section's declared defaults; the
    values read are the typed fields (the published defaults of the papers)."""
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "r", "model": {"architecture": "octree_nca", "dims": 2, "input_channels": 3,
                                                        "output_channels": 1}}))
    r = load_recipe(p)
    assert isinstance(r, Recipe) and isinstance(r.data, DataSettings) and isinstance(r.vwsl, VwslSettings)
    assert (r.training.epochs, r.training.lr, r.training.betas, r.training.augmentation.noise) == (1000, 1.6e-3,
                                                                                                   [0.9, 0.99], 0.1)
    assert (r.vwsl.epochs, r.vwsl.gamma, r.vwsl.predictions, r.data.batch_size, r.data.crop) == (100, 1e3, 10, 3, None)
    assert r.training == TrainingSettings() and r.vwsl == VwslSettings()
    assert r["training"]["lr"] == 1.6e-3 and r["model"]["dims"] == 2      # the stable API's mapping view
    # read once: what the file holds round-trips through the typed recipe
    again = validate_recipe(r.to_dict(), str(p))
    assert again == r and "source" not in r.to_dict()


@pytest.mark.parametrize("override,message", [
    ("training.augmentation.nosie=0.2", "Unknown recipe key 'training.augmentation.nosie' in {path}; did you mean "
                                        "'training.augmentation.noise'?"),
    ("vwsl.gama=3", "Unknown recipe key 'vwsl.gama' in {path}; did you mean 'vwsl.gamma'?"),
    ("vwsl.predictions=1", "Recipe key 'vwsl.predictions' in {path} must be at least 2, got 1; fix the value."),
    ("data.require_foreground=3", "Recipe key 'data.require_foreground' in {path} must be true or false, got 3; fix the "
                                  "value."),
])
def test_section_keys_refused_in_one_sentence_naming_file_and_key(override, message):
    path = RECIPES / "octree_pathology.yaml"
    with pytest.raises(NCAError) as e:
        load_recipe(path, [override])
    assert str(e.value) == message.format(path=path)


def test_flag_over_recipe_value_over_declared_default():
    """The one precedence rule: a flag given wins, else the recipe's value, else the default."""
    plain = load_recipe("octree_pathology")                         # no vwsl section: defaults
    assert plain.with_flags("vwsl", epochs=None).vwsl.epochs == 100
    assert plain.with_flags("vwsl", epochs=7).vwsl.epochs == 7
    set_ = load_recipe("octree_pathology", ["vwsl.epochs=30", "vwsl.gamma=5"])
    assert set_.with_flags("vwsl", epochs=None, gamma=None).vwsl == set_.vwsl
    flagged = set_.with_flags("vwsl", epochs=2, gamma=None)
    assert (flagged.vwsl.epochs, flagged.vwsl.gamma, set_.vwsl.epochs) == (2, 5.0, 30)   # the recipe is not changed
    assert flagged.with_flags("training", epochs=4).training.epochs == 4 and flagged.training.epochs == 1500
    assert isinstance(set_.with_flags("vwsl", gamma=10).vwsl.gamma, float)             # converted as in a recipe
    with pytest.raises(SettingError, match=r"Setting 'training.epochs' must be at least 1, got 0; fix the value"):
        plain.with_flags("training", epochs=0)


def test_stored_recipes_read_by_the_same_rules():
    config = {"architecture": "octree_nca", "dims": 2, "input_channels": 1, "output_channels": 1}
    r = stored_recipe(None, config, "m.pt")
    assert r.model == config and r.data == DataSettings() and r.vwsl == VwslSettings() and r.source == "m.pt"
    old = {"name": "x", "model": config, "data": {"patch": [32, 32], "retired": 1}, "training": {"loss": "bce"}}
    r = stored_recipe(old, config, "m.pt")
    assert r.data.patch == [32, 32] and r.training == TrainingSettings()
    with pytest.raises(NCAError, match="'data.patch' in the recipe stored in m.pt"):
        stored_recipe({"data": {"patch": "big"}}, config, "m.pt")
