"""Recipes: YAML files describing one experiment (model, data, training, fine-tuning).

``load_recipe(path)`` reads a recipe with ``yaml.safe_load``, fills defaults, validates every
key's type and range, and rejects unknown keys with one sentence naming the key, the file
and the closest valid key. ``apply_overrides`` applies ``--set section.key=value`` strings.
"""
from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import NCAError

NCA_ARCHITECTURES = ("octree_nca", "med_nca", "m3d_nca")


@dataclass(frozen=True)
class Key:
    kind: str                 # int, float, bool, str, ints, floats, factors, choice, any, section, path
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    choices: tuple = ()
    required: bool = False
    nullable: bool = True


NCA_MODEL = {
    "architecture": Key("choice", "octree_nca", choices=NCA_ARCHITECTURES),
    "dims": Key("int", required=True, lo=2, hi=3),
    "input_channels": Key("int", required=True, lo=1, hi=64),
    "output_channels": Key("int", required=True, lo=1, hi=64),
    "levels": Key("int", 5, lo=1, hi=12),
    "factors": Key("factors", None),
    "steps": Key("ints", None, lo=0, hi=100000),
    "kernel_sizes": Key("ints", None, lo=1, hi=15),
    "channels": Key("int", 16, lo=2, hi=256),
    "hidden": Key("int", 64, lo=1, hi=4096),
    "fire_rate": Key("float", 0.5, lo=0.0, hi=1.0),
    "pyramid": Key("choice", "average", choices=("average", "nearest", "max")),
    "normalization": Key("choice", None, choices=(None, "none", "batch")),
    "perception": Key("choice", "depthwise", choices=("depthwise", "full2")),
    "fc1_all_channels": Key("bool", False),
}

BASELINE_MODEL = {
    "architecture": Key("str", required=True),  # a choice among the registered names, set at validation
    "dims": Key("int", required=True, lo=2, hi=3),
    "input_channels": Key("int", required=True, lo=1, hi=64),
    "output_channels": Key("int", required=True, lo=1, hi=64),
    "options": Key("section"),
}

# Value checks of the baseline options; which options an architecture takes (and their
# defaults) comes from ``nca_cli.models.BASELINE_OPTIONS``.
BASELINE_OPTION_KEYS = {
    "num_encoding_blocks": Key("int", lo=2, hi=8),
    "out_channels_first_layer": Key("int", lo=1, hi=1024),
    "expand": Key("float", lo=1.0, hi=4.0),
    "mode": Key("choice", choices=("post_concat", "input_concat")),
    "stage1": Key("path"),
    "scan_chunk": Key("int", lo=1, hi=1 << 20),
    "widths": Key("ints", lo=8, hi=4096),
    "blocks_down": Key("ints", lo=1, hi=64),
}

