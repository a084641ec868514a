"""The kernel benchmark on small states."""
from nca_cli.kernels.bench import format_markdown, run_kernel_benchmark, step_flops


def test_step_flops():
    assert step_flops(2, 3) == (2 * 16 * 9, 2 * 32 * 64 + 2 * 64 * 13)
    assert step_flops(3, 1) == (2 * 16 * 27, 2 * 32 * 64 + 2 * 64 * 15)


def test_small_benchmark_reports_time_flops_and_memory(cpu_kernels):
    result = run_kernel_benchmark(sizes={"pathology": (96, 80)}, steps=2, threads=2, repeats=1)
    (row,) = result["rows"]
    assert row["case"] == "2D RGB 96x80" and row["cells"] == 96 * 80
    assert row["fused_s"] > 0 and row["torch_s"] > 0
    assert abs(row["speedup"] - row["torch_s"] / row["fused_s"]) < 1e-9
    assert row["peak_gflops"] > 1.0 and row["peak_gflops_per_core"] > 1.0
    assert 0 < row["peak_fraction_cpu_time"] < 1.5 and row["fused_cpu_s"] > 0
    assert 0 < row["fused_gflops"] < row["fused_dense_gflops"]       # non-firing cells skip fc0/fc1
    assert row["fused_extra_bytes"] is not None and row["torch_extra_bytes"] is not None
    assert row["torch_extra_bytes"] > row["fused_extra_bytes"]
    text = format_markdown(result)
    assert "| 2D RGB 96x80 | 0.5 |" in text and "FMA peak" in text
