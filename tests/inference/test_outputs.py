"""Prediction outputs against hand-computed answers: labels and masks of hand-made logits, the
statistics of a three-run ensemble, Dice of hand-made masks, the case-scoring loop."""
import math

import numpy as np
import pytest
import torch

from nca_cli.inference import outputs
from nca_cli.inference.outputs import (
    DiceCounts,
    Ensemble,
    dice_score,
    finish_segmentation,
    labels_of,
    masks_of,
    mean_dice,
    whole,
)

LN3, LN9 = math.log(3), math.log(9)   # sigmoid: 0.75 and 0.9 (their negatives: 0.25 and 0.1)


def test_labels_of_sigmoid_logits_take_the_largest_positive_class():
    # channels last, 4 cells x 3 classes
    logits = torch.tensor([[-1.0, 2.0, 1.0],     # class 2 (largest, positive)
                           [-1.0, -2.0, -0.5],   # none positive: background
                           [3.0, 0.1, 2.9],      # class 1
                           [-1.0, 0.5, 4.0]])    # class 3
    assert labels_of(logits).tolist() == [2, 0, 1, 3]
    assert labels_of(logits).dtype == torch.uint8
    one = torch.tensor([[-0.1], [0.0], [0.2]])
    assert labels_of(one).tolist() == [0, 0, 1]          # one class: logit > 0, 0 is background


def test_labels_of_softmax_logits_take_the_argmax_with_channel_0_background():
    logits = torch.tensor([[-1.0, 2.0, 0.5], [-2.0, 1.0, 3.0]])   # [K=2, 3 cells], classes first
    assert labels_of(logits, softmax=False, axis=0).tolist() == [0, 1, 2]
    assert labels_of(logits, softmax=True, axis=0).tolist() == [0, 0, 1]
    soft3 = torch.tensor([[5.0, 0.0, -1.0], [1.0, 2.0, -3.0], [0.0, -1.0, 2.0]])  # cells x K=3
    assert labels_of(soft3, softmax=True).tolist() == [0, 1, 2]


def test_masks_of_sigmoid_and_softmax_logits():
    logits = torch.tensor([[[-1.0, 2.0, 0.5]], [[-2.0, 1.0, 3.0]]]).permute(1, 0, 2)   # [B=1, K=2, 3]
    assert masks_of(logits).tolist() == [[[False, True, True], [False, True, True]]]
    assert masks_of(logits, softmax=True).tolist() == [[[False, False, True]]]      # background dropped
    assert masks_of(logits[0], softmax=True, axis=0).tolist() == [[False, False, True]]


def three_runs() -> torch.Tensor:
    """Three runs of 3 cells (one class, channels last): ``[runs, cells, 1]``."""
    cells = torch.tensor([[0.0, LN3, -LN3],     # rows: cells, columns: runs
                          [LN3, LN3, LN9],
                          [-LN3, -LN9, 0.0]])
    return cells.T.reshape(3, 3, 1).contiguous()
    # cell 0: logits 0, ln3, -ln3 -> p 0.5, 0.75, 0.25; cell 1: ln3, ln3, ln9 -> 0.75, 0.75, 0.9;
    # cell 2: -ln3, -ln9, 0 -> 0.25, 0.1, 0.5


MEAN = [0.5, 0.8, 0.85 / 3]
VAR = [0.125 / 3, 0.005, ((0.25 - 0.85 / 3) ** 2 + (0.1 - 0.85 / 3) ** 2 + (0.5 - 0.85 / 3) ** 2) / 3]


def test_ensemble_statistics_of_three_runs():
    runs = three_runs()
    ens = Ensemble(3, (3, 1), dtype=torch.float32)
    for k in range(3):
        ens.add(k, (), runs[k])
    stats = ens.whole()
    assert stats.median()[:, 0].tolist() == pytest.approx([0.0, LN3, -LN3])
    assert stats.mean()[:, 0].tolist() == pytest.approx(MEAN, abs=1e-6)
    assert stats.var()[:, 0].tolist() == pytest.approx(VAR, abs=1e-6)
    assert stats.std()[:, 0].tolist() == pytest.approx([math.sqrt(v) for v in VAR], abs=1e-6)


