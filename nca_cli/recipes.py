"""Recipes: YAML files describing one experiment (model, data, training, fine-tuning).

``load_recipe(path_or_name)`` reads a recipe (a file, or the name of one shipped with the
package, e.g. ``octree_pathology``) with ``yaml.safe_load``, applies ``--set section.key=value``
overrides, fills defaults, validates every key's type and range, and rejects unknown keys
with one sentence naming the key, the file and the closest valid key. The ``model:`` section
is checked against the architecture's configuration dataclass (``nca_cli.models``), so each
setting has one definition.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .core.resources import bundled_recipe, bundled_recipes
from .core.schema import Key, SettingError, schema_of, validate_section

if TYPE_CHECKING:
    from .models import Architecture, ModelConfig

SCHEMA: dict[str, Any] = {
    "name": Key("str", required=True),
    "description": Key("str", ""),
    "paper": Key("str", ""),
    "model": Key("section"),
    "data": {
        "dataset": Key("path", None, help="prepared dataset folder (nca prepare)"),
        "patch": Key("ints", None, lo=1, help="training patch per axis (baselines: also the inference window)"),
        "crop": Key("ints", None, lo=1, help="NCAs: crop of the finest levels per axis"),
        "crop_levels": Key("int", 0, lo=0, hi=12, help="NCAs: how many of the finest levels train on the crop"),
        "require_foreground": Key("bool", False, help="patches contain foreground"),
        "batch_size": Key("int", 3, lo=1, hi=4096),
        "batches_per_epoch": Key("int", None, lo=1, help="default: training cases / batch size"),
    },
    "training": {
        "epochs": Key("int", 1000, lo=1),
        "lr": Key("float", 1.6e-3, lo=0.0, hi=10.0),
        "betas": Key("floats", [0.9, 0.99], lo=0.0, hi=1.0),
        "lr_decay": Key("float", 0.9992, lo=0.0, hi=1.0, help="exponential decay per epoch"),
        "ema_decay": Key("float", 0.99, lo=0.0, hi=1.0),
        "dice_weight": Key("float", 1.0, lo=0.0, hi=2.0, help="lambda of (2 - lambda) BCE + lambda Dice"),
        "validate_every": Key("int", 10, lo=1),
        "ensemble": Key("int", 10, lo=1, hi=1000, help="NCAs: validation is the median of this many runs"),
        "early_stop": Key("int", 0, lo=0, help="stop after this many validations without improvement (0: never)"),
        "save_every": Key("int", 10, lo=1, help="without validation data: write model.pt every this many epochs"),
        "seed": Key("int", 0, lo=0),
        "augmentation": {
            "noise": Key("float", 0.1, lo=0.0, hi=1.0),
            "blur": Key("float", 0.1, lo=0.0, hi=1.0),
            "brightness": Key("float", 0.1, lo=0.0, hi=1.0),
            "contrast": Key("float", 0.1, lo=0.0, hi=1.0),
            "low_resolution": Key("float", 0.1, lo=0.0, hi=1.0),
        },
    },
    "vwsl": {
        "epochs": Key("int", 100, lo=1),
        "gamma": Key("float", 1e3, lo=0.0),
        "predictions": Key("int", 10, lo=2, hi=1000),
        "focal_gamma": Key("float", 2.0, lo=0.0),
        "lr": Key("float", 1.6e-4, lo=0.0, hi=10.0),
        "batch_size": Key("int", 4, lo=1),
        "seed": Key("int", 0, lo=0),
    },
}


class RecipeError(SettingError):
    pass


def _where(path: str | None) -> str:
    return f" in {path}" if path else ""


def _model_section(raw: dict, path: str | None) -> tuple[dict, "Architecture", "ModelConfig"]:
    """The model section checked against its architecture's configuration dataclass."""
    from .models import architecture, list_models

    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise RecipeError(f"Recipe{_where(path)} needs a 'model' section; add one (see recipes/ for examples).")
    name = model.get("architecture", "octree_nca")
    try:
        arch = architecture(name)
    except ValueError:
        raise RecipeError(f"Recipe key 'model.architecture'{_where(path)} must be one of {', '.join(list_models())}, "
                          f"got {name!r}; fix the value.") from None
    schema = schema_of(arch.config)
    section = validate_section(model, schema, "model", path)
    section = {k: v for k, v in section.items() if v is not None or k in model}
    section["architecture"] = name
    try:
        cfg = arch.make_config({k: v for k, v in section.items() if k != "architecture"})
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"Recipe model section{_where(path)} is inconsistent: {exc}; fix the model section.") from None
    return {"architecture": name, **{k: v for k, v in section.items() if k != "architecture"}}, arch, cfg


