"""Patient-level train/val/test split: every patient's cases land in exactly one split."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..core.errors import NCAError


def _count(n: int, fraction: float) -> int:
    k = int(round(n * fraction))
    if fraction > 0 and k == 0 and n >= 3:
        k = 1
    return k


def patient_split(case_patients: Mapping[str, str], *, seed: int, val_fraction: float, test_fraction: float,
                  test_cases: Sequence[str] = ()) -> dict:
    """Split case ids by patient.

    ``test_cases``: case ids that must be test cases (with every other case of their patients);
    the fractions then split the remaining patients. Patients are shuffled with
    ``numpy.random.default_rng(seed)``; the first ``round(n * test_fraction)`` go to test, the
    next ``round(n * val_fraction)`` to val, the rest to train (a non-zero fraction gets at least
    one patient once there are three, and train always keeps at least one). Returns ``{seed,
    val_fraction, test_fraction, test_cases, train, val, test}`` with sorted case ids.
    """
    unknown = [c for c in test_cases if c not in case_patients]
    if unknown:
        raise NCAError(f"The test case {unknown[0]!r} is not among the prepared cases ({', '.join(sorted(case_patients)[:5])}"
                       f"{', ...' if len(case_patients) > 5 else ''}); name cases by their ids.")
    fixed = {case_patients[c] for c in test_cases}
    rest = {c: p for c, p in case_patients.items() if p not in fixed}
    if test_cases and not rest:
        raise NCAError("--test-cases names every case, so nothing is left to train on; keep some cases out of it.")
    split = _split(rest, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction if not test_cases else 0.0)
    split["test"] = sorted(split["test"] + [c for c, p in case_patients.items() if p in fixed])
    split["test_fraction"] = float(test_fraction if not test_cases else len(split["test"]) / len(case_patients))
    split["test_cases"] = sorted(test_cases)
    return split


def _split(case_patients: Mapping[str, str], *, seed: int, val_fraction: float, test_fraction: float) -> dict:
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise NCAError(f"The split setting {name}={f} is out of range; use a fraction in [0, 1).")
    if val_fraction + test_fraction >= 1.0:
        raise NCAError(f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves nothing to train on; make their sum below 1.")
    patients = sorted(set(case_patients.values()))
    n = len(patients)
    n_test, n_val = _count(n, test_fraction), _count(n, val_fraction)
    while n_test + n_val >= n and n_test + n_val > 0:
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    order = [patients[i] for i in np.random.default_rng(seed).permutation(n)]
    which = {p: "test" for p in order[:n_test]}
    which.update({p: "val" for p in order[n_test : n_test + n_val]})
    which.update({p: "train" for p in order[n_test + n_val :]})
    split = {"seed": int(seed), "val_fraction": float(val_fraction), "test_fraction": float(test_fraction)}
    for part in ("train", "val", "test"):
        split[part] = sorted(c for c, p in case_patients.items() if which[p] == part)
    return split
