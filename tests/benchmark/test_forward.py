"""The whole-forward benchmark on small inputs: fused and PyTorch passes of real recipes."""
import itertools

import pytest

from nca_cli.benchmark.forward import MODELS, format_markdown, recipe_model, run_forward_benchmark
from nca_cli.recipes import load_recipe


def test_every_task_names_med_nca_or_m3d_nca_recipes():
    for task, cases in MODELS.items():
        for recipe, shape in cases:
            model = load_recipe(recipe)["model"]
            assert model["architecture"] in ("med_nca", "m3d_nca") and len(shape) == model["dims"]


def test_random_weights_change_the_state():
    model = recipe_model("mednca_pathology")
    assert all(bb.fc1.weight.abs().sum() > 0 for bb in model.backbones)


@pytest.mark.slow
def test_small_forward_passes_agree_and_are_reported(monkeypatch):
    from nca_cli.benchmark import forward
    from nca_cli.kernels import fused_available

    if not fused_available("cpu"):
        pytest.skip("the fused kernels cannot be built here")
    # the passes run for real; their seconds are fixed (per recipe and pass: warm-up, then two
    # timed runs), so the fastest and the speed-up are known: 0.3 s fused, 0.9 s PyTorch, 3x
    timed = forward._timed
    seconds = {"fused": itertools.cycle([5.0, 0.3, 0.4]), "torch": itertools.cycle([5.0, 0.9, 1.2])}
    monkeypatch.setattr(forward, "_timed", lambda model, image, impl: (next(seconds[impl]),
                                                                        timed(model, image, impl)[1]))
    result = run_forward_benchmark(shapes={"mednca_pathology": (40, 52), "m3d_radiology_2levels": (8, 24, 20)},
                                   threads=2)
    rows = {r["recipe"]: r for r in result["rows"]}
    assert set(rows) == {"mednca_pathology", "m3d_radiology_2levels"}
    for r in rows.values():
        assert (r["fused_s"], r["torch_s"], r["speedup"]) == pytest.approx((0.3, 0.9, 3.0))
        assert r["max_logit_diff"] < 1e-3 and r["same_mask"] > 0.99
    assert rows["mednca_pathology"]["levels"] == [[40, 52], [10, 13]] and rows["mednca_pathology"]["steps"] == [64, 64]
    text = format_markdown(result)
    assert "| med_nca (mednca_pathology) | 40x52 | 40x52 x 64, k3, 10x13 x 64, k7 |" in text
