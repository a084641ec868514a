"""Real measurements in fresh processes: a tiny OctreeNCA on its PyTorch path and a tiny budget."""
import pytest

from nca_cli.benchmark.geometry import GEOMETRIES
from nca_cli.benchmark.measure import make_spec, run_measurement
from nca_cli.benchmark.search import SearchSettings, find_max_size
from nca_cli.benchmark.subjects import Subject, build_subject_model
from nca_cli.inference.memory import usable_budget

MiB = 2 ** 20
TINY = {"architecture": "octree_nca", "dims": 2, "input_channels": 3, "output_channels": 1, "levels": 3,
        "steps": [2, 2, 4], "channels": 16, "hidden": 64}
SUBJECT = Subject("octree_nca", "torch", "float32", TINY)


def test_random_weights_are_fixed_and_probe_keeps_the_model():
    a = build_subject_model(SUBJECT, seed=3)
    b = build_subject_model(SUBJECT, seed=3, probe=True)
    assert all(bb.fc1.weight.abs().sum() > 0 for bb in a.backbones)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert (pa == pb).all()
    assert a.config.steps == [2, 2, 4] and b.config.steps == [2, 2, 2]


def test_one_measurement_reports_memory_attributable_to_the_pass():
    small = run_measurement(make_spec("pathology", SUBJECT, 128, probe=False, device="cpu"), timeout=120)
    big = run_measurement(make_spec("pathology", SUBJECT, 256, probe=False, device="cpu"), timeout=120)
    assert small["ok"] and big["ok"], (small, big)
    assert small["pixels"] == 128 * 128 and small["shape"] == [128, 128] and small["steps"] == [2, 2, 4]
    # a float32 16-channel state alone is 64 B/px; the PyTorch step needs several of them
    for r in (small, big):
        assert 64 * r["pixels"] < r["peak_bytes"] < 5000 * r["pixels"]
    assert big["peak_bytes"] > 2 * small["peak_bytes"]                  # 4x the pixels
    assert 0.0 <= small["foreground_fraction"] <= 1.0


KNOWN_PASS = """
import numpy as np
from nca_cli.benchmark import measure

def known(model, subject, geometry, shape, device, dtype, seed):
    block = np.ones(int(np.prod(shape)) * 400, np.uint8)   # 400 bytes per pixel, every page touched
    return 0.25, float(block[-1]) / 2

measure._pass_torch = known
measure.main()
"""


def test_measurement_reports_the_bytes_the_pass_allocates():
    """A pass that allocates exactly 400 bytes per pixel (100 MiB at 512x512; the warm-up pass
    allocates 400 B/px of a much smaller input before the baseline): the measured peak above the
    baseline is those bytes, give or take the interpreter's small change, never the warm-up's
    or the model's."""
    import json
    import os
    import subprocess
    import sys

    from nca_cli.benchmark.measure import RESULT_TAG

    spec = make_spec("pathology", SUBJECT, 512, probe=False, device="cpu")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KNOWN_PASS], input=json.dumps(spec), capture_output=True, text=True,
                          timeout=120, env=env)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    r = json.loads(line[len(RESULT_TAG):])
    assert r["ok"], r
    known = 512 * 512 * 400
    assert 0.99 * known <= r["peak_bytes"] <= known + 4 * MiB, (r["peak_bytes"], r["meter"])
    assert r["peak_abs_bytes"] - r["baseline_bytes"] == r["peak_bytes"] and r["baseline_bytes"] > 50 * MiB
    assert (r["seconds"], r["foreground_fraction"], r["pixels"]) == (0.25, 0.5, 512 * 512)


def test_failed_measurement_is_reported_not_raised():
    broken = Subject("octree_nca", "torch", "float32", {**TINY, "levels": 2})   # steps no longer match levels
    r = run_measurement(make_spec("pathology", broken, 64, probe=False, device="cpu"), timeout=120)
    assert r["ok"] is False and "steps" in r["error"]


@pytest.mark.slow
def test_search_finds_a_size_that_fits_and_one_and_a_half_times_that_does_not(monkeypatch):
    # a fixed mmap threshold makes glibc return every freed tensor at once, so peaks of these
    # small passes do not depend on what earlier allocations left in the heap
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    own = run_measurement(make_spec("pathology", SUBJECT, 64, probe=True, device="cpu"), timeout=120)["baseline_bytes"]
    budget = own + 80 * MiB                                  # the whole process: about 40 MiB for the pass
    settings = SearchSettings(budget=budget, machine_bytes=4 * 2 ** 30, min_points=2, max_points=3,
                              timing_seconds=0.0, startup_seconds=120)
    res = find_max_size("pathology", SUBJECT, settings)
    assert res.verification == "measured", (res.verified_text, res.measurements)
    assert res.peak_at_size <= budget
    bigger = GEOMETRIES["pathology"].size_for_pixels(1.5 * GEOMETRIES["pathology"].pixels(res.size))
    over = run_measurement(make_spec("pathology", SUBJECT, round(bigger), probe=True, device="cpu"), timeout=120)
    assert over["ok"] and over["peak_abs_bytes"] > usable_budget(budget), (res.size, over, res.measurements)


def test_benchmark_and_segment_refuse_a_budget_below_nca_itself_in_one_sentence(tmp_path):
    """One definition of a budget: the whole process. 64 MiB is less than Python and torch."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from nca_cli.models import NCAConfig, OctreeNCA, checkpoint

    checkpoint.save_model(tmp_path / "m.pt", OctreeNCA(NCAConfig(dims=2, input_channels=3, output_channels=1)), None)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    runs = [["benchmark", "--max-size", "--models", "octree_nca", "--impl", "torch", "--memory-budget", "64MiB", "-q"],
            ["segment", tmp_path / "a.png", "-o", tmp_path / "m.png", "-m", tmp_path / "m.pt", "--memory-budget",
             "64MiB", "-q"]]
    said = []
    for args in runs:
        proc = subprocess.run([sys.executable, "-m", "nca_cli", *map(str, args)], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        said.append(proc.stderr.split("(about")[0])
    assert said[0] == said[1] == "error: The memory budget 64.0 MiB is below what nca itself takes before any input "
    assert not (tmp_path / "m.png").exists()
