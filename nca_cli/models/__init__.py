"""Models: the NCAs (OctreeNCA, Med-NCA, M3D-NCA) and the baselines, one registry, one factory.

``build_model(config)`` builds any registered architecture from its configuration (the
``model:`` section of a recipe); ``architecture(name)`` gives its registry entry (config
dataclass, output kind, predictor); ``list_models()`` the names.
"""
from . import baselines  # noqa: F401,E402  (registers the baseline architectures)
from .backbone import BackboneNCA
from .config import ModelConfig
from .octree import M3DNCA, NCA_ARCHITECTURES, Crop, MedNCA, NCAConfig, OctreeNCA
from .registry import (
                       Architecture,
                       architecture,
                       architecture_of,
                       build_model,
                       count_parameters,
                       is_nca,
                       list_models,
                       make_config,
                       register_model,
)

__all__ = ["Architecture", "BackboneNCA", "Crop", "M3DNCA", "MedNCA", "ModelConfig", "NCAConfig", "NCA_ARCHITECTURES",
           "OctreeNCA", "architecture", "architecture_of", "build_model", "count_parameters", "is_nca", "list_models",
           "make_config", "register_model"]
