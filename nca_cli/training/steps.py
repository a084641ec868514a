"""Training steps per architecture: the batches a model sees, its loss and its validation.

==============  =================================================  ====================================
architecture    batch                                              loss
==============  =================================================  ====================================
NCAs            ``BatchSampler`` (patches or whole cases)          ``bce_dice_loss`` on the logits of
                                                                   the crop the NCA trains on
unet            ``BatchSampler`` patches, multi-hot masks          ``bce_dice_loss`` (sigmoid per class)
segresmamba,    ``BatchSampler`` patches; the multi-hot masks      ``meunet_loss``: soft Dice +
segresnet       become a label map (0 = background)                class-weighted cross-entropy
meunet          the expanded patch E = expand x P (multiple of     ``expanded_pair_loss``: the loss of
                16) centred on a standard patch P placed as        P plus the loss of E at half
                ``BatchSampler`` does; outside the volume images   resolution (first level without
                read 0 and labels are ignored                      gradient, deep-supervision head)
meunet_cascade  patches P with the one-hot stage-1 labels at the   ``meunet_loss`` of stage 2
                same place (stage 1 run once over each whole
                training case, sliding window)
==============  =================================================  ====================================

Which step an architecture uses: ``STEPS`` by name, else by its registry entry (NCAs, or
patch-wise models). The cascade's stage 1 is a trained meU-net: ``model.stage1`` names its
model.pt, whose weights are copied into the (frozen) stage 1 when training starts.
Augmentation (intensity only) touches the image channels. Validation goes through the same
predictors as ``nca segment``: NCAs the median of an ensemble on fixed patches or cases,
patch-wise models sliding windows over the whole validation cases (window = ``data.patch``),
Dice of the foreground classes.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import NCAError
from ..data.dataset import as_numpy_generator
from ..inference.outputs import masks_of, mean_dice, whole
from ..models.registry import architecture_of
from ..recipes import Recipe, resolve_path
from .augment import augment
from .batches import BatchSampler, validation_cases
from .losses import bce_dice_loss


def masks_to_labels(masks: torch.Tensor) -> torch.Tensor:
    """Multi-hot masks ``[B, K, *spatial]`` of exclusive classes -> labels ``[B, *spatial]``
    (int64; 0 = background, k = class k)."""
    return torch.where(masks.amax(1) > 0, masks.argmax(1) + 1, 0)


def _window(array: np.ndarray, start: Sequence[int], size: Sequence[int], fill, dtype=None) -> np.ndarray:
    """``array[start:start+size]`` over the leading axes; positions outside read ``fill``."""
    lead = len(size)
    out = np.full(tuple(size) + array.shape[lead:], fill, dtype=dtype or array.dtype)
    src, dst = [], []
    for s, n, total in zip(start, size, array.shape):
        lo, hi = max(s, 0), min(s + n, total)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


class ContextSampler:
    """Batches of a ``context`` window centred on a standard ``patch`` placed by
    ``PreparedDataset.patch_start``: images ``[B, C, *context]`` (0 outside the volume), labels
    ``[B, *context]`` (int64, -1 outside) and, for ``extra`` per-case maps, their windows."""

    def __init__(self, dataset, batch_size: int, patch: Sequence[int], context: Sequence[int],
                 require_foreground: bool = False):
        if len(dataset) == 0:
            raise NCAError(f"The training split of {dataset.root} is empty; prepare the dataset with more cases.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.patch = tuple(patch)
        self.context = tuple(context)
        self.require_foreground = require_foreground

    def batch(self, g: torch.Generator, extra: Sequence[np.ndarray] | None = None):
        rng = as_numpy_generator(g)
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        images, labels, maps = [], [], []
        for i in idx:
            start = self.dataset.patch_start(i, self.patch, rng, self.require_foreground)
            corner = [s - (c - p) // 2 for s, c, p in zip(start, self.context, self.patch)]
            image = self.dataset.to_float(_window(self.dataset.image(i), corner, self.context, 0))
            images.append(torch.from_numpy(image).movedim(-1, 0))
            labels.append(torch.from_numpy(_window(self.dataset.label(i), corner, self.context, -1, np.int64)))
            if extra is not None:
                maps.append(torch.from_numpy(_window(extra[i], corner, self.context, -1, np.int64)))
        out = torch.stack(images), torch.stack(labels)
        return out + (torch.stack(maps),) if extra is not None else out


class NCAStep:
    """Multi-level NCAs: crops of the finest levels, BCE + Dice, ensemble validation."""

    def __init__(self, model: nn.Module, recipe: Recipe, dataset):
        data = recipe.data
        self.recipe = recipe
        self.patch = data.crop
        self.crop_levels = data.crop_levels if self.patch else 0
        self.sampler = BatchSampler(dataset, data.batch_size, data.patch, data.require_foreground)

    def batch(self, g: torch.Generator):
        x, y = self.sampler.batch(g)
        return augment(x, self.recipe.training.augmentation.to_dict(), g), y

    def loss(self, model, x, y, *, seed: int, generator: torch.Generator) -> torch.Tensor:
        core = model.module if hasattr(model, "module") else model
        crop = core.random_crop(x.shape[2:], self.patch, self.crop_levels, generator)
        logits, region = model(x, seed=seed, crop=crop)
        if region is not None:
            y = y[(slice(None), slice(None), *region)]
        return bce_dice_loss(logits, y, self.recipe.training.dice_weight)

    def validation_cases(self, dataset):
        return validation_cases(dataset, self.recipe.data.patch)

    def validate(self, model, cases, *, ensemble: int, impl: str) -> float:
        """Mean Dice over cases of the median of ``ensemble`` stochastic runs' logits."""
        from ..inference.predictors import OctreePredictor

        predictor = OctreePredictor(model, device=next(model.parameters()).device, impl=impl, state_dtype="float32")
        return mean_dice(cases, whole(lambda x: predictor.masks(predictor.logits(x, ensemble=ensemble))))


