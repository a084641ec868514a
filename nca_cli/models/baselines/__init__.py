"""Baseline segmentation networks compared with the NCAs; each module registers its architectures.

Every baseline returns logits ``[B, OUT, *spatial]`` and has a ``divisor`` attribute: every
spatial size of its input must be a multiple of it. ``unet`` gives one sigmoid logit per
class (as the NCAs); the others give softmax logits whose classes include the background.
"""
from .mamba_scan import (
                     selective_scan,
                     selective_scan_chunked,
                     selective_scan_sequential,
)
from .meunet import (
                     MeUNet,
                     MeUNetCascade,
                     MeUNetCascadeConfig,
                     MeUNetConfig,
                     UNetBody,
                     class_weights,
                     expanded_pair_loss,
                     expanded_size,
                     meunet_loss,
                     meunet_training_loss,
)
from .segresmamba import (
                     MambaBlock,
                     SegResMamba,
                     SegResMambaConfig,
                     SegResNetConfig,
                     TriOrientedMamba,
)
from .unet import UNetConfig

__all__ = [
    "MambaBlock", "MeUNet", "MeUNetCascade", "MeUNetCascadeConfig", "MeUNetConfig", "SegResMamba",
    "SegResMambaConfig", "SegResNetConfig", "TriOrientedMamba", "UNetBody", "UNetConfig", "class_weights",
    "expanded_pair_loss", "expanded_size", "meunet_loss", "meunet_training_loss", "selective_scan",
    "selective_scan_chunked", "selective_scan_sequential",
]
