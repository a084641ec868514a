import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nca_cli.core.errors import NCAError
from nca_cli.data.prepare import prepare
from nca_cli.models import checkpoint
from nca_cli.recipes import load_recipe
from nca_cli.training.trainer import train

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
