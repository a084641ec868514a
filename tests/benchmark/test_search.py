"""The max-size search on simulated measurements (no processes): fit, verify, step down, extrapolate."""
import math

import pytest

from nca_cli.benchmark.geometry import GEOMETRIES
from nca_cli.benchmark.search import SearchSettings, find_max_size
from nca_cli.benchmark.subjects import Subject
from nca_cli.core.errors import NCAError
from nca_cli.inference.memory import usable_budget

MiB = 2 ** 20
GiB = 2 ** 30
BASELINE = 304 * MiB                 # a multiple of search.BASELINE_STEP
OCTREE = Subject("octree_nca", "torch", "float32", {"steps": [10, 10, 20]})


class FakeDevice:
    """Answers measurement specs from a formula for the peak; optionally kills runs over ``ram``."""

    def __init__(self, peak, seconds_per_px=1e-7, ram=None, unavailable=False, full_excess=1.0, crash_px=None,
                 full_slowdown=10.0):
        self.peak = peak
        self.full_slowdown = full_slowdown
        self.crash_px = crash_px
        self.full_excess = full_excess
        self.seconds_per_px = seconds_per_px
        self.ram = ram
        self.unavailable = unavailable
        self.specs = []

    def __call__(self, spec, timeout):
        self.specs.append(spec)
        px = GEOMETRIES[spec["task"]].pixels(spec["size"])
        if self.unavailable:
            return {"ok": False, "unavailable": True, "error": "no kernels", "size": spec["size"]}
        if self.crash_px is not None and px >= self.crash_px:
            return {"ok": False, "error": "crashed with SIGSEGV", "size": spec["size"], "probe": spec["probe"]}
        peak = int(self.peak(px) * (1.0 if spec["probe"] else self.full_excess))
        if self.ram is not None and BASELINE + peak > self.ram:
            return {"ok": False, "oom": True, "error": "killed", "size": spec["size"], "probe": spec["probe"]}
        seconds = 0.01 + px * self.seconds_per_px * (1 if spec["probe"] else self.full_slowdown)
        return {"ok": True, "size": spec["size"], "pixels": px, "probe": spec["probe"], "seconds": seconds,
                "peak_bytes": peak, "peak_abs_bytes": peak + BASELINE, "baseline_bytes": BASELINE}

    def roles(self, role):
        return [s for s in self.specs if s.get("role") == role]


def linear(px):
    return 4 * MiB + 1000 * px


def room(budget):
    """What a pass may add: the budget bounds the whole process, less the memory model's margin."""
    return usable_budget(budget) - BASELINE


def brute_force_side(peak, budget, quantum=1):
    side = quantum
    while peak((side + quantum) ** 2) <= budget:
        side += quantum
    return side


def test_limit_is_verified_by_a_run_and_one_and_a_half_times_does_not_fit():
    dev = FakeDevice(linear)
    budget = 1 * GiB
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=budget, machine_bytes=16 * GiB), measure=dev)
    assert res.verification == "measured"
    assert res.size == brute_force_side(linear, room(budget))
    assert res.peak_at_size <= budget
    assert linear(1.5 * res.size ** 2) > room(budget)
    last = dev.specs[-1]
    assert last["size"] == res.size and last["probe"] is True
    assert res.fit.slope == pytest.approx(1000)
    assert "measured at limit" in res.verified_text
    assert res.seconds_at_size is not None and res.rate > 0
    assert any("probe check" in n for n in res.notes)


def test_full_passes_above_their_probe_shrink_the_limit_by_that_factor():
    budget = 1 * GiB
    dev = FakeDevice(linear, full_excess=1.05)
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=budget, machine_bytes=16 * GiB), measure=dev)
    assert res.verification == "measured"
    assert res.size == brute_force_side(lambda px: 1.05 * linear(px), room(budget))
    assert res.peak_at_size <= budget
    assert "x 1.050 (probe check)" in res.verified_text
    assert any("+5.0%" in n for n in res.notes)
    checks = [s for s in dev.specs if s["probe"] and s["size"] == max(x["size"] for x in dev.specs if not x["probe"])]
    assert checks                                                    # a probe ran at the largest full pass's size


def test_superlinear_memory_makes_the_search_step_down_until_a_run_fits():
    def peak(px):
        return 4 * MiB + 1000 * px + 2e-4 * px ** 2

    dev = FakeDevice(peak)
    budget = 2 * GiB
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=budget, machine_bytes=64 * GiB), measure=dev)
    verifies = [s for s in dev.specs if s["size"] >= res.size and s["probe"]][-2:]
    assert res.verification == "measured"
    assert peak(res.size ** 2) <= room(budget)
    assert len(verifies) == 2 and peak(verifies[0]["size"] ** 2) > room(budget)    # first try was over, then stepped down
    assert res.size >= 0.9 * brute_force_side(peak, room(budget))


def test_budget_beyond_the_machine_is_extrapolated_and_says_so():
    dev = FakeDevice(linear, ram=4 * GiB)
    budget = 24 * GiB
    machine = 3 * GiB
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=budget, machine_bytes=machine), measure=dev)
    assert res.verification == "extrapolated"
    assert "extrapolated from" in res.verified_text and "this machine" in res.verified_text
    assert res.size == brute_force_side(linear, room(budget))
    sizes = [s["size"] for s in dev.specs]
    assert all(BASELINE + linear(s * s) <= machine for s in sizes)
    assert max(sizes) ** 2 > 0.5 * (machine - BASELINE) / 1000       # it verified close to the machine's room