def test_ensemble_median_of_an_even_count_is_the_lower_middle():
    ens = Ensemble(4, (1,), dtype=torch.float32)
    for k, v in enumerate([2.0, -1.0, 3.0, -2.0]):    # sorted -2, -1, 2, 3: lower middle -1
        ens.add(k, (), torch.tensor([v]))
    assert ens.whole().median().tolist() == [-1.0]


def test_finish_segmentation_labels_std_and_nqm_band_by_band(monkeypatch):
    monkeypatch.setattr(outputs, "BAND_VALUES", 1)    # one row per band
    runs = three_runs()
    ens = Ensemble(3, (3, 1), dtype=torch.float16, device="cpu")
    for k in range(3):                                 # added in two regions, as tiles are
        ens.add(k, (slice(0, 2),), runs[k, :2])
        ens.add(k, (slice(2, 3),), runs[k, 2:])
    assert ens.band_rows() == 1
    labels = np.full(3, 7, np.uint8)
    std, nqm = finish_segmentation(ens, labels, want_std=True)
    assert labels.tolist() == [0, 1, 0]                # medians 0, ln3, -ln3
    assert std.tolist() == pytest.approx([math.sqrt(v) for v in VAR], abs=2e-4)   # float16 logits
    assert nqm == pytest.approx(math.sqrt(0.005) / 0.8, abs=5e-4)   # foreground: cell 1 only
    assert finish_segmentation(ens, labels, want_std=False)[0] is None


def test_finish_segmentation_takes_the_largest_class_std_and_sums_classes_for_nqm():
    # one cell, two classes: class 1 the three runs of cell 1 above, class 2 those of cell 0
    runs = torch.tensor([[LN3, 0.0], [LN3, LN3], [LN9, -LN3]]).reshape(3, 1, 2)
    ens = Ensemble(3, (1, 2), dtype=torch.float32)
    for k in range(3):
        ens.add(k, (), runs[k])
    labels = np.zeros(1, np.uint8)
    std, nqm = finish_segmentation(ens, labels, want_std=True)
    assert labels.tolist() == [1]                      # medians ln3 and 0: class 1
    assert std.tolist() == pytest.approx([math.sqrt(0.125 / 3)], abs=1e-6)
    assert nqm == pytest.approx((math.sqrt(0.005) + math.sqrt(0.125 / 3)) / (0.8 + 0.5), abs=1e-6)


def test_dice_of_hand_made_masks():
    mask = torch.tensor([[[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]]).bool()   # [B=1, K=4, 4]
    target = torch.tensor([[[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]]]).bool()
    # 2·1/(2+2); empty-empty: 1; predicted but absent: 0; 2·3/(4+3)
    assert dice_score(mask, target).tolist() == pytest.approx([0.5, 1.0, 0.0, 6 / 7])
    # counted over the batch, not averaged per sample: 2·(1+0)/(2+2+1+0)
    two = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 1]]]).bool()
    assert dice_score(two, torch.tensor([[[1, 0, 1, 0]], [[0, 0, 0, 0]]])).tolist() == pytest.approx([0.4])


def test_dice_counts_band_by_band_equal_the_whole():
    g = torch.Generator().manual_seed(0)
    mask, target = torch.rand(2, 3, 10, 6, generator=g) > 0.5, torch.rand(2, 3, 10, 6, generator=g) > 0.4
    counts = DiceCounts()
    for r0 in range(0, 10, 3):
        counts.add(mask[:, :, r0:r0 + 3], target[:, :, r0:r0 + 3])
    assert torch.equal(counts.score(), dice_score(mask, target))


def test_mean_dice_over_cases():
    a = (torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]), torch.tensor([[[1.0, 0.0, 1.0, 0.0]]]))   # Dice 0.5
    b = (torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]))   # Dice 1
    assert mean_dice([a, b], whole(lambda x: x > 0)) == pytest.approx(0.75)
    assert math.isnan(mean_dice([], whole(lambda x: x > 0)))
