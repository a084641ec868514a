import os

import torch

from nca_cli.inference.octree import predict_logits
from nca_cli.models import checkpoint
from nca_cli.vwsl.inputs import load_unlabeled
from nca_cli.vwsl.targets import (
    cache_dir_for,
    cache_key,
    load_or_compute,
    predict_stats,
)

from .conftest import tiny_model


def test_stats_are_mean_and_variance_of_the_sigmoid_runs():
    model = tiny_model()
    x = torch.rand(1, 1, 16, 20)
    mean, var = predict_stats(model, x, 4)
    runs = torch.stack([torch.sigmoid(predict_logits(model, x, seed=s, impl="torch")[0]) for s in range(4)])
    assert torch.allclose(mean, runs.mean(0), atol=1e-6)
    assert torch.allclose(var, runs.var(0, unbiased=False), atol=1e-7)
    assert var.max() > 0 and var.max() <= 0.25


def test_cache_is_reused_and_invalidated(tmp_path, model_file, unlabeled):
    model, _ = checkpoint.load_model(model_file, require_nca=True)
    items = load_unlabeled(unlabeled, model)
    paths, images = [u.path for u in items], [u.image for u in items]
    folder = cache_dir_for(tmp_path / "out" / "adapted.pt")
    assert folder.name == "adapted.vwsl-cache"

    first = load_or_compute(folder, cache_key(model_file, paths, 3), model, images, 3)
    assert not first.reused and len(first.mean) == 3
    assert first.mean[2].shape == (1, 32, 40)

    # same key: read back without touching the model (None would fail if it were used)
    again = load_or_compute(folder, cache_key(model_file, paths, 3), None, images, 3)
    assert again.reused
    assert all(torch.equal(a, b) for a, b in zip(first.var, again.var))

    # another number of predictions, a touched image, another model: recomputed
    assert not load_or_compute(folder, cache_key(model_file, paths, 4), model, images, 4).reused
    st = paths[0].stat()
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not load_or_compute(folder, cache_key(model_file, paths, 4), model, images, 4).reused
    assert load_or_compute(folder, cache_key(model_file, paths, 4), None, images, 4).reused
    other = tmp_path / "other.pt"
    checkpoint.save_model(other, tiny_model(seed=1), None)
    fresh = load_or_compute(folder, cache_key(other, paths, 4), model, images, 4)
    assert not fresh.reused

    # a damaged cache file is recomputed, not trusted
    (folder / "0001.npz").write_bytes(b"broken")
    assert not load_or_compute(folder, cache_key(other, paths, 4), model, images, 4).reused
    assert sorted(p.name for p in folder.iterdir()) == ["0000.npz", "0001.npz", "0002.npz", "key.json"]
