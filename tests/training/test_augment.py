"""Augmentation changes intensities only: the image keeps its geometry, so the labels, which
are never passed through it, stay right."""
import torch

from nca_cli.training.augment import augment

ALL = {"brightness": 1.0, "contrast": 1.0, "blur": 1.0, "low_resolution": 1.0, "noise": 1.0}


def disk(size=40, dims=2):
    axes = torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * dims, indexing="ij")
    r2 = sum((a - 17.0) ** 2 for a in axes)
    return (r2 <= 64).float()


def centroid(weights):
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in weights.shape], indexing="ij")
    return torch.stack([(a * weights).sum() / weights.sum() for a in axes])


def test_intensity_transforms_keep_the_structure_in_place():
    for dims in (2, 3):
        mask = disk(24 if dims == 3 else 40, dims)
        x = (0.2 + 0.6 * mask)[None, None].repeat(2, 3, *[1] * dims)
        for seed in range(5):
            out = augment(x, ALL, torch.Generator().manual_seed(seed))
            assert out.shape == x.shape and not torch.equal(out, x)
            for b in range(2):
                for c in range(3):
                    img = out[b, c]
                    middle = (img[mask > 0].mean() + img[mask == 0].mean()) / 2
                    assert torch.allclose(centroid((img > middle).float()), centroid(mask), atol=0.5)


def test_brightness_and_contrast_keep_every_pixel_on_its_side():
    mask = disk()
    x = (0.2 + 0.6 * mask)[None, None]
    out = augment(x, {"brightness": 1.0, "contrast": 1.0}, torch.Generator().manual_seed(1))
    assert not torch.equal(out, x)
    assert torch.equal(out[0, 0] > out.mean(), mask.bool())


def test_training_batches_carry_the_same_labels_with_and_without_augmentation(tmp_path):
    from pathlib import Path

    from nca_cli.data.dataset import PreparedDataset
    from nca_cli.data.prepare import prepare
    from nca_cli.models.registry import build_model
    from nca_cli.recipes import load_recipe
    from nca_cli.training.steps import training_step

    data = prepare("synthetic", None, tmp_path / "data", kind="pathology", cases=4, size=192, seed=0)
    root = Path(__file__).resolve().parents[2] / "recipes" / "octree_pathology.yaml"
    batches = []
    for chance in (0.0, 1.0):                              # no augmentation, then every augmentation
        recipe = load_recipe(root, [f"data.dataset={data}", "data.patch=[48,48]", "data.batch_size=2",
                                    "data.require_foreground=true",
                                    *(f"training.augmentation.{name}={chance}" for name in ALL)])
        assert all(getattr(recipe.training.augmentation, name) == chance for name in ALL)
        step = training_step(build_model(recipe.model), recipe, PreparedDataset(data, "train"))
        batches.append(step.batch(torch.Generator().manual_seed(3)))
    (x0, y0), (x1, y1) = batches
    assert torch.equal(y0, y1) and y0.sum() > 0          # the same label pixels
    assert x0.shape == x1.shape and not torch.equal(x0, x1)
