"""Choosing the implementation, and falling back to PyTorch when the kernels cannot be built."""
import warnings

import pytest

import nca_cli.kernels as kernels
from nca_cli.kernels import build, fused_available, resolve_impl

from .conftest import make_backbone


@pytest.fixture
def fresh_state(monkeypatch, tmp_path):
    """Forget every build result of this process and build into an empty cache."""
    monkeypatch.setattr(kernels, "_available", {})
    monkeypatch.setattr(kernels, "_shape_ok", {})
    monkeypatch.setattr(build, "_modules", {})
    monkeypatch.setenv("NCA_KERNEL_CACHE", str(tmp_path / "cache"))


def _no_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    assert [str(w.message) for w in caught] == []
    return result


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda", [make_backbone(2, 3, 0.5)], "cpu")


def test_torch_is_always_torch():
    assert _no_warnings(lambda: resolve_impl("torch", [make_backbone(2, 3, 0.5)], "cpu")) == "torch"


def test_auto_and_fused_pick_the_kernel(cpu_kernels):
    models = [make_backbone(2, 3, 0.5), make_backbone(2, 3, 0.5, seed=1)]
    assert resolve_impl("auto", models, "cpu") == "fused"
    assert resolve_impl("fused", models[0], "cpu") == "fused"


def test_unfusable_backbone():
    big = make_backbone(2, 3, 0.5, kernel_size=11)
    assert _no_warnings(lambda: resolve_impl("auto", [big], "cpu")) == "torch"
    with pytest.warns(RuntimeWarning, match="do not implement"):
        assert resolve_impl("fused", [big], "cpu") == "torch"


def test_missing_compiler_warns_once_and_uses_torch(fresh_state, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    models = [make_backbone(2, 3, 0.5)]
    with pytest.warns(RuntimeWarning) as record:
        assert resolve_impl("fused", models, "cpu") == "torch"
    assert len(record) == 1
    text = str(record[0].message)
    assert "no C++ compiler" in text and "PyTorch path" in text
    assert _no_warnings(lambda: resolve_impl("fused", models, "cpu")) == "torch"
    assert _no_warnings(lambda: resolve_impl("auto", models, "cpu")) == "torch"
    assert _no_warnings(lambda: fused_available("cpu")) is False


def test_compile_error_names_the_compiler_message(fresh_state, monkeypatch):
    from torch.utils import cpp_extension

    def failing_load(*args, **kwargs):
        raise RuntimeError("Error building extension 'nca_cpu_x':\n[1/4] c++ -c nca_cpu.cpp\n"
                           "nca_cpu.h:12:3: error: 'foo' was not declared in this scope\nninja: build stopped")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    with pytest.warns(RuntimeWarning, match="'foo' was not declared") as record:
        assert fused_available("cpu") is False
    assert len(record) == 1
    assert _no_warnings(lambda: resolve_impl("auto", [make_backbone(3, 1, 0.5)], "cpu")) == "torch"


def test_unsupported_device_type(fresh_state):
    with pytest.warns(RuntimeWarning, match="no fused kernels for device type 'meta'"):
        assert resolve_impl("fused", [make_backbone(2, 3, 0.5)], "meta") == "torch"
