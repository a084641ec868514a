from pathlib import Path

import numpy as np
import pytest


def no_leftovers(folder: Path, name: str) -> bool:
    """True when nothing named ``name`` or ``name.partial-*`` exists in ``folder``."""
    return not (folder / name).exists() and not list(folder.glob(f"{name}.partial-*"))


def assert_patient_split(manifest: dict) -> None:
    """Every case in exactly one split, and no patient in two splits."""
    patient = {c["id"]: c["patient"] for c in manifest["cases"]}
    split = manifest["split"]
    seen = [i for part in ("train", "val", "test") for i in split[part]]
    assert sorted(seen) == sorted(patient)
    owners = {}
    for part in ("train", "val", "test"):
        for case_id in split[part]:
            assert owners.setdefault(patient[case_id], part) == part, f"patient {patient[case_id]} in two splits"


@pytest.fixture
def np_rng():
    return np.random.default_rng(0)
