"""The memory-efficient U-net (meU-net) and its post-concatenation cascade.

U-net body: five levels, two (conv3-BN-ReLU) per level, encoder widths 16/32/64/128/128,
decoder widths 16/16/32/64 (finest first), max-pooling, nearest upsampling; every decoder
level concatenates ``[skip, upsampled, extra]`` (skip first) before its two convs.
Output: softmax-class logits (``num_classes`` includes the background).

meU-net training step (``meunet_training_loss``): a standard ``P`` patch runs the whole
network with the head at full resolution; a ``1.5 P`` patch centred on it runs its first
encoder level without gradient and ends in a second head on decoder level 2 (half
resolution, deep supervision). Both losses (soft Dice + class-weighted cross-entropy) are
summed. Sizes must be divisible by 16; with batch 1 in training mode the patch must be at
least 32 per axis (BatchNorm needs more than one value in the 1/16-resolution bottleneck).

Cascade (``MeUNetCascade``): a frozen stage 1 predicts; its one-hot argmax is concatenated,
nearest-resized, to the input of every decoder level of the stage-2 U-net
(``"post_concat"``), or only to the image (``"input_concat"``, the ablation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...core.schema import setting
from ..config import ModelConfig
from ..registry import register_model
from .unet import check_divisible

ENCODER = (16, 32, 64, 128, 128)
DECODER = (16, 16, 32, 64)
EXPAND = 1.5


def _double_conv(dims: int, cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    norm = nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d
    return nn.Sequential(
        conv(cin, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
        conv(cout, cout, 3, padding=1, bias=False), norm(cout), nn.ReLU(inplace=True),
    )


def _head(dims: int, cin: int, cout: int) -> nn.Module:
    return (nn.Conv3d if dims == 3 else nn.Conv2d)(cin, cout, 1)


class UNetBody(nn.Module):
    """The shared U-net; ``decoder_extra`` channels join every decoder level's input."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int = 3,
        encoder: Sequence[int] = ENCODER,
        decoder: Sequence[int] = DECODER,
        decoder_extra: int = 0,
    ):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"The U-net supports 2 or 3 spatial dimensions, got {dims}.")
        if len(decoder) != len(encoder) - 1:
            raise ValueError("The decoder needs one width per encoder level except the deepest.")
        self.dims = dims
        self.num_classes = num_classes
        self.divisor = 2 ** (len(encoder) - 1)
        self.encoder = nn.ModuleList()
        cin = in_channels
        for width in encoder:
            self.encoder.append(_double_conv(dims, cin, width))
            cin = width
        self.decoder = nn.ModuleList()
        for level, width in enumerate(decoder):
            below = encoder[-1] if level == len(decoder) - 1 else decoder[level + 1]
            self.decoder.append(_double_conv(dims, encoder[level] + below + decoder_extra, width))
        self.head = _head(dims, decoder[0], num_classes)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return (F.max_pool3d if self.dims == 3 else F.max_pool2d)(x, 2)

    def features(
        self,
        x: torch.Tensor,
        stop_level: int = 0,
        extra: torch.Tensor | None = None,
        first_level_grad: bool = True,
    ) -> torch.Tensor:
        """Decoder features at ``stop_level`` (0 = full resolution). ``extra`` is
        nearest-resized and concatenated at every decoder level; with
        ``first_level_grad=False`` the first encoder level runs under ``torch.no_grad``."""
        check_divisible(x, self.dims, self.divisor, type(self).__name__)
        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self._pool(x)
            if level == 0 and not first_level_grad:
                with torch.no_grad():
                    x = block(x)
            else:
                x = block(x)
            skips.append(x)
        for level in range(len(self.decoder) - 1, stop_level - 1, -1):
            skip = skips[level]
            parts = [skip, F.interpolate(x, size=skip.shape[2:], mode="nearest")]
            if extra is not None:
                parts.append(F.interpolate(extra, size=skip.shape[2:], mode="nearest"))
            x = self.decoder[level](torch.cat(parts, dim=1))
        return x

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(x, extra=extra))


class MeUNet(UNetBody):
    """meU-net: the U-net plus a deep-supervision head on decoder level 2 for the
    expanded patch. ``forward`` is the standard full-resolution path."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int = 3,
        encoder: Sequence[int] = ENCODER,
        decoder: Sequence[int] = DECODER,
    ):
        super().__init__(in_channels, num_classes, dims, encoder, decoder)
        self.aux_head = _head(dims, decoder[1], num_classes)

    def forward_expanded(self, x: torch.Tensor) -> torch.Tensor:
        """Expanded-patch path: first level without gradient, logits at half resolution."""
        return self.aux_head(self.features(x, stop_level=1, first_level_grad=False))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``softmax(total / count_i)`` over the classes present in ``labels`` (negative labels
    are ignored); absent classes get weight 0."""
    valid = labels[labels >= 0].long()
    counts = torch.bincount(valid, minlength=num_classes)[:num_classes].double()
    present = counts > 0
    logits = torch.full((num_classes,), -math.inf, dtype=torch.float64, device=labels.device)
    logits[present] = counts.sum() / counts[present]
    return torch.softmax(logits, dim=0).float()


