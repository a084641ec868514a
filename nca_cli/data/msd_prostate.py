"""Medical Segmentation Decathlon Task05 (prostate MRI) to a prepared dataset.

Source layout: ``imagesTr/prostate_XX.nii.gz`` (4D: T2 and ADC) and ``labelsTr/prostate_XX.nii.gz``
(0 background, 1 peripheral zone, 2 transition zone). Per case: the T2 channel (``channel``
0) is clipped to its 0.5-99.5 percentiles and rescaled to [0, 1], then resized linearly to
``shape`` (D, H, W) = (24, 320, 320), i.e. 320 x 320 x 24; labels 1 and 2 become one
foreground class ``prostate`` and are resized with nearest neighbour. Every case is its own
patient; the default split is 70 % train, 10 % val, 20 % test.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import io
from ..core.errors import NCAError
from ..io.normalize import HIGH_PERCENTILE, LOW_PERCENTILE, Normalization, normalize
from ..io.resize import resize_image, resize_labels
from .layout import source_dir, visible_files
from .writer import DatasetWriter, safe_id

DEFAULT_SHAPE = (24, 320, 320)
LABEL_VALUES = (0, 1, 2)
LAYOUT = "the Decathlon Task05_Prostate folders imagesTr/ and labelsTr/"


def fill_msd_prostate(
    src,
    writer: DatasetWriter,
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    channel: int = 0,
    low: float = LOW_PERCENTILE,
    high: float = HIGH_PERCENTILE,
) -> None:
    """Write every labelled case of an MSD prostate folder into ``writer``."""
    src = source_dir(src, LAYOUT)
    images_dir, labels_dir = src / "imagesTr", src / "labelsTr"
    if not labels_dir.is_dir() or not images_dir.is_dir():
        raise NCAError(f"{src} has no imagesTr/ and labelsTr/ folders; pass the Task05_Prostate folder of the Medical Segmentation Decathlon.")
    labels = [p for p in visible_files(labels_dir) if io.is_volume_file(p)]
    if not labels:
        raise NCAError(f"{labels_dir} holds no NIfTI label files; pass the Task05_Prostate folder of the Medical Segmentation Decathlon.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise NCAError(f"The prostate output shape {shape} is not (D, H, W); give three positive sizes.")
    spacings = []
    norm = Normalization("percentile", low, high)
    for label_path in labels:
        image_path = images_dir / label_path.name
        if not image_path.is_file():
            raise NCAError(f"The label {label_path} has no image {image_path}; restore the image or remove the label.")
        volume = io.load(image_path)
        if volume.dims != 3:
            raise NCAError(f"The image {image_path} is not a 3D volume; pass the Task05_Prostate NIfTI files.")
        if channel >= volume.array.shape[-1]:
            raise NCAError(f"The image {image_path} has {volume.array.shape[-1]} channel(s), so channel {channel} (T2) does not exist; pick an existing channel.")
        label, _ = io.read_labels(label_path)
        if label.shape != volume.array.shape[:-1]:
            raise NCAError(
                f"The image {image_path} has shape {volume.array.shape[:-1]} but its label {label_path} has {label.shape}; they must match voxel for voxel."
            )
        values = np.unique(label)
        unknown = [v for v in values.tolist() if v not in LABEL_VALUES]
        if unknown:
            raise NCAError(f"The label {label_path} contains value {unknown[0]:g}; MSD prostate labels must be 0, 1 or 2.")
        image = resize_image(normalize(volume.array[..., channel : channel + 1], norm), shape)
        mask = resize_labels((label > 0).astype(np.uint8), shape)
        spacing = [s * n / m for s, n, m in zip(volume.spacing or [1.0] * 3, volume.array.shape[:-1], shape)]
        spacings.append(spacing)
        case_id = safe_id(io.strip_suffix(label_path))
        writer.add_case(case_id, case_id, image, mask, spacing=[round(s, 6) for s in spacing])
    writer.set_info(
        name="msd-prostate",
        kind="radiology",
        modality="MR-T2",
        classes=["prostate"],
        spacing=np.median(np.asarray(spacings), axis=0).round(6).tolist(),
        spacing_unit="mm",
        resize_shape=list(shape),
        normalization=norm.entry("float32"),
        source={"format": "msd-prostate", "path": str(src), "channel": channel},
    )