def validate_recipe(raw: Any, path: str | None = None) -> dict:
    """Validate a parsed recipe dict; returns a new dict with defaults filled in."""
    recipe = validate_section(raw, SCHEMA, "", path)
    recipe["model"], arch, cfg = _model_section(raw, path)
    data = recipe["data"]
    if arch.is_nca:
        if data["crop"] and data["crop_levels"] >= cfg.levels:
            raise RecipeError(f"Recipe key 'data.crop_levels'{_where(path)} must be below model.levels "
                              f"({cfg.levels}); lower it.")
        return recipe
    if data["crop"]:
        raise RecipeError(f"Recipe key 'data.crop'{_where(path)} applies to NCAs only; remove it and set data.patch.")
    patch = data["patch"]
    if not patch:
        raise RecipeError(f"Recipe{_where(path)} needs data.patch: the {arch.name} model trains on patches; "
                          f"set data.patch (one size per axis).")
    if len(patch) != cfg.dims:
        raise RecipeError(f"Recipe key 'data.patch'{_where(path)} has {len(patch)} sizes for a {cfg.dims}D model; "
                          f"give one size per axis.")
    try:
        divisor = model_divisor(cfg)
    except ValueError as exc:
        raise RecipeError(f"Recipe model section{_where(path)} is inconsistent: {exc}; fix the model section.") from None
    if any(p % divisor for p in patch):
        fixed = [-(-p // divisor) * divisor for p in patch]
        raise RecipeError(f"Recipe key 'data.patch'{_where(path)} must be a multiple of {divisor} on every axis for "
                          f"{arch.name}, got {patch}; use {fixed}.")
    return recipe


def model_divisor(config) -> int:
    """The size every spatial axis of a patch-wise model's input must be a multiple of (the
    network is built on the meta device, which allocates nothing)."""
    import torch

    from .models import build_model

    with torch.device("meta"):
        return int(build_model(config).divisor)


def resolve_recipe_path(path_or_name: str | os.PathLike) -> Path:
    """A recipe file: the path as given, else the shipped recipe of that name."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    bundled = bundled_recipe(str(path_or_name))
    if bundled is not None and not p.exists():
        return bundled
    if p.exists():
        raise RecipeError(f"Recipe {p} is not a file; pass a recipe YAML file or a shipped recipe name.")
    raise RecipeError(f"Recipe file {p} does not exist; pass a path such as recipes/octree_pathology.yaml or the name "
                      f"of a shipped recipe ({', '.join(bundled_recipes())}).")


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Load, override (``section.key=value`` strings) and validate a recipe file or shipped recipe."""
    p = resolve_recipe_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"Recipe {p} is not valid YAML{where}; fix the syntax.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"Cannot read recipe {p} ({exc}); pass a readable YAML file.") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe {p} must be a YAML mapping with a 'model' section; see recipes/ for examples.")
    raw = apply_overrides(raw, overrides or [], str(p))
    recipe = validate_recipe(raw, str(p))
    recipe["_source"] = str(p)
    return recipe


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (key parts, value parsed as a plain YAML scalar or list)."""
    if "=" not in item:
        raise RecipeError(f"Override '{item}' must look like section.key=value (e.g. training.epochs=5).")
    key, text = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError(f"Override '{item}' has an empty key part; write it like training.lr=1e-3.")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise RecipeError(f"Override '{item}' has a value that is not valid YAML; quote it or write it like "
                          f"{key.strip()}=[1, 2] or {key.strip()}=0.5.") from None
    return parts, value


def apply_overrides(raw: dict, overrides: list[str], path: str | None = None) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"Override '{item}': '{part}' is not a section of {path or 'the recipe'}.")
        node[parts[-1]] = value
    return raw


def resolve_dataset(recipe: dict) -> Path | None:
    """The dataset folder, relative paths taken from the recipe's folder first, then the cwd."""
    return resolve_path(recipe, recipe["data"].get("dataset"))


def resolve_path(recipe: dict, value: str | None) -> Path | None:
    """A path named in the recipe, relative paths taken from the recipe's folder first, then the cwd."""
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute():
        src = recipe.get("_source")
        if src and (Path(src).parent / p).exists():
            return Path(src).parent / p
    return p