SCHEMA: dict[str, Any] = {
    "name": Key("str", required=True),
    "description": Key("str", ""),
    "paper": Key("str", ""),
    "model": Key("section"),
    "data": {
        "kind": Key("choice", "generic", choices=("pathology", "radiology", "surgery", "xray", "generic")),
        "dataset": Key("path", None),
        "patch": Key("ints", None, lo=1),
        "crop": Key("ints", None, lo=1),
        "crop_levels": Key("int", 0, lo=0, hi=12),
        "require_foreground": Key("bool", False),
        "batch_size": Key("int", 3, lo=1, hi=4096),
        "batches_per_epoch": Key("int", None, lo=1),
        "num_workers": Key("int", 0, lo=0, hi=64),
    },
    "training": {
        "epochs": Key("int", 1000, lo=1),
        "lr": Key("float", 1.6e-3, lo=0.0, hi=10.0),
        "betas": Key("floats", [0.9, 0.99], lo=0.0, hi=1.0),
        "lr_decay": Key("float", 0.9992, lo=0.0, hi=1.0),
        "ema_decay": Key("float", 0.99, lo=0.0, hi=1.0),
        "loss": Key("choice", "bce_dice", choices=("bce_dice", "dice_ce")),
        "dice_weight": Key("float", 1.0, lo=0.0, hi=2.0),
        "validate_every": Key("int", 10, lo=1),
        "ensemble": Key("int", 10, lo=1, hi=1000),
        "early_stop": Key("int", 0, lo=0),
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


class RecipeError(NCAError):
    pass


def _where(path: str | None) -> str:
    return f" in {path}" if path else ""


def _check_value(key: str, spec: Key, value: Any, path: str | None) -> Any:
    def bad(what: str):
        raise RecipeError(f"Recipe key '{key}'{_where(path)} {what}; fix the value.")

    if value is None:
        if spec.required:
            bad("is required but missing")
        return None
    kind = spec.kind

    def num(v, integer):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            bad(f"must be {'an integer' if integer else 'a number'}, got {v!r}")
        if spec.lo is not None and v < spec.lo:
            bad(f"must be at least {spec.lo}, got {v!r}")
        if spec.hi is not None and v > spec.hi:
            bad(f"must be at most {spec.hi}, got {v!r}")
        return v

    if kind == "int":
        return num(value, True)
    if kind == "float":
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                bad(f"must be a number, got {value!r}")
        return float(num(value, False))
    if kind == "bool":
        if not isinstance(value, bool):
            bad(f"must be true or false, got {value!r}")
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str):
            bad(f"must be a string, got {value!r}")
        return value
    if kind == "choice":
        if value not in spec.choices:
            bad(f"must be one of {', '.join(str(c) for c in spec.choices)}, got {value!r}")
        return value
    if kind in ("ints", "floats"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not value:
            bad(f"must be a non-empty list of numbers, got {value!r}")
        return [num(v, kind == "ints") for v in value]
    if kind == "factors":
        if not isinstance(value, list):
            bad(f"must be a list with one factor (or per-axis factor list) per level transition, got {value!r}")
        out = []
        for f in value:
            if isinstance(f, int) and not isinstance(f, bool) and f >= 1:
                out.append(f)
            elif isinstance(f, list) and f and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in f):
                out.append(list(f))
            else:
                bad(f"must hold positive integers or lists of them, got {f!r}")
        return out
    return value


def _validate_section(data: Any, schema: dict, prefix: str, path: str | None) -> dict:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe section '{prefix or 'top level'}'{_where(path)} must be a mapping; fix its indentation.")
    out: dict[str, Any] = {}
    for key in data:
        if key not in schema:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(schema), n=1, cutoff=0.5)
            hint = f"did you mean '{(prefix + '.') if prefix else ''}{close[0]}'?" if close else \
                f"valid keys: {', '.join(schema)}."
            raise RecipeError(f"Unknown recipe key '{full}'{_where(path)}; {hint}")
    for key, spec in schema.items():
        full = f"{prefix}.{key}" if prefix else key
        value = data.get(key)
        if isinstance(spec, dict):
            out[key] = _validate_section(value, spec, full, path)
        elif spec.kind == "section":
            out[key] = value
        else:
            out[key] = _check_value(full, spec, copy.deepcopy(spec.default) if value is None and key not in data else value, path)
    return out


def validate_recipe(raw: Any, path: str | None = None) -> dict:
    """Validate a parsed recipe dict; returns a new dict with defaults filled in."""
    recipe = _validate_section(raw, SCHEMA, "", path)
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        raise RecipeError(f"Recipe{_where(path)} needs a 'model' section; add one (see recipes/ for examples).")
    arch = model.get("architecture", "octree_nca")
    if arch not in NCA_ARCHITECTURES:
        recipe["model"] = _validate_baseline(raw, model, recipe, path)
        return recipe
    recipe["model"] = {k: v for k, v in _validate_section(model, NCA_MODEL, "model", path).items()
                       if v is not None or k in model}
    from .models.octree import NCAConfig
    try:
        NCAConfig.from_dict(recipe["model"])
    except ValueError as exc:
        raise RecipeError(f"Recipe model section{_where(path)} is inconsistent: {exc}; fix the model section.") from None
    levels = recipe["model"].get("levels", 5)
    if recipe["data"]["crop_levels"] >= levels and recipe["data"]["crop"]:
        raise RecipeError(f"Recipe key 'data.crop_levels'{_where(path)} must be below model.levels ({levels}); lower it.")
    return recipe


