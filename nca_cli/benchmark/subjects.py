"""What is benchmarked: one model run one way (a "subject"), with untrained random weights.

Per task: the UNet baseline (PyTorch, the whole input in one pass), Med-NCA (pathology) or
M3D-NCA (surgery, radiology) and OctreeNCA, each on PyTorch and on the fused kernel with a
float32 or a float16 state. NCA models come from the recipes
in ``recipes/``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import NCAError
from ..core.resources import require_bundled_recipe
from ..recipes import load_recipe

TASK_RECIPES = {
    "pathology": {"med_nca": "mednca_pathology", "octree_nca": "octree_pathology"},
    "surgery": {"m3d_nca": "m3d_surgery", "octree_nca": "octree_surgery"},
    "radiology": {"m3d_nca": "m3d_radiology_2levels", "octree_nca": "octree_radiology"},
}
UNET_SHAPES = {"pathology": (2, 3, 1), "surgery": (3, 3, 5), "radiology": (3, 1, 1)}   # dims, in, out
MODEL_NAMES = {"unet": "UNet", "med_nca": "Med-NCA", "m3d_nca": "M3D-NCA", "octree_nca": "OctreeNCA"}
IMPL_CHOICES = ("torch", "fused", "fused-float32", "fused-float16")
FC1_STD = 0.01
PROBE_STEPS = 2


@dataclass(frozen=True)
class Subject:
    """One row of a benchmark: a model, how it runs, and how its input is held."""

    model: str                      # unet | med_nca | m3d_nca | octree_nca
    impl: str                       # torch | fused
    state_dtype: str                # float32 | float16 (fused state storage; torch paths: float32)
    config: dict = field(compare=False, hash=False)
    divisor: int = 1                # every size must be a multiple of this

    @property
    def key(self) -> str:
        return self.model if self.impl == "torch" else f"{self.model}/fused-{self.state_dtype}"

    @property
    def label(self) -> str:
        return MODEL_NAMES[self.model]

    @property
    def impl_label(self) -> str:
        return "PyTorch" if self.impl == "torch" else f"fused kernel, {self.state_dtype} state"

    @property
    def is_nca(self) -> bool:
        return self.model != "unet"

    @property
    def input_mode(self) -> str:
        """``memory``: the whole uint8 input is a tensor in memory (the model needs it whole);
        ``stream``: the fused driver reads it band by band, as ``nca segment`` reads a slide."""
        return "stream" if self.impl == "fused" else "memory"

    @property
    def paper_row(self) -> str:
        if self.model == "unet":
            return "UNet"
        if self.model in ("med_nca", "m3d_nca"):
            return "med/M3D-NCA" if self.impl == "torch" else "-"
        return "OctreeNCA" if self.impl == "torch" else "OctreeNCA-CUDA"

    def to_dict(self) -> dict:
        return {"model": self.model, "impl": self.impl, "state_dtype": self.state_dtype,
                "config": self.config, "divisor": self.divisor}

    @classmethod
    def from_dict(cls, data: dict) -> "Subject":
        return cls(data["model"], data["impl"], data["state_dtype"], dict(data["config"]), int(data["divisor"]))


def _recipe_model(task: str, model: str) -> dict:
    return dict(load_recipe(require_bundled_recipe(TASK_RECIPES[task][model])).model)


def _unet_divisor(dims: int, inp: int, out: int) -> int:
    from ..recipes import model_divisor

    return model_divisor({"architecture": "unet", "dims": dims, "input_channels": inp, "output_channels": out})


def task_subjects(task: str) -> list[Subject]:
    """Every subject of a task, in table order."""
    if task not in TASK_RECIPES:
        raise NCAError(f"Unknown benchmark task '{task}'; use pathology, surgery or radiology.")
    dims, inp, out = UNET_SHAPES[task]
    unet_cfg = {"architecture": "unet", "dims": dims, "input_channels": inp, "output_channels": out}
    baseline = next(m for m in TASK_RECIPES[task] if m != "octree_nca")
    octree = _recipe_model(task, "octree_nca")
    other = _recipe_model(task, baseline)
    return [
        Subject("unet", "torch", "float32", unet_cfg, _unet_divisor(dims, inp, out)),
        Subject(baseline, "torch", "float32", other),
        Subject(baseline, "fused", "float32", other),
        Subject(baseline, "fused", "float16", other),
        Subject("octree_nca", "torch", "float32", octree),
        Subject("octree_nca", "fused", "float32", octree),
        Subject("octree_nca", "fused", "float16", octree),
    ]


def select_subjects(task: str, models: list[str] | None, impls: list[str] | None) -> list[Subject]:
    """The task's subjects restricted to ``models`` and ``impls`` (empty or None: all)."""
    subjects = task_subjects(task)
    known = [s.model for s in subjects]
    for name in models or []:
        if name not in known:
            raise NCAError(f"Model '{name}' is not part of the {task} benchmark; choose from "
                           f"{', '.join(dict.fromkeys(known))}.")
    for name in impls or []:
        if name not in IMPL_CHOICES:
            raise NCAError(f"Unknown implementation '{name}'; choose from {', '.join(IMPL_CHOICES)}.")

    def wanted(s: Subject) -> bool:
        if models and s.model not in models:
            return False
        if not impls:
            return True
        return any(i == s.impl or (s.impl == "fused" and i == f"fused-{s.state_dtype}") for i in impls)

    chosen = [s for s in subjects if wanted(s)]
    if not chosen:
        raise NCAError(f"No {task} benchmark matches --models {' '.join(models or []) or '(all)'} with --impl "
                       f"{' '.join(impls or []) or '(all)'}; UNet, Med-NCA and M3D-NCA run on torch only.")
    return chosen


def build_subject_model(subject: Subject, *, probe: bool = False, seed: int = 0) -> nn.Module:
    """The subject's model with random weights (fixed ``seed``; NCA fc1 random, not zero).

    ``probe``: every NCA level runs at most ``PROBE_STEPS`` steps instead of its configured
    count. From the second step on, every step holds the same tensors (the level's input
    state, the current state and the step's temporaries), so the peak memory is that of
    the full pass; only the time shrinks.
    """
    from ..models import build_model

    torch.manual_seed(seed)
    cfg = copy.deepcopy(subject.config)
    if not subject.is_nca:
        return build_model(cfg).eval()
    model = build_model(cfg)
    if probe:
        model.config.steps = [min(PROBE_STEPS, s) for s in model.config.steps]
    for backbone in model.backbones:
        nn.init.normal_(backbone.fc1.weight, std=FC1_STD)
    return model.eval()
