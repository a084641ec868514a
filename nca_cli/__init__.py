"""nca: single-pass segmentation of very large medical images with Neural Cellular Automata.

Public API (stable): ``build_model``, ``load_recipe``, ``load_model``, ``predict_logits``,
``predictor_for``, ``BackboneNCA``, ``OctreeNCA``, ``MedNCA``, ``M3DNCA``, ``NCAConfig``,
``NCAError``. Imported lazily so the CLI starts instantly.

The package is layered; a module imports only from its own layer or those below it
(``tests/test_layers.py`` checks it)::

    cli, demo                                     commands
    vwsl                                          unsupervised fine-tuning
    training, segment, benchmark                  applications
    inference                                     octree driver, tiles, windows, memory model, predictors
    data, recipes                                 prepared datasets and converters; recipes (typed sections)
    kernels                                       fused NCA step (JIT-built C++/CUDA)
    io, models                                    readers and writers; networks, registry, checkpoints
    core                                          errors, files, device, seeds, progress, sizes, machine,
                                                  settings schema, command options, shared choices
"""
__version__ = "0.2.0"

_LAZY = {
    "build_model": ("nca_cli.models", "build_model"),
    "BackboneNCA": ("nca_cli.models", "BackboneNCA"),
    "OctreeNCA": ("nca_cli.models", "OctreeNCA"),
    "MedNCA": ("nca_cli.models", "MedNCA"),
    "M3DNCA": ("nca_cli.models", "M3DNCA"),
    "NCAConfig": ("nca_cli.models", "NCAConfig"),
    "load_recipe": ("nca_cli.recipes", "load_recipe"),
    "load_model": ("nca_cli.models.checkpoint", "load_model"),
    "predict_logits": ("nca_cli.inference.octree", "predict_logits"),
    "predictor_for": ("nca_cli.inference.predictors", "predictor_for"),
    "NCAError": ("nca_cli.core.errors", "NCAError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'nca_cli' has no attribute {name!r}")
