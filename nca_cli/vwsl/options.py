"""Every option of ``nca finetune-vwsl``, declared once (the CLI builds its flags from this class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.options import device_option, option


@dataclass(kw_only=True)
class FinetuneOptions:
    unlabeled: Path = option(..., argument=True, help="Folder (or file) of unlabeled target-domain images.")
    model: Path = option(..., "-m", "--model", help="model.pt of a trained NCA.")
    output: Path = option(..., "-o", "--output", help="Adapted checkpoint to write (e.g. adapted.pt).")
    recipe: str | None = option(None, "--recipe", help="Recipe whose vwsl section to use (default: the model's).")
    epochs: int | None = option(None, "--epochs", min=1, help="Fine-tuning epochs (default: the recipe's vwsl.epochs, 100).")
    gamma: float | None = option(None, "--gamma", min=0.0,
                                 help="Weight of the L1 consistency term between two runs, on the paper's scale: the loss adds "
                                      "gamma / N * mean|p1 - p2|, N the pixels of the output (default: the recipe's "
                                      "vwsl.gamma, 1e3).")
    predictions: int | None = option(None, "--predictions", min=2, help="Stochastic predictions per image (default 10).")
    holdout: float = option(0.2, "--holdout", min=0.0, max=0.5,
                            help="Fraction of the unlabeled images kept out of training to choose the epoch by their "
                                 "VWSL objective (5 or more images; fewer: chosen on the training images).")
    select: str = option("best", "--select", choices=("best", "last"),
                         help="best: keep the epoch (or the starting model) with the lowest held-out VWSL objective; "
                              "last: the last epoch.")
    eval_dir: Path | None = option(None, "--eval-dir",
                                   help="Prepared dataset (or images/ + masks/) of labeled target data.")
    device: str = device_option()
    seed: int | None = option(None, "--seed", help="Seed (default: the recipe's vwsl.seed).")
    quiet: bool = option(False, "-q", "--quiet", help="No progress display.")