def test_slow_passes_are_extrapolated_with_the_time_cap_named():
    dev = FakeDevice(linear, seconds_per_px=1e-3)
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=GiB, machine_bytes=64 * GiB, verify_seconds=30,
                                                            ladder_seconds=5, timing_seconds=5), measure=dev)
    assert res.verification == "extrapolated"
    assert "longer than 30 s" in res.verified_text
    assert res.size == brute_force_side(linear, room(GiB))
    probe_runs = [s for s in dev.specs if s["probe"]]
    assert max(s["size"] for s in probe_runs) ** 2 * 1e-3 <= 30


def test_unet_sizes_are_multiples_of_its_divisor_and_runs_are_full_passes():
    unet = Subject("unet", "torch", "float32", {"dims": 2}, divisor=16)
    dev = FakeDevice(lambda px: 3000 * px)
    res = find_max_size("pathology", unet, SearchSettings(budget=GiB, machine_bytes=16 * GiB), measure=dev)
    assert res.verification == "measured"
    assert all(s["size"] % 16 == 0 for s in dev.specs)
    assert not any(s["probe"] for s in dev.specs)
    assert res.size == brute_force_side(lambda px: 3000 * px, room(GiB), quantum=16)
    assert res.time_text == "measured at the limit"


def test_surgery_limit_in_frames():
    per_voxel = 40
    dev = FakeDevice(lambda px: 8 * MiB + per_voxel * px)
    budget = 2 * GiB
    res = find_max_size("surgery", OCTREE, SearchSettings(budget=budget, machine_bytes=16 * GiB), measure=dev)
    assert res.size == math.floor((room(budget) - 8 * MiB) / (per_voxel * 240 * 432))
    assert res.value == pytest.approx(res.size / 25)


def test_unavailable_and_too_small_budgets_are_reported():
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=GiB, machine_bytes=GiB),
                        measure=FakeDevice(linear, unavailable=True))
    assert res.verification == "unavailable" and res.size is None
    with pytest.raises(NCAError, match=r"The memory budget 1.0 MiB is below what nca itself takes before any input "
                                       r"\(about 304.0 MiB"):
        find_max_size("pathology", OCTREE, SearchSettings(budget=MiB, machine_bytes=16 * GiB), measure=FakeDevice(linear))
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=BASELINE + 64 * MiB, machine_bytes=16 * GiB),
                        measure=FakeDevice(lambda px: 48 * MiB + 1000 * px))
    assert res.verification == "does-not-fit" and res.size is None
    assert "smallest input" in res.verified_text
    row = res.to_dict()
    assert row["max_size"] is None and row["throughput"] is None


def test_a_crash_bounds_the_size_and_both_limits_are_reported():
    crash_px = 3000 ** 2
    dev = FakeDevice(linear, crash_px=crash_px)
    budget = 16 * GiB                                   # memory alone would allow ~4100x4100
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=budget, machine_bytes=64 * GiB, crash_steps=4),
                        measure=dev)
    assert res.verification == "crash-limited"
    assert res.size ** 2 < crash_px and res.crash["size"] ** 2 >= crash_px
    assert res.size >= 0.7 * 3000                       # the bisection got close to the crash
    assert res.memory_limit == brute_force_side(linear, room(budget))
    assert "crashed with SIGSEGV" in res.verified_text and "memory alone would allow" in res.verified_text
    row = res.to_dict()
    assert row["max_size"] == res.size and row["crash"]["error"] == "crashed with SIGSEGV"
    assert row["memory_limit_value"] == pytest.approx(res.memory_limit ** 2 / 1e6)


@pytest.mark.parametrize("slowdown", [10.0, 2.0])
def test_timing_passes_take_a_while_and_grow_when_the_first_is_quick(slowdown):
    dev = FakeDevice(linear, seconds_per_px=1e-6, full_slowdown=slowdown)
    res = find_max_size("pathology", OCTREE, SearchSettings(budget=8 * GiB, machine_bytes=64 * GiB, timing_seconds=30),
                        measure=dev)
    full = [GEOMETRIES["pathology"].pixels(s["size"]) * 1e-6 * slowdown for s in dev.specs if not s["probe"]]
    assert 10 <= max(full) <= 31                         # the longest full pass took a third to all of 30 s
    assert len(full) == (1 if slowdown == 10.0 else 2)   # the probes' guess (10x) was right / too slow
    largest_full = max(s["size"] for s in dev.specs if not s["probe"])
    want = "measured at the limit" if largest_full == res.size else "scaled from a full pass"
    assert res.time_text.startswith(want)
    assert res.seconds_at_size == pytest.approx(res.size ** 2 * 1e-6 * slowdown, rel=1e-3)


def test_fused_ncas_report_the_memory_models_size_whatever_the_noise():
    """The size `segment` would run in one pass within the budget, the same on every run."""
    import numpy as np

    from nca_cli.core.choices import torch_dtype
    from nca_cli.benchmark.subjects import build_subject_model, task_subjects
    from nca_cli.inference.memory import InputCost, single_pass_bytes

    fused = next(s for s in task_subjects("pathology") if s.is_nca and s.impl == "fused")
    budget = 2 * GiB
    sizes = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        dev = FakeDevice(lambda px: (4 * MiB + 10 * px) * rng.uniform(0.95, 1.05))
        res = find_max_size("pathology", fused, SearchSettings(budget=budget, machine_bytes=16 * GiB), measure=dev)
        assert res.verification == "measured" and res.peak_at_size <= budget
        sizes.append(res.size)
    assert sizes[0] == sizes[1]
    model = build_subject_model(fused)

    def need(side):
        return single_pass_bytes(model, (side, side), dtype=torch_dtype(fused.state_dtype), impl="fused",
                                 cost=InputCost(3)) + BASELINE

    q = max(1, fused.divisor)
    assert need(sizes[0]) <= usable_budget(budget) < need(sizes[0] + q)
