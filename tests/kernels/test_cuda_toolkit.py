"""Finding the CUDA toolkit and the architectures of the CUDA build, on fake folder layouts
(no GPU, no real toolkit needed)."""
import os
import stat
from pathlib import Path

import pytest

from nca_cli.kernels import build
from nca_cli.kernels.cuda_toolkit import cuda_arch_list, find_cuda_home, missing_toolkit_message


def toolkit(root: Path, header: bool = True) -> Path:
    """A fake toolkit: bin/nvcc (answers --dryrun with its folder, as nvcc does) and the header."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f'#!/bin/sh\necho "#$ _HERE_={root / "bin"}" >&2\n')
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    if header:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("")
    return nvcc


def on_path(nvcc: Path):
    return lambda name: str(nvcc) if name == "nvcc" else None


def test_nvcc_in_the_toolkit(tmp_path):
    nvcc = toolkit(tmp_path / "cuda-13.0")
    assert find_cuda_home({}, on_path(nvcc), ()) == tmp_path / "cuda-13.0"


def test_nvcc_through_a_symlink_outside_the_toolkit(tmp_path):
    nvcc = toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    link = tmp_path / "usr" / "bin" / "nvcc"
    link.symlink_to(nvcc)
    nvcc.write_text("#!/bin/sh\nexit 1\n")        # an nvcc that does not answer --dryrun: the link is followed
    assert find_cuda_home({}, on_path(link), ()) == tmp_path / "cuda-13.0"


def test_nvcc_through_a_wrapper_script_outside_the_toolkit(tmp_path):
    """As /usr/local/bin/nvcc = 'exec /usr/local/cuda-13.0/bin/nvcc "$@"': torch guesses /usr/local."""
    nvcc = toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "local" / "bin").mkdir(parents=True)
    (tmp_path / "local" / "include").mkdir()               # a folder torch would guess, without the header
    wrapper = tmp_path / "local" / "bin" / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {nvcc} "$@"\n')
    wrapper.chmod(0o755)
    assert find_cuda_home({}, on_path(wrapper), ()) == tmp_path / "cuda-13.0"


def test_cuda_home_without_the_header_is_ignored(tmp_path):
    nvcc = toolkit(tmp_path / "cuda")
    (tmp_path / "wrong").mkdir()
    env = {"CUDA_HOME": str(tmp_path / "wrong")}
    assert find_cuda_home(env, on_path(nvcc), ()) == tmp_path / "cuda"
    assert find_cuda_home({"CUDA_HOME": str(tmp_path / "cuda")}, lambda name: None, ()) == tmp_path / "cuda"


def test_default_folder_and_nothing_found(tmp_path):
    nvcc = toolkit(tmp_path / "broken", header=False)
    toolkit(tmp_path / "default")
    assert find_cuda_home({}, on_path(nvcc), (str(tmp_path / "default"),)) == tmp_path / "default"
    assert find_cuda_home({}, on_path(nvcc), ()) is None
    assert find_cuda_home({}, lambda name: None, ()) is None


def test_the_missing_toolkit_error_is_one_sentence_saying_what_to_set(tmp_path, monkeypatch):
    for env in ({}, {"CUDA_HOME": str(tmp_path)}):
        msg = missing_toolkit_message(env)
        assert msg.count(";") == 1 and "." not in msg.replace("cuda_runtime.h", "").replace(str(tmp_path), "")
        assert "set CUDA_HOME to the toolkit's folder" in msg
    assert str(tmp_path) in missing_toolkit_message({"CUDA_HOME": str(tmp_path)})
    monkeypatch.setattr(build, "find_cuda_home", lambda: None)
    with pytest.raises(build.KernelBuildError, match="CUDA toolkit was not found.*set CUDA_HOME"):
        build.use_cuda_home()


def test_a_found_toolkit_is_given_to_torch(tmp_path, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(build, "find_cuda_home", lambda: tmp_path)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local")
    monkeypatch.setenv("CUDA_HOME", "/usr/local")
    assert build.use_cuda_home() == tmp_path
    assert cpp_extension.CUDA_HOME == str(tmp_path) == os.environ["CUDA_HOME"]


@pytest.mark.parametrize("explicit,capability,expected", [
    (None, (9, 0), "9.0+PTX"),
    ("", (8, 6), "8.6+PTX"),
    ("8.0;9.0", (8, 6), "8.0;9.0+PTX"),                # PTX of the highest, whatever the device
    ("9.0 8.0", None, "9.0+PTX;8.0"),
    ("8.0;8.9;12.0", None, "8.0;8.9;12.0+PTX"),        # 12.0 > 8.9 as versions, not as strings
    ("8.0+PTX;9.0", (9, 0), "8.0+PTX;9.0"),            # PTX asked for: kept as it is
    (None, None, None),
])
def test_architectures(explicit, capability, expected):
    assert cuda_arch_list(explicit, capability) == expected


def test_the_architectures_are_part_of_the_cache_key():
    texts = {name: "" for name in build.CUDA_SOURCES}
    gen = build._cuda_instantiations(build.DEFAULT_SHAPES)
    assert (build._key("cuda", texts, gen, build.CUDA_CFLAGS + ["arch=9.0+PTX"])
            != build._key("cuda", texts, gen, build.CUDA_CFLAGS + ["arch=8.0+PTX"]))
