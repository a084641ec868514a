"""What every model configuration shares: the architecture name, dimensions and channels.

Each architecture declares one configuration dataclass deriving from :class:`ModelConfig`;
its fields (declared with :func:`nca_cli.core.schema.setting`) are the recipe's ``model:``
section, checked by the same rules whether they come from a recipe, ``--set`` or Python, and
saved with every checkpoint (``to_dict``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..core.schema import check_fields, setting


@dataclass
class ModelConfig:
    dims: int = setting(kind="int", lo=2, hi=3, help="spatial dimensions: 2 (images, slides) or 3 (volumes, video)")
    input_channels: int = setting(kind="int", lo=1, hi=64, help="image channels (1 grey/MRI, 3 RGB)")
    output_channels: int = setting(kind="int", lo=1, hi=64,
                                   help="predicted channels: one per class (sigmoid models) or classes + background (softmax)")
    architecture: str = setting("", kind="str", help="the registered architecture name")

    def __post_init__(self):
        check_fields(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))}")
        return cls(**data)
