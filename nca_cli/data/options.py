"""Every option of ``nca prepare``, declared once (the CLI builds its flags from this class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.options import option


@dataclass(kw_only=True)
class PrepareOptions:
    kind: str = option(..., argument=True, help="msd-prostate, peso, cholecseg8k, chexmask, generic or synthetic.")
    src: Path | None = option(None, argument=True, help="Source folder in the dataset's own layout (not for synthetic).")
    output: Path = option(..., "-o", "--output", help="Prepared dataset folder to create.")
    synthetic_kind: str = option("pathology", "--kind",
                                 help="synthetic only: pathology, radiology, surgery, xray or microct.")
    cases: int | None = option(None, "--cases", min=1, help="synthetic only: number of cases (default per kind).")
    size: int | None = option(None, "--size", min=16, help="synthetic only: slide/image side (default per kind).")
    shifted: bool = option(False, "--shifted",
                           help="synthetic xray and pathology only: the shifted target domain (other patients, each "
                                "image a phone photo of a monitor: washed-out tone, tilt, glare, moiré, blur, noise).")
    seed: int = option(0, "--seed", help="Seed of the train/val/test split (and of synthetic data).")
    classes: str | None = option(None, "--classes", help="generic only: comma-separated class names.")
    binary: bool = option(False, "--binary",
                          help="generic only: merge every non-zero label into one foreground class "
                               "(instance masks: one id per object).")
    mpp: float | None = option(None, "--mpp", min=0.0,
                               help="generic only: the images' resolution in µm/px (default: the first image's own, "
                                    "when it records one); recorded in dataset.yaml and in the trained model.pt.")
    val_fraction: float = option(0.1, "--val-fraction", min=0.0, max=0.99, help="Share of patients for validation.")
    test_fraction: float = option(0.2, "--test-fraction", min=0.0, max=0.99,
                                  help="Share of patients held out for testing.")
    test_cases: str | None = option(None, "--test-cases",
                                    help="Comma-separated case ids to hold out for testing (instead of "
                                         "--test-fraction).")
    skip_unlabeled: bool = option(False, "--skip-unlabeled",
                                  help="generic only: leave out images without a mask (named in a note) "
                                       "instead of refusing them.")
    overwrite: bool = option(False, "--overwrite", help="Replace an existing output folder.")
    quiet: bool = option(False, "-q", "--quiet", help="No progress display.")

    # Converter switches passed on only when given, so a kind that does not take one refuses it.
    CONVERTER_SWITCHES = ("binary", "skip_unlabeled", "mpp")
