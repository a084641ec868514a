import shutil

import pytest
import torch
from torch.utils import cpp_extension

from nca_cli.models.backbone import BackboneNCA


@pytest.fixture(scope="session")
def cpu_kernels():
    """The default CPU kernel library, built (or loaded from the cache) once per session."""
    from nca_cli.kernels import kernel_module

    if shutil.which("c++") is None or not cpp_extension.is_ninja_available():
        pytest.skip("no C++ compiler or ninja: the fused kernels cannot be built here")
    return kernel_module("cpu")


def make_backbone(dims: int, input_channels: int, fire_rate: float, *, channels: int = 16, hidden: int = 64,
                  kernel_size: int = 3, seed: int = 0, normalization: str | None = None,
                  perception: str = "depthwise", fc1_all_channels: bool = False) -> BackboneNCA:
    """Random weights everywhere: fc1 included (it is zero-initialised), and BatchNorm's weight
    and bias (initialised to 1 and 0)."""
    torch.manual_seed(seed)
    m = BackboneNCA(dims, channels, hidden, input_channels, kernel_size, fire_rate, normalization, perception,
                    fc1_all_channels)
    torch.nn.init.normal_(m.fc1.weight, std=0.1)
    if m.norm is not None:
        torch.nn.init.normal_(m.norm.weight, 1.0, 0.3)
        torch.nn.init.normal_(m.norm.bias, 0.0, 0.3)
    return m
