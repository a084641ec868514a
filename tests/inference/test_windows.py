import numpy as np
import pytest
import torch

from nca_cli.inference import windows
from nca_cli.inference.windows import sliding_window_predict, window_starts
from nca_cli.models.baselines.meunet import MeUNet


class Constant(torch.nn.Module):
    def __init__(self, values):
        super().__init__()
        self.values = torch.nn.Parameter(torch.tensor(values), requires_grad=False)

    def forward(self, x):
        shape = (1, len(self.values)) + (1,) * (x.dim() - 2)
        return self.values.reshape(shape).expand((x.shape[0], len(self.values)) + x.shape[2:])


class Pointwise(torch.nn.Module):
    """Output = 2 * input + 1, voxel by voxel: blending must reproduce it exactly."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0), requires_grad=False)

    def forward(self, x):
        return self.scale * x + 1


def test_window_starts_cover_the_axis():
    assert window_starts(32, 32, 0.5) == [0]
    assert window_starts(10, 32, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68
    assert all(b - a <= 16 for a, b in zip(starts, starts[1:]))


def test_equals_direct_forward_when_window_covers_image():
    torch.manual_seed(0)
    net = MeUNet(1, 3).eval()
    x = torch.randn(2, 1, 32, 16, 48)
    out = sliding_window_predict(net, x, (32, 16, 48), batch_size=2)
    with torch.no_grad():
        direct = net(x)
    assert out.dtype == torch.float32 and out.shape == direct.shape
    assert torch.allclose(out, direct, atol=1e-6)


def test_small_image_is_zero_padded_to_the_window():
    torch.manual_seed(0)
    net = MeUNet(3, 2, dims=2).eval()
    x = torch.randn(1, 3, 20, 25)
    out = sliding_window_predict(net, x, 32)
    with torch.no_grad():
        direct = net(torch.nn.functional.pad(x, (0, 7, 0, 12)))[..., :20, :25]
    assert out.shape == (1, 2, 20, 25)
    assert torch.allclose(out, direct, atol=1e-6)


@pytest.mark.parametrize("shape, window, overlap, batch", [
    ((50, 37, 23), 16, 0.5, 3),
    ((41, 64, 17), (16, 32, 8), 0.25, 1),
    ((70, 5), (32, 16), 0.75, 4),
])
def test_constant_model_blends_without_seams(shape, window, overlap, batch):
    model = Constant([3.0, -1.5])
    out = sliding_window_predict(model, torch.randn(2, 1, *shape), window, overlap=overlap, batch_size=batch)
    assert out.shape == (2, 2) + shape
    assert torch.allclose(out[:, 0], torch.full_like(out[:, 0], 3.0), atol=1e-5)
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], -1.5), atol=1e-5)


def test_pointwise_model_is_reproduced_exactly():
    x = torch.randn(1, 2, 45, 30, 19)
    out = sliding_window_predict(Pointwise(), x, (16, 16, 8), overlap=0.5, batch_size=5)
    assert torch.allclose(out, 2 * x + 1, atol=1e-5)


def test_memmap_output_and_progress(tmp_path):
    x = torch.randn(1, 1, 40, 40)
    out = np.lib.format.open_memmap(tmp_path / "logits.npy", mode="w+", dtype=np.float32, shape=(1, 1, 40, 40))
    out[...] = 99.0
    calls = []
    result = sliding_window_predict(Pointwise(), x, 16, batch_size=4, out=out, progress=lambda d, t: calls.append((d, t)))
    assert np.shares_memory(result.numpy(), out)
    out.flush()
    back = np.load(tmp_path / "logits.npy")
    assert np.allclose(back, (2 * x + 1).numpy(), atol=1e-5)
    total = calls[-1][1]
    assert calls == [(i, total) for i in range(1, total + 1)]
    with pytest.raises(ValueError, match="out must be"):
        sliding_window_predict(Pointwise(), x, 16, out=np.zeros((1, 2, 40, 40), np.float32))


def test_bad_arguments():
    x = torch.randn(1, 1, 16, 16)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(Pointwise(), x, 8, overlap=1.0)
    with pytest.raises(ValueError, match="window"):
        sliding_window_predict(Pointwise(), x, (8, 8, 8))
    with pytest.raises(ValueError, match="Expected an image"):
        sliding_window_predict(Pointwise(), torch.randn(1, 16), 8)


@pytest.mark.parametrize("shape,window", [((70, 45), (32, 16)), ((37, 20, 26), (16, 16, 16)), ((10, 50), (16, 16))])
def test_band_by_band_equals_whole_image(shape, window):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1) if len(shape) == 2 else torch.nn.Conv3d(2, 3, 3, padding=1))
    image = torch.randn(1, 2, *shape)
    whole = sliding_window_predict(net, image, window)[0]
    got = torch.zeros_like(whole)
    rows = []
    for r0, r1, logits in windows.blended_rows(net, lambda a, b: image[:, :, a:b], shape, window):
        got[:, r0:r1] = logits
        rows.append((r0, r1))
    assert rows[0][0] == 0 and rows[-1][1] == shape[0] and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert torch.allclose(got, whole, atol=1e-5)


def test_window_rounds_to_divisor_and_image():
    class M:
        divisor = 16
    assert windows.window_size(M(), (100, 300), (40, 64)) == (48, 64)
    assert windows.window_size(M(), (20, 30, 500), None) == (32, 32, 128)


def test_large_label_arrays_are_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(windows, "LARGE_BYTES", 100)
    big = windows.label_array((20, 20), tmp_path)
    assert isinstance(big, np.memmap) and len(list(tmp_path.iterdir())) == 1
    del big
    assert not list(tmp_path.iterdir())
    assert not isinstance(windows.label_array((5, 5), tmp_path), np.memmap)
