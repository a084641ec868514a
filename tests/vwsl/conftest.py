import numpy as np
import pytest
import torch
from PIL import Image

from nca_cli.models import build_model, checkpoint

TINY_MEDNCA = dict(architecture="med_nca", dims=2, input_channels=1, output_channels=1, levels=2, factors=[[4, 4]],
                   steps=[6, 6], kernel_sizes=[3, 3], channels=16, hidden=16, normalization="batch",
                   perception="full2", fc1_all_channels=True)


def tiny_model(seed: int = 0):
    """A small 2-level Med-NCA with non-zero output layers, so its runs differ."""
    torch.manual_seed(seed)
    model = build_model(TINY_MEDNCA)
    for b in model.backbones:
        torch.nn.init.normal_(b.fc1.weight, std=0.05)
    return model


def disk_image(size=(32, 32), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A grey uint8 image with a bright disk, and its mask."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = h / 2 + rng.uniform(-3, 3), w / 2 + rng.uniform(-3, 3), min(h, w) / 4
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) < r * r
    img = 60 + 120 * mask + rng.normal(0, 10, size)
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8)


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: one thread avoids thread start-up and contention costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model" / "model.pt"
    checkpoint.save_model(path, tiny_model(), None, {"epochs": 1})
    return path


@pytest.fixture
def unlabeled(tmp_path):
    folder = tmp_path / "unlabeled"
    for i, size in enumerate([(32, 32), (32, 32), (32, 40)]):
        write_png(folder / f"case{i}.png", disk_image(size, seed=i)[0])
    return folder
