import math

import pytest
import torch
import torch.nn.functional as F

from nca_cli.training.losses import soft_dice
from nca_cli.vwsl.loss import (
    consistency_l1,
    variance_weight,
    vwsl_loss,
    weighted_dice_loss,
    weighted_focal_loss,
)

LOG3 = math.log(3.0)  # sigmoid(log 3) = 0.75


def _pair():
    logits = torch.tensor([LOG3, 0.0]).reshape(1, 1, 1, 2)   # p = 0.75, 0.5
    target = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    weight = torch.tensor([1.0, 0.5]).reshape(1, 1, 1, 2)
    return logits, target, weight


def test_weight_from_variance():
    var = torch.tensor([0.0, 0.1, 0.25])
    assert torch.allclose(variance_weight(var), torch.tensor([1.0, 0.8, 0.5]))


def test_weighted_dice_by_hand():
    logits, target, weight = _pair()
    # inter = 1*0.75*1 = 0.75; sum(w p) = 0.75 + 0.25 = 1; sum(w t) = 1 -> Dice = (1.5 + 1) / (2 + 1)
    assert weighted_dice_loss(logits, target, weight).item() == pytest.approx(1 - 2.5 / 3, abs=1e-6)


def test_weighted_dice_is_per_sample_and_class_mean():
    logits = torch.zeros(2, 2, 3, 3)
    target = torch.zeros(2, 2, 3, 3)
    target[0, 0] = 1.0
    w = torch.ones_like(target)
    expected = 1 - soft_dice(torch.sigmoid(logits), target).item()
    assert weighted_dice_loss(logits, target, w).item() == pytest.approx(expected, abs=1e-6)


def test_weighted_focal_by_hand():
    logits, target, weight = _pair()
    fl_pos = -(0.25 ** 2) * math.log(0.75)     # p = 0.75, t = 1
    fl_neg = -(0.5 ** 2) * math.log(0.5)       # p = 0.5,  t = 0
    expected = (1.0 * fl_pos + 0.5 * fl_neg) / 2
    assert weighted_focal_loss(logits, target, weight, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_focal_with_gamma_zero_is_bce_and_soft_targets_work():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 5, 5, generator=g) * 3
    target = torch.rand(2, 1, 5, 5, generator=g)
    ones = torch.ones_like(target)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    assert weighted_focal_loss(logits, target, ones, gamma=0.0).item() == pytest.approx(bce.item(), rel=1e-5)
    # focusing down-weights easy pixels: with gamma 2 the loss is smaller
    assert weighted_focal_loss(logits, target, ones, gamma=2.0) < bce


def test_focal_is_stable_for_large_logits():
    logits = torch.tensor([60.0, -60.0]).reshape(1, 1, 1, 2)
    target = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    v = weighted_focal_loss(logits, target, torch.ones_like(target))
    assert torch.isfinite(v) and v.item() == pytest.approx(60.0, rel=1e-3)


def test_consistency_l1_over_levels():
    a = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    b = [torch.full((1, 1, 2, 2), LOG3), torch.zeros(1, 1, 1, 1)]
    # level 0: |0.5 - 0.75| = 0.25 everywhere; level 1: 0 -> mean over levels 0.125
    assert consistency_l1(a, b).item() == pytest.approx(0.125, abs=1e-6)
    assert consistency_l1(a, a).item() == 0.0
    with pytest.raises(ValueError):
        consistency_l1(a, b[:1])


def test_gamma_is_divided_by_the_pixels_of_one_sample():
    logits, target, weight = _pair()
    var = (1 - weight) / 2
    a, b = [logits], [torch.zeros_like(logits)]
    base = vwsl_loss(logits, target, var, a, b, gamma=0.0)
    pixels = logits[0, 0].numel()
    with_gamma = vwsl_loss(logits, target, var, a, b, gamma=1e3)
    assert with_gamma["loss"].item() == pytest.approx(base["loss"].item() + 1e3 / pixels * base["l1"].item(), rel=1e-6)


def test_gamma_zero_leaves_the_weighted_terms():
    logits, target, weight = _pair()
    var = (1 - weight) / 2
    a = [logits, torch.zeros(1, 1, 1, 1)]
    b = [torch.zeros_like(logits), torch.ones(1, 1, 1, 1)]
    parts = vwsl_loss(logits, target, var, a, b, gamma=0.0)
    expected = weighted_dice_loss(logits, target, weight) + weighted_focal_loss(logits, target, weight)
    assert parts["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    assert parts["l1"].item() > 0
    with_gamma = vwsl_loss(logits, target, var, a, b, gamma=1e3)
    pixels = logits[0, 0].numel()
    assert with_gamma["loss"].item() == pytest.approx(expected.item() + 1e3 / pixels * parts["l1"].item(), rel=1e-6)


def test_zero_variance_is_plain_dice_plus_focal():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 6, 6, generator=g, requires_grad=True)
    target = (torch.rand(2, 1, 6, 6, generator=g) > 0.5).float()
    var = torch.zeros_like(target)
    parts = vwsl_loss(logits, target, var, [logits], [logits], gamma=1e3)
    p = torch.sigmoid(logits)
    dice = 1 - soft_dice(p, target)
    p_t = torch.where(target > 0, p, 1 - p)
    focal = (-(1 - p_t) ** 2 * torch.log(p_t)).mean()
    assert parts["l1"].item() == 0.0
    assert parts["loss"].item() == pytest.approx((dice + focal).item(), rel=1e-5)
    parts["loss"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
