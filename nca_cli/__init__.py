"""nca: single-pass segmentation of very large medical images with Neural Cellular Automata.

Public API (stable): ``build_model``, ``load_recipe``, ``BackboneNCA``, ``OctreeNCA``,
``MedNCA``, ``M3DNCA``, ``load_model``. Imported lazily so the CLI starts instantly.
"""
__version__ = "0.1.0"

_LAZY = {
    "build_model": ("nca_cli.models", "build_model"),
    "BackboneNCA": ("nca_cli.models", "BackboneNCA"),
    "OctreeNCA": ("nca_cli.models", "OctreeNCA"),
    "MedNCA": ("nca_cli.models", "MedNCA"),
    "M3DNCA": ("nca_cli.models", "M3DNCA"),
    "NCAConfig": ("nca_cli.models", "NCAConfig"),
    "load_recipe": ("nca_cli.recipes", "load_recipe"),
    "load_model": ("nca_cli.checkpoint", "load_model"),
    "NCAError": ("nca_cli.errors", "NCAError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nca_cli' has no attribute {name!r}")
