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
    assert base != build._key("cpu", texts, build._cpu_instantiations(((2, 16, 64, 3, 3, 0, 1),)), build.CPU_CFLAGS)
    assert base != build._key("cpu", texts, other, build.CPU_CFLAGS)
    edited = {**texts, "nca_cell.h": texts["nca_cell.h"] + "\n"}
    assert base != build._key("cpu", edited, gen, build.CPU_CFLAGS)


def test_generated_instantiations_cover_every_storage_and_shape():
    files = build._cpu_instantiations(((2, 12, 48, 3, 5), (3, 16, 64, 1, 7, 0, 1), (2, 16, 128, 1, 3, 1, 1)))
    assert sorted(files) == ["nca_inst_bf16.cpp", "nca_inst_f16.cpp", "nca_inst_f32.cpp"]
    text = files["nca_inst_f16.cpp"]
    for cfg in ("nca::Cfg<2, 12, 48, 3, 5, 0, 0>", "nca::Cfg<3, 16, 64, 1, 7, 0, 1>", "nca::Cfg<2, 16, 128, 1, 3, 1, 1>"):
        assert f"{cfg}, nca::F16" in text
    cuda = build._cuda_instantiations(((2, 12, 48, 3, 5), (3, 16, 64, 1, 7, 0, 1)))["nca_cuda_inst.cu"]
    assert "#define NCA_CUDA_SHAPES(X) X(2, 12, 48, 3, 5, 0, 0) X(3, 16, 64, 1, 7, 0, 1)" in cuda
    assert '#include "nca_cuda.cu"' in cuda


def test_libraries_hold_the_recipe_shapes():
    """Every backbone of every NCA recipe lies in one of the libraries; OctreeNCA's in the default."""
    from nca_cli.kernels import backbone_shape
    from nca_cli.models import build_model
    from nca_cli.recipes import load_recipe

    recipes = sorted(build.SOURCE_DIR.parent.joinpath("recipes").glob("*.yaml"))
    seen = set()
    for path in recipes:
        model_cfg = load_recipe(path)["model"]
        if model_cfg["architecture"] not in ("octree_nca", "med_nca", "m3d_nca"):
            continue
        for bb in build_model(model_cfg).backbones:
            shape = backbone_shape(bb)
            seen.add(shape)
            lib = build.library_shapes(shape)
            assert len(lib) > 1 and shape in lib, (path.name, shape)
            if model_cfg["architecture"] == "octree_nca":
                assert lib == build.DEFAULT_SHAPES
    assert seen == {s for shapes in build.LIBRARIES.values() for s in shapes} - {(2, 16, 64, 1, 3, 0, 0)}


def test_shapes_name_their_library():
    assert build.library_shapes() == build.DEFAULT_SHAPES == build.LIBRARIES["octree"]
    assert build.library_shapes((3, 16, 64, 1, 7, 0, 1)) == build.LIBRARIES["m3d"]
    assert build.library_shapes((2, 12, 48, 3, 5)) == ((2, 12, 48, 3, 5, 0, 0),)
    assert build.cfg_name((2, 16, 64, 3, 7, 0, 1)) == "nca::Cfg<2, 16, 64, 3, 7, 0, 1>"


def test_short_cause_prefers_the_compiler_error():
    exc = RuntimeError("Error building extension 'x': [1/2] c++ ...\nfoo.cpp:3:1: error: expected ';'\nmore")
    assert build._short_cause(exc) == "foo.cpp:3:1: error: expected ';'"
    assert build._short_cause(RuntimeError("plain failure\nsecond line")) == "plain failure"


def test_unknown_device_type():
    with pytest.raises(build.KernelBuildError, match="no fused kernels for device type"):
        build.kernel_module("xpu")
