"""Recipes: YAML files describing one experiment (model, data, training, fine-tuning).

``load_recipe(path_or_name)`` reads a recipe (a file, or the name of one shipped with the
package, e.g. ``octree_pathology``) with ``yaml.safe_load``, applies ``--set section.key=value``
overrides, fills defaults, validates every key's type and range, and rejects unknown keys
with one sentence naming the key, the file and the closest valid key. It returns a
:class:`Recipe`: the ``model:`` section is checked against the architecture's configuration
dataclass (``nca_cli.models``), the ``data``, ``training`` and ``vwsl`` sections are the typed
dataclasses below, so each setting (type, range, default) is declared once. A flag given on
the command line wins over the recipe's value (``Recipe.with_flags``); recipes stored in
checkpoints are read by the same rules (``stored_recipe``).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import yaml

from .core.resources import bundled_recipe, bundled_recipes
from .core.schema import SettingError, Settings, schema_of, setting, subsection, validate_section

if TYPE_CHECKING:
    from .models import Architecture, ModelConfig


@dataclass
class DataSettings(Settings):
    """The ``data:`` section: what a model trains on."""

    SECTION: ClassVar[str] = "data"

    dataset: str | None = setting(None, kind="path", help="prepared dataset folder (nca prepare)")
    patch: list[int] | None = setting(None, kind="ints", lo=1,
                                      help="training patch per axis (baselines: also the inference window)")
    crop: list[int] | None = setting(None, kind="ints", lo=1, help="NCAs: crop of the finest levels per axis")
    crop_levels: int = setting(0, kind="int", lo=0, hi=12, help="NCAs: how many of the finest levels train on the crop")
    require_foreground: bool = setting(False, kind="bool", help="patches contain foreground")
    batch_size: int = setting(3, kind="int", lo=1, hi=4096)
    batches_per_epoch: int | None = setting(None, kind="int", lo=1, help="default: training cases / batch size")


@dataclass
class Augmentation(Settings):
    """The ``training.augmentation:`` section: the chance of each intensity augmentation per batch."""

    SECTION: ClassVar[str] = "training.augmentation"

    noise: float = setting(0.1, kind="float", lo=0.0, hi=1.0)
    blur: float = setting(0.1, kind="float", lo=0.0, hi=1.0)
    brightness: float = setting(0.1, kind="float", lo=0.0, hi=1.0)
    contrast: float = setting(0.1, kind="float", lo=0.0, hi=1.0)
    low_resolution: float = setting(0.1, kind="float", lo=0.0, hi=1.0)


@dataclass
class TrainingSettings(Settings):
    """The ``training:`` section: optimiser, schedule, validation and stopping."""

    SECTION: ClassVar[str] = "training"

    epochs: int = setting(1000, kind="int", lo=1)
    lr: float = setting(1.6e-3, kind="float", lo=0.0, hi=10.0)
    betas: list[float] = setting(kind="floats", lo=0.0, hi=1.0, default_factory=lambda: [0.9, 0.99])
    lr_decay: float = setting(0.9992, kind="float", lo=0.0, hi=1.0, help="exponential decay per epoch")
    ema_decay: float = setting(0.99, kind="float", lo=0.0, hi=1.0)
    dice_weight: float = setting(1.0, kind="float", lo=0.0, hi=2.0, help="lambda of (2 - lambda) BCE + lambda Dice")
    validate_every: int = setting(10, kind="int", lo=1)
    ensemble: int = setting(10, kind="int", lo=1, hi=1000, help="NCAs: validation is the median of this many runs")
    early_stop: int = setting(0, kind="int", lo=0, help="stop after this many validations without improvement (0: never)")
    save_every: int = setting(10, kind="int", lo=1, help="without validation data: write model.pt every this many epochs")
    seed: int = setting(0, kind="int", lo=0)
    augmentation: Augmentation = subsection(Augmentation)


@dataclass
class VwslSettings(Settings):
    """The ``vwsl:`` section: unsupervised fine-tuning (``nca finetune-vwsl``)."""

    SECTION: ClassVar[str] = "vwsl"

    epochs: int = setting(100, kind="int", lo=1)
    gamma: float = setting(1e3, kind="float", lo=0.0, help="weight of the L1 consistency term, on the paper's scale")
    predictions: int = setting(10, kind="int", lo=2, hi=1000, help="stochastic predictions per image for the target")
    focal_gamma: float = setting(2.0, kind="float", lo=0.0)
    lr: float = setting(1.6e-4, kind="float", lo=0.0, hi=10.0)
    batch_size: int = setting(4, kind="int", lo=1)
    seed: int = setting(0, kind="int", lo=0)


@dataclass(kw_only=True)
class Recipe(Settings):
    """One experiment, read once from its file: the ``model:`` section (checked against its
    architecture's configuration dataclass, kept as a mapping ``build_model`` takes) and the
    typed ``data``, ``training`` and ``vwsl`` sections. ``source`` is the file it was read from.

    ``recipe["model"]`` (any top-level key) gives a copy of the section as a plain mapping, as in
    the stable Python API (``build_model(recipe["model"])``)."""

    name: str = setting(kind="str")
    description: str = setting("", kind="str")
    paper: str = setting("", kind="str")
    model: dict = setting(kind="section")
    data: DataSettings = subsection(DataSettings)
    training: TrainingSettings = subsection(TrainingSettings)
    vwsl: VwslSettings = subsection(VwslSettings)
    source: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def with_flags(self, section: str, **flags) -> "Recipe":
        """This recipe with the flags given (not ``None``) for ``section``'s keys (see
        :meth:`Settings.with_flags`, the one precedence rule)."""
        return dataclasses.replace(self, **{section: getattr(self, section).with_flags(**flags)})

    @property
    def where(self) -> str:
        """The recipe's file, for messages."""
        return self.source or "the recipe"


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
    given = {k: v for k, v in section.items() if k in model and k != "architecture"}
    section = {k: v for k, v in section.items() if v is not None or k in model}
    section.update({**arch.defaults_for(given), **given})   # the architecture's published variant, then the recipe
    section["architecture"] = name
    try:
        cfg = arch.make_config(given)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"Recipe model section{_where(path)} is inconsistent: {exc}; fix the model section.") from None
    return {"architecture": name, **{k: v for k, v in section.items() if k != "architecture"}}, arch, cfg