class PatchStep:
    """Patch-wise models: patches from ``BatchSampler``; ``bce_dice_loss`` (sigmoid models) or
    ``meunet_loss`` on the label map (softmax models)."""

    def __init__(self, model: nn.Module, recipe: Recipe, dataset):
        self.recipe = recipe
        self.data = recipe.data
        self.patch = list(self.data.patch)
        self.softmax = architecture_of(model).softmax
        self.sampler = self._sampler(model, dataset)

    def _sampler(self, model: nn.Module, dataset):
        return BatchSampler(dataset, self.data.batch_size, self.patch, self.data.require_foreground)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return augment(x, self.recipe.training.augmentation.to_dict(), g)

    def batch(self, g: torch.Generator):
        x, y = self.sampler.batch(g)
        return self._augment(x, g), (masks_to_labels(y) if self.softmax else y)

    def loss(self, model, x, y, *, seed: int, generator: torch.Generator) -> torch.Tensor:
        from ..models.baselines import meunet_loss

        logits = model(x)
        return meunet_loss(logits, y) if self.softmax else bce_dice_loss(logits, y, self.recipe.training.dice_weight)

    def validation_cases(self, dataset) -> list:
        return [(dataset, i) for i in range(len(dataset))]

    def validate(self, model: nn.Module, cases, **_) -> float:
        """Mean over cases of the mean foreground-class Dice of sliding-window predictions."""
        return mean_dice(cases, lambda case: self._bands(model, *case))

    def _bands(self, model: nn.Module, dataset, i: int):
        """``(predicted masks, target masks)`` ``[1, K, rows, *rest]`` of case ``i``, band by band."""
        from ..inference.windows import logit_rows, window_size

        image, label = dataset.image(i), dataset.label(i)
        spatial = label.shape

        def read(r0: int, r1: int) -> torch.Tensor:
            return torch.from_numpy(dataset.to_float(image[r0:r1])).movedim(-1, 0)[None]

        for r0, r1, logits in logit_rows(model, read, spatial, window_size(model, spatial, self.patch)):
            target = torch.from_numpy(dataset.to_masks(np.asarray(label[r0:r1]))).movedim(-1, 0).bool()
            yield masks_of(logits, self.softmax, axis=0)[None], target[None]


class MeUNetStep(PatchStep):
    """The meU-net step: standard patch + centred expanded patch, both losses summed."""

    def _sampler(self, model: nn.Module, dataset):
        from ..models.baselines import expanded_size

        self.big = expanded_size(self.patch, model.config.expand, model.divisor)
        return ContextSampler(dataset, self.data.batch_size, self.patch, self.big, self.data.require_foreground)

    def batch(self, g: torch.Generator):
        x, y = self.sampler.batch(g)
        return self._augment(x, g), y

    def loss(self, model, x, y, *, seed: int, generator: torch.Generator) -> torch.Tensor:
        from ..models.baselines import expanded_pair_loss

        return expanded_pair_loss(model, x, y, self.patch)


