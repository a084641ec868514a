"""The kernel sources (``cuda/``) and recipes (``recipes/``) shipped with the package.

In a checkout they are the top-level folders beside ``nca_cli/``; an installed wheel carries
them as package data in ``nca_cli/_cuda`` and ``nca_cli/_recipes`` (see ``setup.py``). Both
are found through ``importlib.resources`` relative to the imported ``nca_cli`` package, so
the sources always belong to the code that runs.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import NCAError

_FOLDERS = {"cuda": "_cuda", "recipes": "_recipes"}


def data_dir(name: str) -> Path:
    """The folder of ``name`` ("cuda" or "recipes"): packaged data first, else the checkout's folder."""
    package = Path(str(resources.files("nca_cli")))
    packaged = package / _FOLDERS[name]
    if packaged.is_dir():
        return packaged
    return package.parent / name


def kernel_source_dir() -> Path:
    return data_dir("cuda")


def recipes_dir() -> Path:
    return data_dir("recipes")


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``octree_pathology``, ...)."""
    folder = recipes_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def bundled_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (with or without ``.yaml``), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    if not stem or "/" in stem or "\\" in stem:
        return None
    path = recipes_dir() / f"{stem}.yaml"
    return path if path.is_file() else None


def require_bundled_recipe(name: str) -> Path:
    path = bundled_recipe(name)
    if path is None:
        raise NCAError(f"No recipe named {name!r} ships with nca; choose one of {', '.join(bundled_recipes())}.")
    return path
