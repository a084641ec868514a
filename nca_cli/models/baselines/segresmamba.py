"""SegResMamba: a SegResNet-style encoder-decoder with Tri-oriented Mamba (ToM) blocks.

Layout (channels 48/96/192/384, ``dims`` = 2 or 3)::

    stem      conv k7 stride 2, IN -> 48                                  (1/2 resolution)
    stage i   [conv k3 stride 2, c_{i-1} -> c_i  (i > 0)]
              SegResNet residual blocks (1, 2, 2, 4 per stage): GN-ReLU-conv3-GN-ReLU-conv3 + x
              conv-Mamba mixed block (when ``use_mamba``):
                  x + up(conv3(ToM-layer(conv3(down(x)))))     down: conv3 s2, up: convT2 s2
    decoder   per stage, deepest first: conv1x1 halving channels, linear upsampling x2,
              + skip, one residual block
    head      GN-ReLU-convT k2 stride 2, 48 -> classes                   (full resolution)

Every conv in the mixed block is followed by GroupNorm and ReLU. The ToM layer is
``y + ToM(LayerNorm(y))`` over the voxels as tokens, with
``ToM(z) = Mamba(z_f) + Mamba(z_r) + Mamba(z_s)``: three Mamba blocks (own weights) reading the
tokens forward (row-major, last axis fastest), reversed, and slice-interleaved (first axis
fastest, so consecutive tokens are the same position in consecutive slices); each result is
put back in voxel order before the sum. The Mamba layers run on every device: the selective
scan is ``selective_scan`` (CUDA kernel of ``mamba_ssm`` when installed, chunked otherwise).

``use_mamba=False`` drops the mixed blocks and leaves the plain SegResNet-like network.
Spatial sizes must be divisible by ``divisor`` (32 with Mamba, 16 without).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...core.schema import setting
from ..config import ModelConfig
from ..registry import register_model
from .mamba_scan import selective_scan
from .unet import check_divisible

WIDTHS = (48, 96, 192, 384)
BLOCKS_DOWN = (1, 2, 2, 4)


def _conv(dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1, bias: bool = False) -> nn.Module:
    cls = nn.Conv3d if dims == 3 else nn.Conv2d
    return cls(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)


def _conv_transpose(dims: int, cin: int, cout: int, bias: bool = False) -> nn.Module:
    cls = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
    return cls(cin, cout, 2, stride=2, bias=bias)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class MambaBlock(nn.Module):
    """One Mamba block on ``[B, L, d_model]`` tokens.

    in_proj -> (x, z); x: causal depthwise conv1d, SiLU; x_proj -> (dt, B, C);
    delta = softplus(dt_proj(dt)); y = selective_scan(x, delta, A = -exp(A_log), B, C, D);
    out_proj(y * SiLU(z)).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, scan_chunk: int = 64):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_chunk = scan_chunk
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_dt()

    def _init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation: softplus(bias) log-uniform in [dt_min, dt_max]."""
        bound = self.dt_rank ** -0.5
        with torch.no_grad():
            self.dt_proj.weight.uniform_(-bound, bound)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            dt = dt.clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x, z = self.in_proj(tokens).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[:, :, :length])               # [B, d_inner, L]
        dt, b, c = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)                      # [B, d_inner, L]
        A = -torch.exp(self.A_log.float())
        y = selective_scan(
            x.float(), delta.float(), A, b.transpose(1, 2).float(), c.transpose(1, 2).float(), self.D.float(),
            chunk=self.scan_chunk,
        ).to(x.dtype)
        y = y * F.silu(z.transpose(1, 2))
        return self.out_proj(y.transpose(1, 2))


def scan_orders(spatial: tuple[int, ...], device=None) -> list[torch.Tensor | None]:
    """Token orders of the three ToM directions for a row-major flattened volume:
    forward (``None``: identity), reversed, slice-interleaved (first axis fastest)."""
    n = math.prod(spatial)
    index = torch.arange(n, device=device)
    return [None, index.flip(0), index.reshape(spatial[0], -1).t().reshape(-1)]


class TriOrientedMamba(nn.Module):
    """``ToM(z) = Mamba(z_f) + Mamba(z_r) + Mamba(z_s)`` on ``[B, L, C]`` tokens of a volume."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, scan_chunk: int = 64):
        super().__init__()
        self.directions = nn.ModuleList(
            MambaBlock(d_model, d_state, d_conv, expand, scan_chunk) for _ in range(3)
        )

    def forward(self, tokens: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        out = torch.zeros_like(tokens)
        for mamba, order in zip(self.directions, scan_orders(spatial, tokens.device)):
            if order is None:
                out = out + mamba(tokens)
            else:
                y = mamba(tokens[:, order])
                out = out.index_add(1, order, y)
        return out


class ToMLayer(nn.Module):
    """``x + ToM(LayerNorm(x))`` on a ``[B, C, *spatial]`` feature map."""

    def __init__(self, channels: int, scan_chunk: int = 64):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.tom = TriOrientedMamba(channels, scan_chunk=scan_chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        tokens = x.flatten(2).transpose(1, 2)
        y = self.tom(self.norm(tokens), spatial)
        return x + y.transpose(1, 2).reshape(x.shape)


class ResBlock(nn.Module):
    """SegResNet residual block: GN-ReLU-conv3-GN-ReLU-conv3, plus the input."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(channels), nn.ReLU(), _conv(dims, channels, channels),
            _norm(channels), nn.ReLU(), _conv(dims, channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvMambaBlock(nn.Module):
    """Convolution-Mamba mixed block: a residual branch that halves the resolution, mixes with
    conv3 / ToM / conv3 there, and comes back with a transposed conv."""

    def __init__(self, dims: int, channels: int, scan_chunk: int = 64):
        super().__init__()

        def cna(conv: nn.Module) -> nn.Sequential:
            return nn.Sequential(conv, _norm(channels), nn.ReLU())

        self.down = cna(_conv(dims, channels, channels, stride=2))
        self.pre = cna(_conv(dims, channels, channels))
        self.mamba = ToMLayer(channels, scan_chunk)
        self.post = cna(_conv(dims, channels, channels))
        self.up = cna(_conv_transpose(dims, channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.post(self.mamba(self.pre(self.down(x)))))


class SegResMamba(nn.Module):
    """SegResMamba (``use_mamba=True``) or the same network without Mamba; returns logits
    ``[B, num_classes, *spatial]`` for ``[B, in_channels, *spatial]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: int = 3,
        use_mamba: bool = True,
        widths: tuple[int, ...] = WIDTHS,
        blocks_down: tuple[int, ...] = BLOCKS_DOWN,
        scan_chunk: int = 64,
    ):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"SegResMamba supports 2 or 3 spatial dimensions, got {dims}.")
        if len(widths) != len(blocks_down):
            raise ValueError("widths and blocks_down need one entry per stage.")
        self.dims = dims
        self.use_mamba = use_mamba
        self.divisor = 2 ** (len(widths) + (1 if use_mamba else 0))
        self.stem = _conv(dims, in_channels, widths[0], kernel=7, stride=2)
        self.stages = nn.ModuleList()
        for i, (width, blocks) in enumerate(zip(widths, blocks_down)):
            layers: list[nn.Module] = []
            if i > 0:
                layers.append(_conv(dims, widths[i - 1], width, stride=2))
            layers += [ResBlock(dims, width) for _ in range(blocks)]
            if use_mamba:
                layers.append(ConvMambaBlock(dims, width, scan_chunk))
            self.stages.append(nn.Sequential(*layers))
        self.reduce = nn.ModuleList(_conv(dims, widths[i], widths[i - 1], kernel=1) for i in range(len(widths) - 1, 0, -1))
        self.up_blocks = nn.ModuleList(ResBlock(dims, widths[i - 1]) for i in range(len(widths) - 1, 0, -1))
        self.head = nn.Sequential(_norm(widths[0]), nn.ReLU(), _conv_transpose(dims, widths[0], num_classes, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.dims, self.divisor, type(self).__name__)
        skips = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        mode = "trilinear" if self.dims == 3 else "bilinear"
        for reduce, block, skip in zip(self.reduce, self.up_blocks, reversed(skips[:-1])):
            x = F.interpolate(reduce(x), scale_factor=2, mode=mode, align_corners=False)
            x = block(x + skip)
        return self.head(x)

    def mamba_parameters(self) -> list[nn.Parameter]:
        """The parameters of all Mamba blocks (empty without Mamba)."""
        return [p for m in self.modules() if isinstance(m, MambaBlock) for p in m.parameters()]


@dataclass
class SegResNetConfig(ModelConfig):
    """The SegResNet-like encoder-decoder without Mamba (the ablation); softmax classes."""

    widths: list = setting(kind="ints", lo=8, hi=4096, default_factory=lambda: list(WIDTHS),
                           help="stem and stage channels")
    blocks_down: list = setting(kind="ints", lo=1, hi=64, default_factory=lambda: list(BLOCKS_DOWN),
                                help="residual blocks per stage")


@dataclass
class SegResMambaConfig(SegResNetConfig):
    """SegResMamba with Tri-oriented Mamba blocks; softmax classes."""

    scan_chunk: int = setting(64, kind="int", lo=1, hi=1 << 20, help="selective-scan chunk length (memory/speed only)")


@register_model("segresmamba", config=SegResMambaConfig, output="softmax", predictor="window")
def build_segresmamba(cfg: SegResMambaConfig) -> nn.Module:
    return SegResMamba(cfg.input_channels, cfg.output_channels, dims=cfg.dims, use_mamba=True,
                       widths=tuple(cfg.widths), blocks_down=tuple(cfg.blocks_down), scan_chunk=cfg.scan_chunk)


@register_model("segresnet", config=SegResNetConfig, output="softmax", predictor="window")
def build_segresnet(cfg: SegResNetConfig) -> nn.Module:
    return SegResMamba(cfg.input_channels, cfg.output_channels, dims=cfg.dims, use_mamba=False,
                       widths=tuple(cfg.widths), blocks_down=tuple(cfg.blocks_down))
