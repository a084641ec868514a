"""The five commands are built from their options dataclasses: every declared option is a flag
with its help, and the parsed values reach the application unchanged."""
import dataclasses
import importlib

import pytest
from typer.testing import CliRunner

from nca_cli.benchmark.options import BenchmarkOptions
from nca_cli.cli import app
from nca_cli.core.options import flag_of
from nca_cli.data.options import PrepareOptions
from nca_cli.segment.options import SegmentOptions
from nca_cli.training.options import TrainOptions
from nca_cli.vwsl.options import FinetuneOptions

COMMANDS = {"prepare": PrepareOptions, "train": TrainOptions, "finetune-vwsl": FinetuneOptions,
            "segment": SegmentOptions, "benchmark": BenchmarkOptions}


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_declared_option(command):
    text = _help(command)
    shown = 0
    for field in dataclasses.fields(COMMANDS[command]):
        spec = flag_of(field)
        if spec.hidden:
            assert not any(f in text for f in spec.flags if f.startswith("--"))
            continue
        names = [field.name] if spec.argument else spec.flags
        assert all(name in text for name in names), (command, names)
        assert " ".join(spec.help.split()[:4]) in text, (command, spec.help)
        shown += 1
    assert shown >= 5


def _captured(monkeypatch, argv: list[str]) -> dict:
    module = importlib.import_module("nca_cli.data.prepare")   # the package's ``prepare`` names the function
    seen = {}

    def fake(kind, src, dst, /, *, quiet=True, **options):
        seen.update(kind=kind, src=src, dst=dst, quiet=quiet, options=options)
        return dst

    monkeypatch.setattr(module, "prepare", fake)
    result = CliRunner().invoke(app, ["prepare", *argv])
    assert result.exit_code == 0, result.output
    return seen


def test_prepare_flags_reach_prepare_as_its_keywords(monkeypatch, tmp_path):
    seen = _captured(monkeypatch, ["generic", str(tmp_path), "-o", str(tmp_path / "out"), "--classes", "gland, duct,",
                                   "--test-cases", "a,b", "--seed", "3", "-q"])
    assert seen["kind"] == "generic" and seen["quiet"] is True
    assert seen["options"] == {"seed": 3, "overwrite": False, "val_fraction": 0.1, "test_fraction": 0.2,
                               "test_cases": ["a", "b"], "classes": ["gland", "duct"]}
    seen = _captured(monkeypatch, ["synthetic", "-o", str(tmp_path / "s"), "--kind", "xray", "--size", "64", "--binary"])
    assert seen["src"] is None
    assert seen["options"] == {"seed": 0, "overwrite": False, "val_fraction": 0.1, "test_fraction": 0.2,
                               "binary": True, "kind": "xray", "cases": None, "shifted": False, "size": 64}
