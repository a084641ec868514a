"""The I/O contract a model carries in ``model.pt``: what ``nca segment`` needs to repeat the
training input exactly.

``payload["metadata"]["contract"]`` (written by ``nca train`` from the prepared dataset's
``dataset.yaml``) holds, for :data:`CONTRACT_VERSION` 1:

- ``version`` (1), ``dims`` (2 or 3), ``channels`` (input channels), ``modality`` and
  ``kind`` (the dataset kind: pathology, radiology, ...),
- ``classes`` (foreground class names) and ``normalization`` (how raw values became model
  units; see ``nca_cli.io.normalize``),
- the resolution: ``mpp`` (µm per pixel, 2D; None when the training data recorded none),
  ``spacing`` with ``spacing_unit`` (per spatial axis, the prepared data's), and for 3D
  ``resize_shape`` (the fixed shape every training volume was resized to, or None when the
  volumes kept their size), ``frame_rate`` (videos' frames per second, when known).

Checkpoints written before the contract existed get one through
``nca_cli.models.checkpoint.migrate`` (resolution unknown: segmented as stored).
"""
from __future__ import annotations

CONTRACT_VERSION = 1
UM_PER = {"um": 1.0, "mm": 1000.0}


def _mpp(spacing, unit: str | None) -> float | None:
    """µm per pixel of 2D data stored with ``spacing`` in ``unit`` (None for pixels)."""
    if unit not in UM_PER or not spacing:
        return None
    values = [float(s) * UM_PER[unit] for s in spacing]
    return round(sum(values) / len(values), 9)


def dataset_contract(manifest: dict) -> dict:
    """The contract of a model trained on the prepared dataset ``manifest`` (``dataset.yaml``)."""
    dims = int(manifest["dims"])
    unit = manifest.get("spacing_unit")
    spacing = [float(s) for s in manifest.get("spacing") or []] or None
    known = unit in UM_PER
    return {
        "version": CONTRACT_VERSION,
        "dims": dims,
        "channels": int(manifest["channels"]),
        "modality": manifest.get("modality"),
        "kind": manifest.get("kind"),
        "classes": list(manifest.get("classes") or []),
        "normalization": manifest.get("normalization"),
        "mpp": _mpp(spacing, unit) if dims == 2 else None,
        "spacing": spacing if known else None,
        "spacing_unit": unit if known else None,
        "resize_shape": [int(s) for s in manifest["resize_shape"]] if dims == 3 and manifest.get("resize_shape") else None,
        "frame_rate": float(manifest["frame_rate"]) if manifest.get("frame_rate") else None,
    }


def unknown_contract(model_config: dict, metadata: dict) -> dict:
    """The contract of a checkpoint that recorded none: what its metadata and model say,
    resolution unknown."""
    return {
        "version": CONTRACT_VERSION,
        "dims": int(model_config.get("dims", 2)),
        "channels": int(model_config.get("input_channels", 1)),
        "modality": None, "kind": None,
        "classes": list(metadata.get("classes") or []),
        "normalization": metadata.get("normalization"),
        "mpp": None, "spacing": None, "spacing_unit": None, "resize_shape": None, "frame_rate": None,
    }


def contract_of(payload: dict) -> dict:
    """The contract of a loaded (migrated) checkpoint payload."""
    return (payload.get("metadata") or {}).get("contract") or unknown_contract(payload.get("model_config") or {}, {})


def describe(contract: dict) -> str:
    """One phrase for messages: the resolution the model was trained at."""
    if contract.get("mpp"):
        return f"{contract['mpp']:g} µm/px"
    if contract.get("resize_shape"):
        return "volumes resized to " + "x".join(str(s) for s in contract["resize_shape"])
    if contract.get("spacing"):
        return "spacing " + "x".join(f"{s:g}" for s in contract["spacing"]) + f" {contract['spacing_unit']}"
    return "an unknown resolution"