def validate_recipe(raw: Any, path: str | None = None) -> Recipe:
    """The recipe a parsed mapping describes: every key checked, defaults filled in."""
    values = validate_section(raw, Recipe.schema(), "", path)
    values["model"], arch, cfg = _model_section(raw, path)
    recipe = Recipe.build({**values, "source": path})
    _check_patches(recipe.data, arch, cfg, path)
    return recipe


def _check_patches(data: DataSettings, arch: "Architecture", cfg: "ModelConfig", path: str | None) -> None:
    """NCAs crop at most the levels below the coarsest; patch-wise models need a patch that is a
    multiple of the network's divisor on every axis."""
    if arch.is_nca:
        if data.crop and data.crop_levels >= cfg.levels:
            raise RecipeError(f"Recipe key 'data.crop_levels'{_where(path)} must be below model.levels "
                              f"({cfg.levels}); lower it.")
        return
    if data.crop:
        raise RecipeError(f"Recipe key 'data.crop'{_where(path)} applies to NCAs only; remove it and set data.patch.")
    patch = data.patch
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


def stored_recipe(stored: dict | None, model_config: dict, path: str | os.PathLike) -> Recipe:
    """The recipe a checkpoint holds (``payload["recipe"]``), read by the same rules; keys an older
    version wrote and this one no longer knows are passed over, and a checkpoint without a recipe
    gives the declared defaults around its model configuration."""
    stored = dict(stored or {})
    stored.setdefault("name", "")
    stored["model"] = dict(stored.get("model") or model_config)
    values = validate_section(_known(stored, Recipe.schema()), Recipe.schema(), "", f"the recipe stored in {path}")
    return Recipe.build({**values, "source": str(path)})


def _known(data: Any, schema: dict) -> Any:
    """``data`` without the keys ``schema`` does not declare (nested sections too)."""
    if not isinstance(data, dict):
        return data
    return {k: _known(v, schema[k]) if isinstance(schema[k], dict) else v for k, v in data.items() if k in schema}


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


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
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
    return validate_recipe(raw, str(p))


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


def resolve_dataset(recipe: Recipe) -> Path | None:
    """The dataset folder, relative paths taken from the recipe's folder first, then the cwd."""
    return resolve_path(recipe, recipe.data.dataset)


def resolve_path(recipe: Recipe, value: str | None) -> Path | None:
    """A path named in the recipe, relative paths taken from the recipe's folder first, then the cwd."""
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_absolute():
        src = recipe.source
        if src and (Path(src).parent / p).exists():
            return Path(src).parent / p
    return p