def meunet_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice (mean over classes) + class-weighted cross-entropy.

    logits ``[B, K, *spatial]``; labels ``[B, *spatial]`` with values in 0..K-1, or -1 for
    voxels outside the image (ignored). ``weights`` default: ``class_weights(labels, K)``.
    """
    k = logits.shape[1]
    if weights is None:
        weights = class_weights(labels, k)
    valid = labels >= 0
    target = labels.clamp(min=0).long()
    ce = F.cross_entropy(logits, torch.where(valid, target, -1), weight=weights.to(logits), ignore_index=-1)
    probs = torch.softmax(logits, dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(target, k).movedim(-1, 1).to(probs) * valid.unsqueeze(1)
    axes = [0] + list(range(2, logits.dim()))
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = 1 - 2 * inter / (denom + 1e-5)
    return dice.mean() + ce


def _crop(x: torch.Tensor, start: Sequence[int], size: Sequence[int], fill: float) -> torch.Tensor:
    """``x[..., start:start+size]`` over the trailing axes; outside ``x`` reads ``fill``."""
    dims = len(size)
    out = x.new_full(x.shape[: x.dim() - dims] + tuple(size), fill)
    src, dst = [], []
    for s, n, total in zip(start, size, x.shape[-dims:]):
        lo, hi = max(s, 0), min(s + n, total)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = x[(..., *src)]
    return out


def expanded_size(patch: Sequence[int], factor: float = EXPAND, divisor: int = 16) -> tuple[int, ...]:
    """The expanded patch: ``factor * patch`` rounded up to a multiple of ``divisor``."""
    return tuple(int(math.ceil(factor * p / divisor)) * divisor for p in patch)


def meunet_training_loss(
    model: MeUNet,
    volume: torch.Tensor,
    labels: torch.Tensor,
    patch: int | Sequence[int],
    generator: torch.Generator | None = None,
    expand: float = EXPAND,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The meU-net loss of one step, ready for ``backward()``.

    ``volume`` ``[B, C, *spatial]``, ``labels`` ``[B, *spatial]`` (class indices). Per batch item a
    standard patch is drawn uniformly inside the volume (zero-padded where the volume is
    smaller) and the expanded patch is centred on it; voxels outside the volume are zeros in
    the image and ignored in the loss. Returns ``loss(standard) + loss(expanded at half
    resolution)``.
    """
    dims = model.dims
    spatial = volume.shape[2:]
    if len(spatial) != dims or labels.shape != volume.shape[:1] + spatial:
        raise ValueError(
            f"Expected volume [B, C, {dims} axes] and labels [B, same axes], got {tuple(volume.shape)} and {tuple(labels.shape)}."
        )
    patch = (patch,) * dims if isinstance(patch, int) else tuple(patch)
    if any(p % model.divisor for p in patch):
        raise ValueError(f"The meU-net patch size must be a multiple of {model.divisor}, got {patch}.")
    big = expanded_size(patch, expand, model.divisor)
    exp_x, exp_y = [], []
    for b in range(volume.shape[0]):
        start = [
            int(torch.randint(0, max(n - p, 0) + 1, (1,), generator=generator)) for n, p in zip(spatial, patch)
        ]
        start_big = [s - (e - p) // 2 for s, e, p in zip(start, big, patch)]
        exp_x.append(_crop(volume[b], start_big, big, 0.0))
        exp_y.append(_crop(labels[b], start_big, big, -1))
    device = next(model.parameters()).device
    return expanded_pair_loss(model, torch.stack(exp_x).to(device), torch.stack(exp_y).to(device), patch, weights)


def expanded_pair_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, patch: Sequence[int],
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """``loss(standard patch) + loss(expanded patch at half resolution)`` of expanded windows.

    ``x`` ``[B, C, *E]`` and ``y`` ``[B, *E]`` (labels, -1 outside the volume) are expanded
    patches; the standard patch ``patch`` is their centre (start ``(E - P) // 2``). ``model``
    may be wrapped (DistributedDataParallel): the standard path goes through it, the expanded
    path through the wrapped module's ``forward_expanded``.
    """
    core = model.module if hasattr(model, "module") else model
    big = x.shape[2:]
    inner = tuple(slice((e - p) // 2, (e - p) // 2 + p) for e, p in zip(big, patch))
    standard = meunet_loss(model(x[(slice(None), slice(None), *inner)]), y[(slice(None), *inner)], weights)
    half = (slice(None),) + (slice(None, None, 2),) * len(patch)
    return standard + meunet_loss(core.forward_expanded(x), y[half], weights)


class MeUNetCascade(nn.Module):
    """Two-stage cascade: frozen stage-1 network(s), stage-2 U-net fed their prediction.

    ``stage1``: one network or several (their softmax probabilities are averaged); they stay
    in eval mode and receive no gradient. The prediction is the one-hot argmax.
    """

    MODES = ("post_concat", "input_concat")

    def __init__(
        self,
        stage1: nn.Module | Sequence[nn.Module],
        stage2_in: int,
        num_classes: int,
        mode: str = "post_concat",
        dims: int = 3,
        encoder: Sequence[int] = ENCODER,
        decoder: Sequence[int] = DECODER,
    ):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Cascade mode must be one of {self.MODES}, got {mode!r}.")
        self.mode = mode
        self.num_classes = num_classes
        self.stage1 = nn.ModuleList([stage1] if isinstance(stage1, nn.Module) else list(stage1))
        self.stage1.requires_grad_(False)
        self.stage1.eval()
        post = mode == "post_concat"
        self.stage2 = UNetBody(
            stage2_in + (0 if post else num_classes), num_classes, dims, encoder, decoder,
            decoder_extra=num_classes if post else 0,
        )
        self.dims = dims
        self.divisor = self.stage2.divisor

    def train(self, mode: bool = True) -> "MeUNetCascade":
        super().train(mode)
        self.stage1.eval()
        return self

    @torch.no_grad()
    def stage1_prediction(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot ``[B, K, *spatial]`` of the argmax of stage 1's mean softmax."""
        probs = sum(torch.softmax(net(x), dim=1) for net in self.stage1) / len(self.stage1)
        return F.one_hot(probs.argmax(1), self.num_classes).movedim(-1, 1).to(x.dtype)

    def forward(self, x: torch.Tensor, stage1_prediction: torch.Tensor | None = None) -> torch.Tensor:
        """Stage-2 logits; ``stage1_prediction`` (one-hot) may be given precomputed, for
        instance from a sliding-window pass of stage 1 over the whole volume."""
        pred = self.stage1_prediction(x) if stage1_prediction is None else stage1_prediction.to(x)
        if self.mode == "post_concat":
            return self.stage2(x, extra=pred)
        return self.stage2(torch.cat([x, pred], dim=1))


class Stage1Mean(nn.Module):
    """A cascade's stage 1 as one network: the mean softmax of its stage-1 networks."""

    def __init__(self, cascade: nn.Module):
        super().__init__()
        self.nets = cascade.stage1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(torch.softmax(net(x), dim=1) for net in self.nets) / len(self.nets)


class Stage2Input(nn.Module):
    """A cascade's stage 2 on ``[image | one-hot stage-1 labels]`` inputs."""

    def __init__(self, cascade: nn.Module, image_channels: int):
        super().__init__()
        self.cascade = cascade
        self.image_channels = image_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.image_channels
        return self.cascade(x[:, :c], stage1_prediction=x[:, c:])


class CascadeWindows:
    """How the cascade predicts window by window (the ``cascade`` strategy of its registry
    entry, run by ``inference.windows.logit_rows``): stage 1 (``first``) over the whole image,
    its labels kept, one byte per cell; then stage 2 (``second``) on the image and those labels
    one-hot, slab by slab."""

    @staticmethod
    def first(model: nn.Module) -> nn.Module:
        return Stage1Mean(model)

    @staticmethod
    def second(model: nn.Module) -> nn.Module:
        return Stage2Input(model, model.config.input_channels)

    @staticmethod
    def held_bytes(model: nn.Module, cells: int, slab: int) -> int:
        """What the two stages hold besides one stage's pass: the stage-1 label map and, per slab
        of ``slab`` cells, the float32 one-hot labels and the joined input."""
        c = model.config
        return cells + slab * (2 * c.output_channels + c.input_channels) * 4


@dataclass
class MeUNetConfig(ModelConfig):
    """meU-net: softmax classes (background included)."""

    expand: float = setting(EXPAND, kind="float", lo=1.0, hi=4.0,
                            help="expanded patch = expand x patch per axis, rounded up to the divisor")


@dataclass
class MeUNetCascadeConfig(ModelConfig):
    """The two-stage cascade: a frozen meU-net stage 1, a U-net stage 2 fed its prediction."""

    mode: str = setting("post_concat", kind="choice", choices=MeUNetCascade.MODES,
                        help="post_concat (full-level post-concatenation) or input_concat (the ablation)")
    stage1: str | None = setting(None, kind="path", help="model.pt of the trained meU-net that becomes stage 1")


@register_model("meunet", config=MeUNetConfig, output="softmax", predictor="window")
def build_meunet(cfg: MeUNetConfig) -> nn.Module:
    return MeUNet(cfg.input_channels, cfg.output_channels, dims=cfg.dims)


@register_model("meunet_cascade", config=MeUNetCascadeConfig, output="softmax", predictor="window",
                cascade=CascadeWindows())
def build_meunet_cascade(cfg: MeUNetCascadeConfig) -> nn.Module:
    """An untrained stage 1 inside the cascade; training copies ``stage1``'s weights into it."""
    stage1 = MeUNet(cfg.input_channels, cfg.output_channels, dims=cfg.dims)
    return MeUNetCascade(stage1, cfg.input_channels, cfg.output_channels, mode=cfg.mode, dims=cfg.dims)
