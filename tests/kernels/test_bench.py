"""The kernel benchmark on small states."""
import pytest
import torch

from nca_cli.core.firemask import fire_mask
from nca_cli.kernels.bench import (CASES, TASKS, dense_flops, executed_flops, format_markdown, make_backbone,
                                   run_kernel_benchmark, step_flops)


def test_step_flops():
    f = step_flops(make_backbone("pathology", 0.5))
    assert (f["perception"], f["fc0"], f["fc1"], f["norm"]) == (2 * 16 * 9, 2 * 32 * 64, 2 * 64 * 13, 0)
    assert step_flops(make_backbone("radiology", 0.5))["perception"] == 2 * 16 * 27
    m = make_backbone("mednca_pathology_k7", 0.5)
    f = step_flops(m)
    assert f["perception"] == 2 * 16 * 49 and f["fc1"] == 2 * 64 * 13 and f["fc1_torch"] == 2 * 64 * 16
    # BatchNorm: a statistics sweep over every cell (perception, then the moments of the 32
    # features on the CPU, fc0 and the sums on CUDA), then the update sweep
    update = f["perception"] + 0.5 * (f["fc0"] + 2 * 64 + f["fc1"])
    assert f["moments"] == 32 * 33 + 32
    assert executed_flops(m, 0.5) == f["perception"] + 32 * 33 + 32 + update
    assert executed_flops(m, 0.5, "cuda") == f["perception"] + f["fc0"] + 3 * 64 + update
    # a coarse level that keeps its perception perceives once
    assert executed_flops(m, 0.5, kept=True) == executed_flops(m, 0.5) - f["perception"]
    assert dense_flops(m) == f["perception"] + f["fc0"] + 5 * 64 + f["fc1_torch"]
    full = step_flops(make_backbone("mednca_xray", 0.5))
    assert full["perception"] == 2 * 2 * 16 * 16 * 9 and full["fc0"] == 2 * 48 * 128


def test_tasks_name_known_cases():
    assert all(c in CASES for cases in TASKS.values() for c in cases)
    assert all(TASKS[t][0] == t for t in TASKS)                 # OctreeNCA's backbone first


def test_small_benchmark_reports_time_flops_and_memory(cpu_kernels):
    result = run_kernel_benchmark(sizes={"pathology": (96, 80)}, steps=2, threads=2, repeats=1)
    (row,) = result["rows"]
    assert row["case"] == "OctreeNCA 2D RGB 96x80" and row["cells"] == 96 * 80
    assert row["fused_s"] > 0 and row["torch_s"] > 0 and row["speedup"] > 0
    assert row["peak_gflops"] > 1.0 and row["peak_gflops_per_core"] > 1.0
    assert 0 < row["peak_fraction_cpu_time"] < 1.5 and row["fused_cpu_s"] > 0
    assert 0 < row["fused_gflops"] < row["fused_dense_gflops"]       # non-firing cells skip fc0/fc1
    assert row["fused_extra_bytes"] is not None and row["torch_extra_bytes"] is not None
    assert row["torch_extra_bytes"] > row["fused_extra_bytes"]
    text = format_markdown(result)
    assert "| OctreeNCA 2D RGB 96x80 | 0.5 |" in text and "FMA peak" in text


def test_rates_follow_from_the_timed_seconds_and_the_cells_that_fire(cpu_kernels, monkeypatch):
    """Timings, FMA peak and fire mask fixed: every rate is known by hand. OctreeNCA's
    pathology step executes per cell 2*16*9 (perception) + fired * (2*32*64 + 2*64*13) FLOPs
    (fc0, fc1), PyTorch 288 + 4096 + 1664 = 6048 for every cell."""
    from nca_cli.kernels import bench

    timings = iter([(0.5, 0.6), (2.0, 1.9)])          # fused, then PyTorch: seconds for 2 steps
    monkeypatch.setattr(bench, "_median_time", lambda fn, repeats, sync=None: next(timings))
    monkeypatch.setattr(bench, "fma_peak", lambda threads, repeats=3: (10.0, 8.0))
    monkeypatch.setattr(bench, "fire_mask", lambda shape, seed, level, step, fire_rate:
                        torch.ones(shape) if step == 0 else torch.zeros(shape))   # half the cells fire
    (row,) = run_kernel_benchmark(sizes={"pathology": (96, 80)}, steps=2, threads=1, repeats=1,
                                  memory=False)["rows"]
    cells = 96 * 80
    executed, dense = (288 + 0.5 * (4096 + 1664)) * cells, 6048 * cells
    assert (row["fused_s"], row["torch_s"], row["fused_cpu_s"]) == pytest.approx((0.25, 1.0, 0.3))
    assert row["speedup"] == pytest.approx(4.0)
    assert row["fused_gflops"] == pytest.approx(executed / 0.25 * 1e-9)      # 0.0973 GFLOP/s
    assert row["fused_dense_gflops"] == pytest.approx(dense / 0.25 * 1e-9)
    assert row["torch_gflops"] == pytest.approx(dense / 1.0 * 1e-9)
    assert row["peak_fraction"] == pytest.approx(executed / 0.25 * 1e-9 / 10.0)
    assert row["peak_fraction_cpu_time"] == pytest.approx(executed / 0.3 * 1e-9 / 8.0)


@pytest.mark.slow
def test_batch_norm_case_runs_fused(cpu_kernels):
    result = run_kernel_benchmark(sizes={"mednca_pathology_k7": (40, 36)}, steps=1, threads=2, repeats=1,
                                  memory=False)
    (row,) = result["rows"]
    assert row["case"].startswith("Med-NCA 2D RGB, kernel 7") and row["fused_s"] > 0 and row["torch_s"] > 0
    # a coarse level: it keeps its perception, and the time perceiving twice is reported too
    assert row["kept_perception"] and "perception kept" in row["case"] and row["fused_recompute_s"] > 0
    assert "with the perception computed in both sweeps instead" in format_markdown(result)
    # executed against dense FLOPs: the statistics sweep (perception and feature moments of
    # every cell) and the update sweep (matrix work of the cells that fire), from the fire mask
    m = make_backbone("mednca_pathology_k7", 0.5)
    fired = int(fire_mask((40, 36), seed=0, level=0, step=0, fire_rate=0.5).sum()) / (40 * 36)
    ratio = executed_flops(m, fired, kept=True) / dense_flops(m)
    assert row["fused_gflops"] / row["fused_dense_gflops"] == pytest.approx(ratio)


def test_kept_perception_costs_what_the_memory_model_says(cpu_kernels):
    """The peak of one step in a fresh process with the perception kept: at least the kept
    buffer (kept_perception_bytes, pages of 2 MiB), at most that and the launcher's per-thread
    planes as the launcher states them (the update sweep then reads no border planes, so
    those pages stay untouched)."""
    from nca_cli.kernels import kept_perception_bytes, workspace_bytes
    from nca_cli.kernels.bench import _measure_memory

    shape = (24, 64, 64)
    m = make_backbone("m3d_radiology_k7", 0.5)
    kept = kept_perception_bytes(m, shape)
    assert kept == 24 * 64 * 64 * 16 * 4
    planes = workspace_bytes(m, shape, 1, 4, 2)
    measured = _measure_memory("fused", "m3d_radiology_k7", shape, 0.5, 2, keep=True)["extra_bytes"]
    assert measured is not None
    assert kept <= measured <= 1.02 * (kept + planes), (measured, kept, planes)


def test_unknown_case_is_rejected(cpu_kernels):
    with pytest.raises(ValueError, match="unknown kernel benchmark case"):
        run_kernel_benchmark(task="nonsense")
