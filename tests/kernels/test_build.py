"""Build cache keys and generated instantiation files."""
import pytest

from nca_cli.kernels import build


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NCA_KERNEL_CACHE", str(tmp_path / "k"))
    assert build.cache_root() == tmp_path / "k"
    monkeypatch.delenv("NCA_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.cache_root() == tmp_path / "xdg" / "nca" / "kernels"


def test_key_depends_on_sources_flags_and_shapes():
    texts = {name: (build.SOURCE_DIR / name).read_text() for name in build.CPU_SOURCES}
    gen = build._cpu_instantiations(build.DEFAULT_SHAPES)
    base = build._key("cpu", texts, gen, build.CPU_CFLAGS)
    assert base == build._key("cpu", dict(texts), gen, build.CPU_CFLAGS)
    assert base != build._key("cpu", texts, gen, build.CPU_CFLAGS + ["-g"])
    other = build._cpu_instantiations(((2, 12, 48, 3, 5),))
    assert base != build._key("cpu", texts, other, build.CPU_CFLAGS)
    edited = {**texts, "nca_cell.h": texts["nca_cell.h"] + "\n"}
    assert base != build._key("cpu", edited, gen, build.CPU_CFLAGS)


def test_generated_instantiations_cover_every_storage_and_shape():
    files = build._cpu_instantiations(((2, 12, 48, 3, 5), (3, 16, 64, 1, 3)))
    assert sorted(files) == ["nca_inst_bf16.cpp", "nca_inst_f16.cpp", "nca_inst_f32.cpp"]
    text = files["nca_inst_f16.cpp"]
    assert "nca::Cfg<2, 12, 48, 3, 5>, nca::F16" in text and "nca::Cfg<3, 16, 64, 1, 3>, nca::F16" in text
    cuda = build._cuda_instantiations(((2, 12, 48, 3, 5),))["nca_cuda_inst.cu"]
    assert "#define NCA_CUDA_SHAPES(X) X(2, 12, 48, 3, 5)" in cuda and '#include "nca_cuda.cu"' in cuda


def test_short_cause_prefers_the_compiler_error():
    exc = RuntimeError("Error building extension 'x': [1/2] c++ ...\nfoo.cpp:3:1: error: expected ';'\nmore")
    assert build._short_cause(exc) == "foo.cpp:3:1: error: expected ';'"
    assert build._short_cause(RuntimeError("plain failure\nsecond line")) == "plain failure"


def test_unknown_device_type():
    with pytest.raises(build.KernelBuildError, match="no fused kernels for device type"):
        build.kernel_module("xpu")