class CascadeStep(PatchStep):
    """Stage 2 of the meU-net cascade, fed the frozen stage 1's labels of the whole case."""

    def __init__(self, model: nn.Module, recipe: Recipe, dataset):
        load_stage1(model, recipe)
        self.model = model
        self.dataset = dataset
        self.maps: list[np.ndarray] | None = None
        super().__init__(model, recipe, dataset)

    def _sampler(self, model: nn.Module, dataset):
        return ContextSampler(dataset, self.data.batch_size, self.patch, self.patch, self.data.require_foreground)

    def _stage1_maps(self) -> list[np.ndarray]:
        from ..inference.windows import Stage1Mean, blended_rows, window_size

        stage1 = Stage1Mean(self.model)
        maps = []
        for i in range(len(self.dataset)):
            image, spatial = self.dataset.image(i), self.dataset.label(i).shape
            out = np.zeros(spatial, np.uint8)

            def read(r0: int, r1: int, image=image) -> torch.Tensor:
                return torch.from_numpy(self.dataset.to_float(image[r0:r1])).movedim(-1, 0)[None]

            for r0, r1, probs in blended_rows(stage1, read, spatial, window_size(self.model, spatial, self.patch)):
                out[r0:r1] = probs.argmax(0).numpy()
            maps.append(out)
        return maps

    def batch(self, g: torch.Generator):
        if self.maps is None:  # after a resume has restored the weights
            self.maps = self._stage1_maps()
        x, y, stage1 = self.sampler.batch(g, self.maps)
        k = self.recipe.model["output_channels"]
        onehot = F.one_hot(stage1.clamp(min=0), k).movedim(-1, 1).float() * (stage1 >= 0).unsqueeze(1)
        return torch.cat([self._augment(x, g), onehot], dim=1), y

    def loss(self, model, x, y, *, seed: int, generator: torch.Generator) -> torch.Tensor:
        from ..models.baselines import meunet_loss

        c = self.recipe.model["input_channels"]
        return meunet_loss(model(x[:, :c], stage1_prediction=x[:, c:]), y)


def load_stage1(model: nn.Module, recipe: Recipe) -> None:
    """Copy the weights of the meU-net named by ``model.stage1`` into the cascade."""
    from ..models.baselines import MeUNet
    from ..models.checkpoint import load_model

    src = recipe.where
    path = resolve_path(recipe, recipe.model.get("stage1"))
    if path is None:
        raise NCAError(f"The cascade in {src} needs a trained stage 1: train recipes/meunet_microct.yaml first, "
                       f"then set model.stage1 to its model.pt.")
    stage1, _ = load_model(path)
    m = recipe.model
    if not isinstance(stage1, MeUNet) or any(getattr(stage1.config, k) != m[k]
                                             for k in ("dims", "input_channels", "output_channels")):
        raise NCAError(f"The stage 1 {path} named in {src} is not a {m['dims']}D meU-net with {m['input_channels']} "
                       f"input and {m['output_channels']} output channels; pass the model.pt of a matching meunet run.")
    model.stage1[0].load_state_dict(stage1.state_dict())


STEPS = {"meunet": MeUNetStep, "meunet_cascade": CascadeStep}


def training_step(model: nn.Module, recipe: Recipe, dataset):
    """The step object for ``model`` (see the module docstring)."""
    arch = architecture_of(model)
    if arch.is_nca:
        return NCAStep(model, recipe, dataset)
    patch, div = recipe.data.patch, int(model.divisor)
    if not patch or any(p % div for p in patch):
        raise NCAError(f"The {arch.name} model in {recipe.where} trains on patches that are "
                       f"multiples of {div} on every axis, got data.patch={patch}; fix data.patch.")
    if arch.softmax and dataset.label_encoding != "index":
        raise NCAError(f"The dataset {dataset.root} has overlapping classes ({dataset.label_encoding} labels), which a "
                       f"softmax model cannot predict; use the unet recipe or an NCA.")
    return STEPS.get(arch.name, PatchStep)(model, recipe, dataset)
