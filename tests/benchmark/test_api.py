"""``nca benchmark`` end to end on simulated measurements: JSON, CSV, PNG and the terminal table."""
import csv
import json

import pytest

from nca_cli.benchmark import api, curve, search
from nca_cli.benchmark.geometry import GEOMETRIES
from nca_cli.benchmark.options import BenchmarkOptions
from nca_cli.cli import main
from nca_cli.core.errors import NCAError

MiB = 2 ** 20
BYTES_PER_PX = {"unet": 2800, "med_nca": 700, "octree_nca/torch": 1000, "octree_nca/fused-float32": 70,
                "octree_nca/fused-float16": 36}


def fake_measure(spec, timeout):
    sub = spec["subject"]
    key = sub["model"] if sub["model"] == "unet" or sub["model"] == "med_nca" else (
        "octree_nca/torch" if sub["impl"] == "torch" else f"octree_nca/fused-{sub['state_dtype']}")
    px = GEOMETRIES[spec["task"]].pixels(spec["size"])
    peak = 2 * MiB + BYTES_PER_PX[key] * px
    return {"ok": True, "size": spec["size"], "pixels": px, "probe": spec["probe"], "seconds": 0.05 + px * 1e-8,
            "peak_bytes": peak, "peak_abs_bytes": peak + 300 * MiB, "baseline_bytes": 300 * MiB}


@pytest.fixture
def simulated(monkeypatch):
    real_find = search.find_max_size
    real_curve = curve.run_curve
    monkeypatch.setattr(api, "find_max_size", lambda *a, **k: real_find(*a, measure=fake_measure, **k))
    monkeypatch.setattr(api, "run_curve", lambda *a, **k: real_curve(*a, measure=fake_measure, **k))
    monkeypatch.setattr(api, "_fused_ready", lambda subjects, device: None)


def test_max_size_json_has_one_verified_row_per_subject(simulated, tmp_path, capsys):
    out = tmp_path / "res.json"
    results = api.run_benchmarks(BenchmarkOptions(max_size=True, curve=False, kernel=False, task="pathology", models=[], impls=[], memory_budget="1GiB", device="cpu", json_out=out, plot=None, csv_out=None, quiet=False))
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results, default=str))
    assert {"tool", "version", "weights", "machine", "max_size"} <= set(data)
    assert "random weights" in data["weights"]
    section = data["max_size"]
    assert section["budget_bytes"] == 2 ** 30 and section["task"] == "pathology"
    assert section["paper"]["table2"]["OctreeNCA-CUDA"] == [184.9, 77.36]
    keys = [(r["model"], r["impl"], r["state_dtype"]) for r in section["rows"]]
    assert keys == [("unet", "torch", "float32"), ("med_nca", "torch", "float32"), ("med_nca", "fused", "float32"),
                    ("med_nca", "fused", "float16"), ("octree_nca", "torch", "float32"),
                    ("octree_nca", "fused", "float32"), ("octree_nca", "fused", "float16")]
    for r in section["rows"]:
        assert r["verification"] == "measured"
        assert r["peak_bytes_at_max"] <= 2 ** 30
        assert r["max_shape"] == [r["max_size"], r["max_size"]]
        assert r["max_value"] == pytest.approx(r["max_size"] ** 2 / 1e6)
        assert r["throughput_unit"] == "MP/s" and r["throughput"] > 0
        assert r["measurements"] and all("role" in m for m in r["measurements"])
        assert r["input"] == ("stream" if r["impl"] == "fused" else "memory")
    fused16 = section["rows"][-1]
    assert fused16["bytes_per_pixel"] == pytest.approx(36, rel=1e-3)
    assert any("x our PyTorch" in c for c in section["comparisons"])
    printed = capsys.readouterr().out
    assert "Largest single pass" in printed and "OctreeNCA" in printed