def _validate_baseline(raw: dict, model: dict, recipe: dict, path: str | None) -> dict:
    """The model section of a baseline recipe, options filled in; also checks the loss and
    the patch the baseline trains on."""
    from .models import BASELINE_OPTIONS, SIGMOID_BASELINES, baseline_names

    names = baseline_names()
    schema = dict(BASELINE_MODEL, architecture=Key("choice", required=True, choices=(*NCA_ARCHITECTURES, *names)))
    section = _validate_section(model, schema, "model", path)
    arch = section["architecture"]
    accepted = BASELINE_OPTIONS.get(arch, {})
    options = model.get("options") or {}
    if not isinstance(options, dict):
        raise RecipeError(f"Recipe key 'model.options'{_where(path)} must be a mapping of option: value; fix its indentation.")
    if options and not accepted:
        raise RecipeError(f"Unknown recipe key 'model.options.{next(iter(options))}'{_where(path)}; "
                          f"the {arch} model takes no options, so remove model.options.")
    option_schema = {k: replace(BASELINE_OPTION_KEYS.get(k, Key("any")), default=v) for k, v in accepted.items()}
    section["options"] = _validate_section(options, option_schema, "model.options", path)

    loss = "bce_dice" if arch in SIGMOID_BASELINES else "dice_ce"
    given = (raw.get("training") or {}).get("loss")
    if given is not None and given != loss:
        raise RecipeError(f"Recipe key 'training.loss'{_where(path)} is {given} but {arch} trains with {loss}; "
                          f"set training.loss: {loss}.")
    recipe["training"]["loss"] = loss
    data = recipe["data"]
    if data["crop"]:
        raise RecipeError(f"Recipe key 'data.crop'{_where(path)} applies to NCAs only; remove it and set data.patch.")
    patch = data["patch"]
    if not patch:
        raise RecipeError(f"Recipe{_where(path)} needs data.patch: the {arch} model trains on patches; "
                          f"set data.patch (one size per axis).")
    if len(patch) != section["dims"]:
        raise RecipeError(f"Recipe key 'data.patch'{_where(path)} has {len(patch)} sizes for a {section['dims']}D model; "
                          f"give one size per axis.")
    try:
        divisor = baseline_divisor(section)
    except ValueError as exc:
        raise RecipeError(f"Recipe model section{_where(path)} is inconsistent: {exc}; fix the model section.") from None
    if any(p % divisor for p in patch):
        fixed = [-(-p // divisor) * divisor for p in patch]
        raise RecipeError(f"Recipe key 'data.patch'{_where(path)} must be a multiple of {divisor} on every axis for "
                          f"{arch}, got {patch}; use {fixed}.")
    return section


def baseline_divisor(section: dict) -> int:
    """The size every spatial axis of a baseline's input must be a multiple of (the network is
    built on the meta device, which allocates nothing)."""
    import torch

    from .models import build_model

    with torch.device("meta"):
        return int(build_model(section).divisor)


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> dict:
    """Load, override (``section.key=value`` strings) and validate a recipe file."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"Recipe file {p} does not exist; pass a path such as recipes/octree_pathology.yaml.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"Recipe {p} is not valid YAML{where}; fix the syntax.") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"Recipe {p} must be a YAML mapping with a 'model' section; see recipes/ for examples.")
    raw = apply_overrides(raw, overrides or [], str(p))
    recipe = validate_recipe(raw, str(p))
    recipe["_source"] = str(p)
    return recipe


def apply_overrides(raw: dict, overrides: list[str], path: str | None = None) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"Override '{item}' must look like section.key=value (e.g. training.epochs=5).")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text.strip() else None
        node = raw
        parts = key.strip().split(".")
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
