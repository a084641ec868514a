"""Checkpoints: one format for ``model.pt`` (what segment and finetune-vwsl take), saved atomically
and always loaded with ``torch.load(weights_only=True)`` (no pickled code is ever executed)."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import NCAError
from ..core.files import atomic_path, write_failure
from .contract import unknown_contract
from .registry import build_model

MODEL_FORMAT = "nca-model/1"


def save(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name, renamed when complete."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except OSError as exc:
            raise write_failure(path, exc) from None
        except RuntimeError as exc:   # torch's zip writer reports a full disk as "unexpected pos" / "write failed"
            raise NCAError(f"Cannot write {path}: the disk is full or the write failed "
                           f"({str(exc).splitlines()[0]}); free disk space or choose another location.") from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    p = Path(path)
    if not p.is_file():
        raise NCAError(f"Checkpoint {p} does not exist; pass the model.pt written by `nca train`.")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as exc:
        text = str(exc).lower()
        why = "truncated or corrupted" if ("zip" in text or "eof" in text or "central directory" in text
                                            or isinstance(exc, (EOFError, zipfile.BadZipFile))) else "not a loadable checkpoint"
        raise NCAError(f"Checkpoint {p} is {why}; copy it again or re-export it with `nca train`.") from None
    if not isinstance(obj, dict):
        raise NCAError(f"Checkpoint {p} does not hold an nca model; pass the model.pt written by `nca train`.")
    return obj


def model_payload(model: nn.Module, recipe: dict | None, metadata: dict | None = None,
                  state_dict: dict | None = None) -> dict:
    sd = state_dict if state_dict is not None else model.state_dict()
    return {
        "format": MODEL_FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in sd.items()},
        "recipe": _plain(recipe) if recipe is not None else None,
        "metadata": _plain(metadata or {}),
    }


def save_model(path: str | os.PathLike, model: nn.Module, recipe: dict | None, metadata: dict | None = None,
               state_dict: dict | None = None) -> None:
    save(model_payload(model, recipe, metadata, state_dict), path)


def migrate(payload: dict) -> dict:
    """A loaded ``model.pt`` payload brought to the current layout (the one place old
    checkpoints are read): every older layout is upgraded step by step, so each step is written
    once.

    - model configurations of the first layout kept baseline settings under ``options``:
      flattened;
    - checkpoints without an I/O contract (``metadata["contract"]``, see
      ``nca_cli.models.contract``) get one from their metadata and model configuration, with the
      resolution unknown (such a model segments inputs as they are stored).
    """
    payload = dict(payload)
    config = dict(payload["model_config"])
    options = config.pop("options", None) or {}
    payload["model_config"] = {**config, **options}
    metadata = dict(payload.get("metadata") or {})
    contract = metadata.get("contract")
    if not isinstance(contract, dict) or contract.get("version", 0) < 1:
        metadata["contract"] = unknown_contract(payload["model_config"], metadata)
    payload["metadata"] = metadata
    return payload


def check_weights(state_dict: dict, path) -> None:
    """Refuse weights holding NaN or Inf: such a model would segment garbage without a word."""
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NCAError(f"Checkpoint {path} holds NaN or Inf weights ({name}); the training that wrote it "
                           f"diverged, so use an earlier checkpoint (best.pt) or train again with a lower training.lr.")


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, require_nca: bool = False):
    """Rebuild the model stored in ``path`` (in eval mode); returns ``(model, payload)``."""
    from .registry import architecture_of

    payload = load(path, map_location)
    if payload.get("format") != MODEL_FORMAT or "model_config" not in payload or "state_dict" not in payload:
        raise NCAError(f"Checkpoint {path} is not an nca model file (no '{MODEL_FORMAT}' header); "
                       f"pass the model.pt written by `nca train`, not last.pt or a foreign file.")
    check_weights(payload["state_dict"], path)
    payload = migrate(payload)
    try:
        model = build_model(payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise NCAError(f"Checkpoint {path} does not match its own model configuration ({str(exc).splitlines()[0]}); "
                       f"re-export it with `nca train`.") from None
    if require_nca and not architecture_of(model).is_nca:
        raise NCAError(f"Checkpoint {path} holds a {model.config.architecture} model, not an NCA; "
                       f"pass an NCA model.pt (OctreeNCA, Med-NCA or M3D-NCA).")
    model.eval()
    return model, payload


def _plain(obj: Any) -> Any:
    """Recursively convert to types ``weights_only`` loading accepts (typed settings, such as a
    recipe, as the mapping their ``to_dict`` gives)."""
    if hasattr(obj, "to_dict") and not isinstance(obj, torch.Tensor):
        return _plain(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None or isinstance(obj, torch.Tensor):
        return obj
    return str(obj)