def test_curve_writes_csv_and_png(simulated, tmp_path):
    csv_path, png = tmp_path / "c.csv", tmp_path / "c.png"
    pytest.importorskip("matplotlib")
    results = api.run_benchmarks(BenchmarkOptions(max_size=False, curve=True, kernel=False, task="surgery", models=["octree_nca"], impls=["torch"], memory_budget="2GiB", device="cpu", json_out=None, plot=png, csv_out=csv_path, quiet=True))
    rows = list(csv.DictReader(csv_path.open()))
    assert rows and rows[0]["model"] == "octree_nca" and rows[0]["size_unit"] == "frames"
    ok = [r for r in rows if r["status"] == "ok"]
    assert [int(r["size"]) for r in ok] == sorted(int(r["size"]) for r in ok)
    assert len(ok) == 2 and all(int(r["peak_bytes"]) <= 2 ** 30 * 2 for r in ok)
    assert rows[-1]["status"].startswith("skipped")                  # stopped at the budget
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["curve"]["points"][0]["pixels"] == 8 * 240 * 432


def test_cli_runs_the_benchmark_and_rejects_bad_options(simulated, tmp_path, capsys):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as done:
        main(["benchmark", "--max-size", "--task", "surgery", "--models", "octree_nca", "--impl", "fused-float16",
              "--memory-budget", "1GiB", "--json", str(out), "-q"])
    assert done.value.code == 0
    rows = json.loads(out.read_text())["max_size"]["rows"]
    assert len(rows) == 1 and rows[0]["impl_label"] == "fused kernel, float16 state"
    assert rows[0]["value_unit"] == "s" and rows[0]["throughput_unit"] == "FPS"
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "--max-size", "--models", "nope", "--memory-budget", "1GiB"])
    assert exc.value.code == 1
    assert "not part of the pathology benchmark" in capsys.readouterr().err
    with pytest.raises(NCAError, match="--curve"):
        api.run_benchmarks(BenchmarkOptions(max_size=True, curve=False, kernel=False, task="pathology", models=[], impls=[], memory_budget="1GiB", device="cpu", json_out=None, plot=tmp_path / "p.png", csv_out=None, quiet=True))


def test_unavailable_fused_kernels_are_rows_with_the_reason(simulated, monkeypatch, tmp_path):
    monkeypatch.setattr(api, "_fused_ready", lambda subjects, device: "no compiler here")
    results = api.run_benchmarks(BenchmarkOptions(max_size=True, curve=False, kernel=False, task="pathology", models=["octree_nca"], impls=[], memory_budget="1GiB", device="cpu", json_out=None, plot=None, csv_out=None, quiet=True))
    rows = results["max_size"]["rows"]
    assert [r["verification"] for r in rows] == ["measured", "unavailable", "unavailable"]
    assert rows[1]["verified"] == "no compiler here" and rows[1]["max_size"] is None


def test_kernel_comparison_is_passed_through_and_printed(monkeypatch, tmp_path, capsys):
    from nca_cli.kernels import bench

    seen = {}

    def fake_kernel_benchmark(**kwargs):
        seen.update(kwargs)
        return {"rows": [{"case": "2D RGB 64x64", "fused_s": 0.01, "torch_s": 0.05, "speedup": 5.0,
                          "fused_extra_bytes": 1024, "torch_extra_bytes": 2 ** 20}], "device": "cpu", "threads": 2}

    monkeypatch.setattr(bench, "run_kernel_benchmark", fake_kernel_benchmark)
    from nca_cli.benchmark import forward

    def fake_forward_benchmark(task, device):
        seen["forward"] = (task, device)
        return {"rows": [{"recipe": "mednca_pathology", "architecture": "med_nca", "input": "512x512",
                          "steps": [64, 64], "fused_s": 1.0, "torch_s": 20.0, "speedup": 20.0,
                          "max_logit_diff": 3e-5}], "device": "cpu", "threads": 2}

    monkeypatch.setattr(forward, "run_forward_benchmark", fake_forward_benchmark)
    out = tmp_path / "k.json"
    results = api.run_benchmarks(BenchmarkOptions(max_size=False, curve=False, kernel=True, task="pathology", models=[], impls=[], memory_budget=None, device="cpu", json_out=out, plot=None, csv_out=None, quiet=False))
    assert seen == {"task": "pathology", "device": "cpu", "forward": ("pathology", "cpu")}
    assert json.loads(out.read_text())["kernel"]["rows"][0]["speedup"] == 5.0
    assert results["kernel"]["rows"][0]["case"] == "2D RGB 64x64"
    printed = capsys.readouterr().out
    assert "Fused step against the PyTorch step" in printed and "1.0 MiB" in printed
    assert "Whole forward pass" in printed and "20.0x" in printed
    assert json.loads(out.read_text())["forward"]["rows"][0]["recipe"] == "mednca_pathology"
