"""Writing a prepared dataset: built in ``<dst>.partial-XXXX`` and renamed onto ``dst`` at the end.

On any error the partial folder is removed, so ``dst`` is either untouched or complete.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import yaml

from ..core import signals
from ..core.errors import NCAError
from ..core.files import write_failure
from .dataset import DATASET_KINDS, FORMAT_VERSION, LABEL_ENCODINGS, MANIFEST
from .split import patient_split

INFO_KEYS = ("name", "kind", "modality", "classes", "spacing", "spacing_unit", "normalization")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def safe_id(text: str) -> str:
    """A case id usable as a file name (runs of other characters become ``_``)."""
    cleaned = _SAFE_ID.sub("_", text).strip("._")
    if not cleaned:
        raise NCAError(f"Cannot make a case id from {text!r}; rename the source file.")
    return cleaned


def _plain(value):
    """Numpy scalars and tuples to plain Python for ``yaml.safe_dump``."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


class DatasetWriter:
    """Context manager collecting cases into a partial folder, then publishing it.

    ``root`` is the partial folder while building. Call ``set_info`` with the dataset
    fields and ``add_case``/``create_case`` per case; on a clean exit the patient split is
    drawn, ``dataset.yaml`` written and the folder renamed onto ``dst``. ``dst`` must be
    absent or empty, or (with ``overwrite``) an earlier prepared dataset.
    """

    def __init__(self, dst: str | Path, *, overwrite: bool = False, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.2, test_cases=()):
        self.dst = Path(dst)
        self.overwrite = overwrite
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.test_cases = list(test_cases or ())
        self.notes: list[str] = []   # what a user should know about the result (e.g. no validation cases)
        self.info: dict = {"synthetic": False, "label_encoding": "index"}
        self.cases: dict[str, dict] = {}
        self._open: list[np.memmap] = []
        self.root: Path | None = None
        self.on_case = None   # called with (case id, cases so far) as each case is added

    def __enter__(self) -> "DatasetWriter":
        dst = self.dst
        if dst.exists():
            if not dst.is_dir():
                raise NCAError(f"The output {dst} is a file; choose a folder path for the prepared dataset.")
            if any(dst.iterdir()):
                if not self.overwrite:
                    raise NCAError(f"The output folder {dst} is not empty; choose a new folder or pass overwrite to replace it.")
                if not (dst / MANIFEST).is_file():
                    raise NCAError(f"The output folder {dst} is not a prepared dataset (no {MANIFEST}); refusing to replace it, choose another folder.")
        parent = dst.parent if str(dst.parent) else Path(".")
        root = None
        try:
            with signals.deferred():   # a signal meanwhile stops once the folder is known
                parent.mkdir(parents=True, exist_ok=True)
                root = Path(tempfile.mkdtemp(prefix=f"{dst.name}.partial-", dir=parent))
            (root / "images").mkdir()
            (root / "labels").mkdir()
        except BaseException as exc:   # __exit__ runs only once __enter__ has returned
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)
            if isinstance(exc, OSError):
                raise NCAError(f"Cannot create the output folder {dst} ({exc.strerror}); choose a writable "
                               f"location.") from None
            raise
        self.root = root
        return self

    def set_info(self, **fields) -> None:
        """Set manifest fields (``name``, ``kind``, ``modality``, ``classes``, ``spacing``, ...)."""
        self.info.update(fields)

    def _register(self, case_id: str, patient: str, spatial: tuple[int, ...], channels: int, dtype: np.dtype, extra: dict) -> dict:
        if case_id != safe_id(case_id):
            raise ValueError(f"case id {case_id!r} is not file-name safe; pass it through safe_id")
        if case_id in self.cases:
            raise NCAError(f"Two source cases map to the id {case_id!r}; rename one of them.")
        case = {
            "id": case_id,
            "patient": str(patient),
            "image": f"images/{case_id}.npy",
            "label": f"labels/{case_id}.npy",
            "shape": [int(s) for s in spatial],
            "_channels": int(channels),
            "_dtype": np.dtype(dtype).name,
            **extra,
        }
        self.cases[case_id] = case
        if self.on_case is not None:
            self.on_case(case_id, len(self.cases))
        return case

    def add_case(self, case_id: str, patient: str, image: np.ndarray, label: np.ndarray, **extra) -> None:
        """Store one case: ``image`` [*spatial, C], ``label`` uint8 [*spatial]."""
        if image.shape[:-1] != label.shape:
            raise ValueError(f"case {case_id}: image {image.shape} and label {label.shape} disagree")
        if label.dtype != np.uint8:
            raise ValueError(f"case {case_id}: label must be uint8, got {label.dtype}")
        case = self._register(case_id, patient, label.shape, image.shape[-1], image.dtype, extra)
        for key, array in (("image", image), ("label", label)):
            try:
                np.save(self.root / case[key], np.ascontiguousarray(array))
            except OSError as exc:
                raise write_failure(self.dst, exc) from None

    def create_case(self, case_id: str, patient: str, spatial: tuple[int, ...], channels: int, dtype, **extra) -> tuple[np.memmap, np.memmap]:
        """Allocate one case on disk and return writable memmaps (image, label) to fill."""
        case = self._register(case_id, patient, tuple(spatial), channels, dtype, extra)
        image = np.lib.format.open_memmap(self.root / case["image"], mode="w+", dtype=dtype, shape=(*spatial, channels))
        label = np.lib.format.open_memmap(self.root / case["label"], mode="w+", dtype=np.uint8, shape=tuple(spatial))
        self._open += [image, label]
        return image, label

    def relabel(self, mapping: np.ndarray) -> None:
        """Rewrite every stored label through a 256-entry lookup table."""
        for case in self.cases.values():
            path = self.root / case["label"]
            label = np.load(path, mmap_mode="r+")
            for k in range(0, label.shape[0], 16):
                label[k : k + 16] = mapping[label[k : k + 16]]
            label.flush()
            del label

    def _manifest(self) -> dict:
        info = self.info
        missing = [k for k in INFO_KEYS if k not in info]
        if missing:
            raise ValueError(f"dataset info lacks {missing}")
        if info["kind"] not in DATASET_KINDS or info["label_encoding"] not in LABEL_ENCODINGS:
            raise ValueError(f"bad kind/label_encoding {info['kind']!r}/{info['label_encoding']!r}")
        if not self.cases:
            raise NCAError(f"No cases were found for {self.dst}; check the source folder and its layout.")
        cases = [self.cases[k] for k in sorted(self.cases)]
        dims = {len(c["shape"]) for c in cases}
        channels = {c["_channels"] for c in cases}
        if len(dims) > 1 or len(channels) > 1:
            first = cases[0]
            odd = next(c for c in cases if len(c["shape"]) != len(first["shape"]) or c["_channels"] != first["_channels"])
            raise NCAError(
                f"Case {odd['id']} has {len(odd['shape'])}D data with {odd['_channels']} channel(s) but case {first['id']} has "
                f"{len(first['shape'])}D with {first['_channels']}; all cases of a dataset must match."
            )
        split = patient_split({c["id"]: c["patient"] for c in cases}, seed=self.seed, val_fraction=self.val_fraction,
                              test_fraction=self.test_fraction, test_cases=self.test_cases)
        if not split["val"]:
            self.notes.append(f"{len(cases)} case(s) give no validation case, so `nca train` will not validate "
                              f"(no best.pt; model.pt is saved every training.save_every epochs)")
        if not split["test"]:
            self.notes.append("no test case was set aside")
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": info["name"],
            "synthetic": bool(info["synthetic"]),
            "kind": info["kind"],
            "modality": info["modality"],
            "dims": dims.pop(),
            "channels": channels.pop(),
            "classes": list(info["classes"]),
            "label_encoding": info["label_encoding"],
            "spacing": [float(s) for s in info["spacing"]],
            "spacing_unit": info["spacing_unit"],
            "normalization": info["normalization"],
            "split": split,
            "cases": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases],
        }
        for key, value in info.items():
            manifest.setdefault(key, value)
        return _plain(manifest)

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            for array in self._open:
                array.flush()
            self._open.clear()
            if exc_type is None:
                manifest = self._manifest()
                with open(self.root / MANIFEST, "w") as f:
                    yaml.safe_dump(manifest, f, sort_keys=False)
                self._publish()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        if exc_type is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        return False

    def _publish(self) -> None:
        dst = self.dst
        old = None
        if dst.exists():
            if any(dst.iterdir()):
                old = Path(tempfile.mkdtemp(prefix=f"{dst.name}.partial-old-", dir=self.root.parent))
                old.rmdir()
                os.replace(dst, old)
            else:
                dst.rmdir()
        try:
            os.replace(self.root, dst)
        except OSError as exc:
            if old is not None:
                os.replace(old, dst)
            raise NCAError(f"Cannot move the prepared dataset into {dst} ({exc.strerror}); choose another output folder.") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
