"""Every option of ``nca train``, declared once (the CLI builds its flags from this class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.choices import IMPLS
from ..core.options import device_option, option


@dataclass(kw_only=True)
class TrainOptions:
    recipe: str = option(..., argument=True,
                         help="Recipe YAML, or the name of a shipped recipe (e.g. octree_pathology).")
    output: Path | None = option(None, "-o", "--output", help="Run folder (default: runs/<recipe name>).")
    resume: bool = option(False, "--resume", "--continue",
                          help="Continue the run in the run folder, with the recipe recorded there.")
    device: str = device_option()
    epochs: int | None = option(None, "--epochs", min=1, help="Override training.epochs.")
    overrides: list[str] = option([], "--set", help="Override a recipe key: section.key=value (repeatable).")
    impl: str = option("auto", "--impl", choices=IMPLS, help="Inference path used for validation.")
    dry_run: bool = option(False, "--dry-run",
                           help="Validate the recipe (and its dataset, when present), build the model, print its "
                                "summary.")
    as_json: bool = option(False, "--json", help="With --dry-run: print the summary as JSON.")
    quiet: bool = option(False, "-q", "--quiet", help="No progress display.")
