import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nca_cli.core.errors import NCAError
from nca_cli.data.prepare import prepare
from nca_cli.models import checkpoint
from nca_cli.recipes import load_recipe
from nca_cli.training.trainer import resumed_recipe, train

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.levels=3", "model.factors=[2,2]", "model.steps=[4,4,6]", "model.kernel_sizes=[3,3,3]", "model.hidden=16",
         "data.patch=[48,48]", "data.batch_size=2", "data.batches_per_epoch=2",
         "training.validate_every=2", "training.ensemble=2", "training.ema_decay=0.5"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    return prepare("synthetic", None, root / "data", kind="pathology", cases=5, size=192, seed=0)


def recipe(dataset, *extra):
    return load_recipe(ROOT / "recipes" / "octree_pathology.yaml", [f"data.dataset={dataset}", *SMALL, *extra])


def test_resume_reaches_the_identical_state(tmp_path, dataset):
    r = recipe(dataset)
    train(r, tmp_path / "full", epochs=4, quiet=True, impl="torch")
    train(r, tmp_path / "half", epochs=2, quiet=True, impl="torch")
    train(r, tmp_path / "half", epochs=4, quiet=True, resume=True, impl="torch")
    a = checkpoint.load(tmp_path / "full" / "last.pt")
    b = checkpoint.load(tmp_path / "half" / "last.pt")
    assert a["epoch"] == b["epoch"] == 4
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    lines = [json.loads(x) for x in (tmp_path / "half" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4]
    model, payload = checkpoint.load_model(tmp_path / "half" / "model.pt")
    assert payload["recipe"]["name"] == "octree_pathology" and payload["model_config"]["levels"] == 3
    assert (tmp_path / "half" / "recipe.yaml").exists() and (tmp_path / "half" / "best.pt").exists()


def test_refuses_to_overwrite_and_checks_dataset(tmp_path, dataset):
    r = recipe(dataset)
    train(r, tmp_path / "run", epochs=1, quiet=True, impl="torch")
    with pytest.raises(NCAError, match="--resume"):
        train(r, tmp_path / "run", epochs=1, quiet=True)
    with pytest.raises(NCAError, match="channel"):
        train(recipe(dataset, "model.input_channels=1"), tmp_path / "other", epochs=1, quiet=True)
    with pytest.raises(NCAError, match="nca prepare"):
        train(recipe(tmp_path / "nowhere"), tmp_path / "x", epochs=1, quiet=True)


def test_ddp_two_cpu_processes(tmp_path, dataset):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "nca_cli", "train", str(ROOT / "recipes" / "octree_pathology.yaml"), "-o", str(tmp_path / "ddp"),
           "--epochs", "2", "--quiet", "--impl", "torch", "--set", f"data.dataset={dataset}",
           *[x for s in SMALL for x in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = checkpoint.load(tmp_path / "ddp" / "last.pt")
    assert len(state["generators"]) == 2 and state["epoch"] == 2
    checkpoint.load_model(tmp_path / "ddp" / "model.pt")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nca_cli", "train", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_resume_continues_the_recorded_recipe_and_refuses_changes(tmp_path, dataset):
    sets = [x for s in [f"data.dataset={dataset}", *SMALL] for x in ("--set", s)]
    run = tmp_path / "run"
    first = _cli("octree_pathology", "-o", run, "--epochs", 1, "--impl", "torch", "-q", *sets)
    assert first.returncode == 0, first.stderr
    # without repeating the first run's --set overrides: the run folder's recipe.yaml is used
    again = _cli("octree_pathology", "-o", run, "--resume", "--epochs", 2, "--impl", "torch", "-q")
    assert again.returncode == 0, again.stderr
    state = checkpoint.load(run / "last.pt")
    assert state["epoch"] == 2 and state["resumes"] == [{"epoch": 1, "changes": {"training.epochs": [1, 2]}}]
    recorded = (run / "recipe.yaml").read_text()
    assert "epochs: 2" in recorded and "hidden: 16" in recorded
    for change in ("training.lr=0.5", "model.hidden=32"):
        refused = _cli("octree_pathology", "-o", run, "--resume", "--epochs", 3, "--set", change, "-q")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert change.split("=")[0] in refused.stderr and "start a new run" in refused.stderr
    assert checkpoint.load(run / "last.pt")["epoch"] == 2 and "lr: 0.0016" in (run / "recipe.yaml").read_text()


def test_run_folder_that_is_a_file_and_a_full_disk_end_in_one_sentence(tmp_path, dataset, monkeypatch):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(NCAError, match="is a file; pass a folder"):
        train(recipe(dataset), tmp_path / "taken", epochs=1, quiet=True)
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(NCAError, match=r"Cannot write .*: the disk is full"):
        train(recipe(dataset), tmp_path / "run", epochs=1, quiet=True, impl="torch")
    assert not list((tmp_path / "run").glob("*.pt"))


def test_model_pt_exists_at_every_improvement_and_records_its_training_data(tmp_path, dataset):
    train(recipe(dataset, "training.validate_every=1"), tmp_path / "run", epochs=2, quiet=True, impl="torch")
    _, payload = checkpoint.load_model(tmp_path / "run" / "model.pt")
    meta = payload["metadata"]
    assert meta["weights"] == "final" and meta["normalization"]["divide_by"] == 255.0
    best = checkpoint.load_model(tmp_path / "run" / "best.pt")[1]["metadata"]
    assert best["weights"] == "best" and best["epoch"] in (1, 2)


def test_log_shows_progress_lines_when_not_on_a_terminal(tmp_path, dataset):
    sets = [x for s in [f"data.dataset={dataset}", *SMALL] for x in ("--set", s)]
    proc = _cli("octree_pathology", "-o", tmp_path / "run", "--epochs", 2, "--impl", "torch", *sets)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/2 (50%)  loss ") and lines[-1].startswith("epoch 2/2 (100%)")
    assert "s/epoch" in lines[-1] and "dice" in lines[-1]


def test_dry_run_checks_the_dataset_against_the_model(tmp_path, dataset):
    ok = _cli("octree_pathology", "--dry-run", "--set", f"data.dataset={dataset}", "--set", "data.patch=[48,48]")
    assert ok.returncode == 0 and "matches the model" in ok.stdout, ok.stderr
    big = _cli("octree_pathology", "--dry-run", "--set", f"data.dataset={dataset}")      # 320x320 patches, 192 px cases
    assert big.returncode == 1 and "data.patch" in big.stderr and "larger than every case" in big.stderr
    grey = _cli("octree_pathology", "--dry-run", "--set", f"data.dataset={dataset}", "--set", "model.input_channels=1")
    assert grey.returncode == 1 and "set model.input_channels=3" in grey.stderr


def test_epochs_from_python_are_recorded_as_the_flag_records_them(tmp_path, dataset):
    """``train(epochs=N)`` wins over training.epochs and records N in recipe.yaml and model.pt, as
    ``--epochs N`` does; on resume the change is recorded with the epoch it holds from."""
    import yaml

    r = recipe(dataset)
    assert r.training.epochs == 1500
    run = tmp_path / "run"
    train(r, run, epochs=1, quiet=True, impl="torch")
    expected = recipe(dataset, "training.epochs=1").to_dict()
    expected["data"]["dataset"] = str(Path(dataset).resolve())
    assert yaml.safe_load((run / "recipe.yaml").read_text()) == expected
    assert checkpoint.load_model(run / "model.pt")[1]["recipe"]["training"]["epochs"] == 1
    recorded, changes = resumed_recipe(run, [])
    assert recorded.training.epochs == 1 and changes == {}
    train(recorded, run, epochs=2, quiet=True, impl="torch", resume=True, changes=changes)
    state = checkpoint.load(run / "last.pt")
    assert state["epoch"] == 2 and state["resumes"] == [{"epoch": 1, "changes": {"training.epochs": [1, 2]}}]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["training"]["epochs"] == 2


def test_sigterm_writes_a_last_pt_that_resume_finishes_bit_for_bit(tmp_path, dataset):
    sets = [x for s in [f"data.dataset={dataset}", *SMALL, "data.batches_per_epoch=6"] for x in ("--set", s)]
    full = _cli("octree_pathology", "-o", tmp_path / "full", "--epochs", 2, "--impl", "torch", "-q", *sets)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "run"
    args = [sys.executable, "-m", "nca_cli", "train", "octree_pathology", "-o", run, "--epochs", 2, "--impl", "torch",
            "-q", *sets]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():   # inside epoch 2
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM and err.strip().splitlines() == [
        "stopped by SIGTERM; nothing half-written was kept"]
    stopped = checkpoint.load(run / "last.pt")
    assert (stopped["epoch"], stopped["batch"]) < (2, 0)
    resumed = _cli("octree_pathology", "-o", run, "--resume", "--impl", "torch", "-q")
    assert resumed.returncode == 0, resumed.stderr
    a, b = checkpoint.load(tmp_path / "full" / "last.pt"), checkpoint.load(run / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and b["batch"] == 0
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert not list(run.glob(".*partial*"))
