"""Source dataset folders: where a converter looks, and which files it sees."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import NCAError


def source_dir(src, layout: str) -> Path:
    """``src`` as an existing folder; ``layout`` describes what it should hold, for errors."""
    if src is None:
        raise NCAError(f"No source folder was given; pass the folder holding {layout}.")
    path = Path(src).expanduser()
    if not path.exists():
        raise NCAError(f"The source folder {path} does not exist; pass the folder holding {layout}.")
    if not path.is_dir():
        raise NCAError(f"The source {path} is not a folder; pass the folder holding {layout}.")
    return path


def visible_files(folder: Path, pattern: str = "*", recursive: bool = False) -> list[Path]:
    """Regular files matching ``pattern``, sorted, skipping hidden ones (``.x``, macOS ``._x``,
    ``__MACOSX/``)."""
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return sorted(
        p
        for p in found
        if p.is_file() and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)
    )
