"""Synthetic stand-ins for the real datasets, written in each real dataset's raw layout.

``make_synthetic(kind, out_dir, ...)`` writes a small, clearly synthetic copy of a source
layout so the matching converter runs end to end:

==========  =====================================================================  ============
kind        layout written                                                         converter
==========  =====================================================================  ============
pathology   ``peso_training_wsi_1/pds_N_HE.tif`` pyramidal tiled TIFFs (0.48       peso
            µm/px) + ``peso_training_masks/pds_N_HE_training_mask.tif`` (2 =
            epithelium), H&E-like (see ``synthetic_slide``); ``shifted=True``
            gives the target domain: other slides, each a phone photo of the
            slide on a monitor (``shift.photograph``)
radiology   ``imagesTr/prostate_NN.nii.gz`` 4D (T2, ADC) + ``labelsTr/`` (1 PZ,      msd-prostate
            2 TZ) + ``dataset.json``: pelvis with bladder, an ellipsoid prostate,
            noise and a bias field
surgery     ``videoNN/videoNN_SSSSS/frame_N_endo.png`` +                           cholecseg8k
            ``frame_N_endo_color_mask.png``: moving liver, abdominal wall, fat,
            gallbladder, a grasper and non-kept tissue, camera drift, vignette
xray        ``images/cxr_NNNN.png`` + ``chexmask.csv`` (RLE lungs and heart):       chexmask
            bright thorax, darker lungs, heart, spine, ribs; ``shifted=True``
            gives the target domain: other patients, each image a phone photo
            of a monitor (``shift.photograph``: washed-out tone, tilt, glare,
            moiré, blur, noise; the masks move with the image)
microct     ``imagesTr/microct_NN_0000.nii.gz`` uint16 + ``labelsTr/microct_NN.nii.gz``  generic
            (1 matrix, 2 pore, 3 inclusion; 0 = air around the sample): a
            cylindrical porous sample at 5 µm, pores as dark as the air outside
            (telling them apart needs context), bright inclusions, cupping, blur
            and noise
==========  =====================================================================  ============

``size``: pathology slide side (int) or (H, W); radiology (D, H, W) or in-plane side;
surgery (frames, H, W) or frame height (width 16:9, 80 frames); xray image side; microct
(D, H, W) or side. Output is deterministic for a seed and takes seconds at the default sizes.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.errors import NCAError
from ..io.resize import resize_image
from .chexmask import encode_rle
from .cholecseg8k import COLORS
from .shift import photograph
from .synthetic_slide import PHOTO_MAX_PIXELS, make_synthetic_slide, value_noise

SYNTHETIC_KINDS = ("pathology", "radiology", "surgery", "xray", "microct")
DEFAULT_CASES = {"pathology": 4, "radiology": 8, "surgery": 6, "xray": 30, "microct": 6}
DEFAULT_SIZE = {"pathology": 2048, "radiology": (16, 128, 128), "surgery": (80, 240, 427), "xray": 256,
                "microct": (64, 64, 64)}
MICROCT_CLASSES = ("matrix", "pore", "inclusion")
SHIFTED_KINDS = ("pathology", "xray")  # kinds with a shifted target domain (``shift.photograph``)
SHIFTED_SEED_OFFSET = 7919  # the shifted domain's cases come from other patients / slides
_WORKERS = min(4, os.cpu_count() or 1)  # threads writing video frames


def _noise2d(seed: int, height: int, width: int, cell: float, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    ys = np.arange(height, dtype=np.float64) + offset[0]
    xs = np.arange(width, dtype=np.float64) + offset[1]
    return value_noise(seed, ys, xs, cell)


def _smooth3d(rng: np.random.Generator, shape: Sequence[int], coarse: Sequence[int]) -> np.ndarray:
    """Smooth random field in [0, 1]-ish, linear upsampling of a coarse normal grid."""
    grid = rng.normal(size=(*coarse, 1)).astype(np.float32)
    return resize_image(grid, shape)[..., 0] * 0.5 + 0.5


# ---------------------------------------------------------------- pathology (PESO-like)
def _pathology(out: Path, cases: int, size, seed: int, shifted: bool = False) -> None:
    h, w = (size, size) if isinstance(size, int) else size
    tile = 512 if max(h, w) >= 2048 else 256
    for i in range(1, cases + 1):
        slide_seed = (seed + (SHIFTED_SEED_OFFSET if shifted else 0)) * 1000 + i
        make_synthetic_slide(
            out / "peso_training_wsi_1" / f"pds_{i}_HE.tif",
            w,
            h,
            seed=slide_seed,
            tile=tile,
            mask_path=out / "peso_training_masks" / f"pds_{i}_HE_training_mask.tif",
            photo_seed=2 * slide_seed + 1 if shifted else None,
        )


# ---------------------------------------------------------------- radiology (MSD-like)
def _prostate_case(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
    d, h, w = shape
    sz, sy, sx = spacing
    z = ((np.arange(d) - (d - 1) / 2) * sz)[:, None, None]
    y = ((np.arange(h) - (h - 1) / 2) * sy)[None, :, None]
    x = ((np.arange(w) - (w - 1) / 2) * sx)[None, None, :]

    def ellipsoid(c, r):
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2

    body = ((y / (0.36 * h * sy)) ** 2 + (x / (0.46 * w * sx)) ** 2) <= 1.0
    body = np.broadcast_to(body, shape)
    fat_ring = ((y / (0.3 * h * sy)) ** 2 + (x / (0.4 * w * sx)) ** 2) > 1.0
    scale = rng.uniform(0.8, 1.2)
    centre = (rng.uniform(-4, 4), rng.uniform(0, 10), rng.uniform(-5, 5))
    radii = (14 * scale, 17 * scale, 22 * scale)
    prostate = ellipsoid(centre, radii) <= 1.0
    tz = ellipsoid((centre[0], centre[1] - 4 * scale, centre[2]), tuple(0.62 * r for r in radii)) <= 1.0
    bladder = ellipsoid((centre[0] + 22, centre[1] - 18, centre[2]), (16, 24, 30)) <= 1.0
    bladder &= ~prostate
    label = np.zeros(shape, np.uint8)
    label[prostate] = 1
    label[prostate & tz] = 2

    texture = _smooth3d(rng, shape, (max(2, d // 2), max(2, h // 8), max(2, w // 8)))
    bias = 1.0 + 0.35 * (_smooth3d(rng, shape, (2, 3, 3)) - 0.5)
    t2 = np.where(body, np.where(fat_ring, 720.0, 360.0), 0.0)
    t2 = np.where(label == 1, 600.0, t2)
    t2 = np.where(label == 2, 330.0, t2)
    t2 = np.where(bladder, 1150.0, t2)
    t2 = t2 * (0.85 + 0.3 * texture) * bias
    adc = np.where(body, 1000.0, 0.0)
    adc = np.where(label == 1, 1650.0, adc)
    adc = np.where(label == 2, 1200.0, adc)
    adc = np.where(bladder, 2800.0, adc) * (0.9 + 0.2 * texture)
    t2 = np.hypot(t2 + rng.normal(0, 25, shape), rng.normal(0, 25, shape))  # Rician-like noise
    adc = np.abs(adc + rng.normal(0, 60, shape))
    return np.stack([t2, adc]).astype(np.int16), label


def _radiology(out: Path, cases: int, size, seed: int) -> None:
    import SimpleITK as sitk

    d, h, w = (max(8, size // 8), size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    training = []
    for i in range(cases):
        depth = int(d + rng.integers(-2, 3)) if d > 6 else d
        spacing = (3.6 * 16 / max(depth, 1), 200.0 / h, 200.0 / w)
        channels, label = _prostate_case(rng, (depth, h, w), spacing)
        name = f"prostate_{i:02d}.nii.gz"
        image = sitk.GetImageFromArray(channels, isVector=False)  # (2, D, H, W) -> 4D (W, H, D, 2)
        image.SetSpacing((spacing[2], spacing[1], spacing[0], 1.0))
        seg = sitk.GetImageFromArray(label)
        seg.SetSpacing((spacing[2], spacing[1], spacing[0]))
        sitk.WriteImage(image, str(out / "imagesTr" / name))
        sitk.WriteImage(seg, str(out / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "synthetic prostate (MSD Task05 layout)",
        "description": "Synthetic data generated by nca; not a real scan.",
        "tensorImageSize": "4D",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "numTraining": cases,
        "training": training,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


# ---------------------------------------------------------------- surgery (CholecSeg8k-like)
SURGERY_LOOK = {  # image colour of each scene class (the mask uses COLORS)
    "black background": (8, 6, 6),
    "abdominal wall": (196, 128, 118),
    "liver": (122, 42, 36),
    "gastrointestinal tract": (188, 104, 122),
    "fat": (222, 188, 104),
    "grasper": (168, 170, 176),
    "connective tissue": (214, 176, 160),
    "gallbladder": (150, 168, 104),
}


def _surgery_frame(seed: int, t: float, h: int, w: int, scene: dict):
    """One frame: scene class per pixel (names index SURGERY_LOOK) and the RGB image."""
    names = list(SURGERY_LOOK)
    drift = (6.0 * math.sin(0.07 * t + scene["phase"]), 9.0 * math.cos(0.05 * t + scene["phase"]))
    yy = (np.arange(h, dtype=np.float32)[:, None] + drift[0]) / h
    xx = (np.arange(w, dtype=np.float32)[None, :] + drift[1]) / w
    cls = np.full((h, w), names.index("abdominal wall"), np.uint8)
    fat = _noise2d(seed + 1, h, w, h / 5, drift) > 0.62
    cls[fat] = names.index("fat")
    edge = scene["liver_y"] + 0.08 * np.sin(6.0 * xx + scene["phase"] + 0.03 * t)
    cls[np.broadcast_to(yy > edge, (h, w))] = names.index("liver")
    gi = ((xx - scene["gi_x"]) / 0.14) ** 2 + ((yy - 0.25) / 0.12) ** 2 <= 1.0
    cls[gi] = names.index("gastrointestinal tract")
    strands = np.abs(np.sin(25.0 * (xx + 0.4 * yy) + scene["phase"])) < 0.05
    cls[strands & (_noise2d(seed + 2, h, w, h / 4, drift) > 0.6)] = names.index("connective tissue")
    gy, gx = scene["gb"][0] + 0.02 * math.sin(0.1 * t), scene["gb"][1] + 0.02 * math.cos(0.08 * t)
    gallbladder = ((xx - gx) / 0.16) ** 2 + ((yy - gy) / 0.1) ** 2 <= 1.0
    cls[gallbladder] = names.index("gallbladder")
    # grasper: a bar from the right edge whose tip moves
    tip_x = 0.55 + 0.15 * math.sin(0.12 * t + scene["phase"])
    tip_y = 0.45 + 0.1 * math.cos(0.09 * t)
    px = np.arange(w, dtype=np.float32)[None, :] / w
    py = np.arange(h, dtype=np.float32)[:, None] / h
    ang = scene["grasper_angle"]
    along = (px - tip_x) * math.cos(ang) + (py - tip_y) * math.sin(ang)
    across = -(px - tip_x) * math.sin(ang) + (py - tip_y) * math.cos(ang)
    grasper = (along > 0) & (np.abs(across) < 0.035 + 0.02 * (along < 0.05))
    cls[grasper] = names.index("grasper")
    vignette = ((px - 0.5) / 0.56) ** 2 + ((py - 0.5) / 0.62) ** 2 > 1.0
    cls[vignette] = names.index("black background")

    look = np.array(list(SURGERY_LOOK.values()), np.float32)
    tex = _noise2d(seed + 3, h, w, 6.0, drift)
    shade = 0.75 + 0.25 * _noise2d(seed + 4, h, w, h / 2, drift) + 0.2 * (tex - 0.5)
    shade *= 1.0 - 0.45 * (((px - 0.5) / 0.6) ** 2 + ((py - 0.5) / 0.6) ** 2)
    rgb = look[cls] * shade[..., None]
    glare = _noise2d(seed + 5 + int(t) // 10, h, w, 4.0, drift) > 0.975
    rgb[glare & ~vignette] = 250.0
    return cls, np.clip(rgb, 0, 255).astype(np.uint8)


def _surgery(out: Path, cases: int, size, seed: int) -> None:
    from PIL import Image

    frames, h, w = (80, size, int(round(size * 16 / 9))) if isinstance(size, int) else size
    names = list(SURGERY_LOOK)
    palette = np.array([COLORS[n] for n in names], np.uint8)
    rng = np.random.default_rng(seed)
    for i in range(cases):
        video = f"video{i // 2 + 1:02d}"
        start = 80 * (1 + i % 2)
        folder = out / video / f"{video}_{start:05d}"
        folder.mkdir(parents=True)
        scene = {
            "phase": float(rng.uniform(0, 2 * math.pi)),
            "liver_y": float(rng.uniform(0.45, 0.65)),
            "gi_x": float(rng.uniform(0.2, 0.8)),
            "gb": (float(rng.uniform(0.6, 0.75)), float(rng.uniform(0.3, 0.7))),
            "grasper_angle": float(rng.uniform(-0.5, 0.5)),
        }
        clip_seed = seed * 7919 + i * 101

        def write(k: int, folder=folder, start=start, scene=scene, clip_seed=clip_seed) -> None:
            cls, rgb = _surgery_frame(clip_seed, float(k), h, w, scene)
            Image.fromarray(rgb).save(folder / f"frame_{start + k}_endo.png", compress_level=1)
            Image.fromarray(palette[cls]).save(folder / f"frame_{start + k}_endo_color_mask.png", compress_level=1)

        with ThreadPoolExecutor(_WORKERS) as pool:
            list(pool.map(write, range(frames)))


# ---------------------------------------------------------------- x-ray (CheXmask-like)
def _xray_case(rng: np.random.Generator, h: int, w: int, shifted: bool):
    yy = np.arange(h, dtype=np.float32)[:, None] / h
    xx = np.arange(w, dtype=np.float32)[None, :] / w
    cy = 0.5 + rng.uniform(-0.03, 0.03)
    sep = rng.uniform(0.19, 0.23)
    lung_r = (rng.uniform(0.28, 0.34), rng.uniform(0.14, 0.17))

    def ellipse(y0, x0, ry, rx):
        return ((yy - y0) / ry) ** 2 + ((xx - x0) / rx) ** 2 <= 1.0

    right = ellipse(cy, 0.5 - sep, *lung_r)  # patient's right lung: image left
    left = ellipse(cy + 0.02, 0.5 + sep, lung_r[0] * 0.95, lung_r[1])
    heart = ellipse(cy + 0.17, 0.5 + 0.05, 0.13, 0.15)
    thorax = ellipse(cy, 0.5, 0.48, 0.44)
    img = np.where(thorax, 150.0, 35.0) + 0 * xx
    lungs = left | right
    img = np.where(lungs, 62.0, img)
    ribs = 0.5 + 0.5 * np.sin(2 * np.pi * (yy * 9.0 + 1.2 * (xx - 0.5) ** 2))
    img = img + np.where(lungs, 22.0 * ribs**4, 0.0)
    img = np.where(heart, np.where(lungs, 150.0, 175.0), img)
    spine = np.abs(xx - 0.5) < 0.045
    img = np.where(spine & thorax, img + 50.0, img)
    img = img * (0.9 + 0.2 * _noise2d(int(rng.integers(1 << 30)), h, w, h / 6)) + rng.normal(0, 4, (h, w))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if shifted:
        img, (left, right, heart) = photograph(img, (left, right, heart), seed=int(rng.integers(1 << 31)))
    return img, left, right, heart


def _xray(out: Path, cases: int, size, seed: int, shifted: bool) -> None:
    from PIL import Image

    side = size if isinstance(size, int) else int(size[0])
    rng = np.random.default_rng(seed + (SHIFTED_SEED_OFFSET if shifted else 0))
    (out / "images").mkdir(parents=True)
    columns = ["image_id", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung", "Heart", "Height", "Width", "subject_id"]
    with open(out / "chexmask.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for i in range(cases):
            h = int(side + rng.integers(-side // 8, side // 8 + 1))
            w = int(side + rng.integers(-side // 8, side // 8 + 1))
            img, left, right, heart = _xray_case(rng, h, w, shifted)
            name = f"cxr_{i:04d}"
            Image.fromarray(img).save(out / "images" / f"{name}.png", compress_level=1)
            dice = rng.uniform(0.8, 0.95)
            writer.writerow([name, f"{dice:.4f}", f"{dice + 0.02:.4f}", "", encode_rle(left), encode_rle(right), encode_rle(heart), h, w, f"subject_{i // 2:04d}"])


# ---------------------------------------------------------------- microCT (porous material)
def _microct_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """uint16 volume and its labels (0 air, 1 matrix, 2 pore, 3 inclusion)."""
    d, h, w = shape
    yy = (np.arange(h, dtype=np.float32)[:, None] - (h - 1) / 2 - rng.uniform(-1, 1)) / (0.5 * min(h, w))
    xx = (np.arange(w, dtype=np.float32)[None, :] - (w - 1) / 2 - rng.uniform(-1, 1)) / (0.5 * min(h, w))
    radius = np.sqrt(yy**2 + xx**2)
    sample = np.broadcast_to(radius < rng.uniform(0.72, 0.88), shape)
    label = np.where(sample, 1, 0).astype(np.uint8)
    field = _smooth3d(rng, shape, tuple(max(2, n // 6) for n in shape))
    label[sample & (field > np.quantile(field, 1.0 - rng.uniform(0.18, 0.3)))] = 2
    zz, ys, xs = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    inside = np.argwhere(label == 1)
    scale = min(shape) / 64
    for _ in range(int(rng.integers(4, 9))):
        if not len(inside):
            break
        c = inside[rng.integers(len(inside))]
        r = rng.uniform(2.0, 4.5) * max(scale, 0.5)
        ball = (zz - c[0]) ** 2 + (ys - c[1]) ** 2 + (xs - c[2]) ** 2 <= r * r
        label[ball & sample] = 3
    level = np.array([0.08, 0.5, 0.08, 0.9], np.float32)  # air, matrix, pore, inclusion
    img = level[label] * np.where(label == 1, 1.0 + 0.15 * radius**2, 1.0)  # cupping in the matrix
    img = img + 0.04 * (_smooth3d(rng, shape, tuple(max(2, n // 3) for n in shape)) - 0.5)
    for axis in range(3):  # partial-volume blur
        img = 0.25 * np.roll(img, 1, axis) + 0.5 * img + 0.25 * np.roll(img, -1, axis)
    img = img + rng.normal(0, 0.04, shape).astype(np.float32)
    return np.clip(img * 40000 + 4000, 0, 65535).astype(np.uint16), label


def _microct(out: Path, cases: int, size, seed: int) -> None:
    import SimpleITK as sitk

    shape = (size,) * 3 if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    for i in range(cases):
        volume, label = _microct_case(rng, shape)
        for array, path in ((volume, out / "imagesTr" / f"microct_{i:02d}_0000.nii.gz"),
                            (label, out / "labelsTr" / f"microct_{i:02d}.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((0.005, 0.005, 0.005))
            sitk.WriteImage(image, str(path))


def make_synthetic(kind: str, out_dir: str | Path, *, cases: int | None = None, size=None, seed: int = 0, shifted: bool = False) -> Path:
    """Write a synthetic raw dataset of ``kind`` (see module docstring) into ``out_dir``.

    ``out_dir`` must not exist or be empty; it is built beside it and renamed when complete.
    """
    if kind not in SYNTHETIC_KINDS:
        raise NCAError(f"Unknown synthetic kind {kind!r}; use one of {', '.join(SYNTHETIC_KINDS)}.")
    if shifted and kind not in SHIFTED_KINDS:
        raise NCAError(f"A shifted target domain exists for the {' and '.join(SHIFTED_KINDS)} kinds only, not {kind}; "
                       f"drop the shifted option.")
    cases = DEFAULT_CASES[kind] if cases is None else int(cases)
    if cases < 1:
        raise NCAError(f"Synthetic data needs at least one case, not {cases}; raise cases.")
    size = DEFAULT_SIZE[kind] if size is None else size if isinstance(size, int) else tuple(int(s) for s in size)
    if shifted and kind == "pathology" and np.prod((size, size) if isinstance(size, int) else size) > PHOTO_MAX_PIXELS:
        raise NCAError(f"A shifted (photographed) slide is made whole in memory, so at most {PHOTO_MAX_PIXELS:,} pixels; "
                       f"pass a smaller size (4096 or less).")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise NCAError(f"The folder {out} already holds files; choose an empty or new folder for synthetic data.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    try:
        if kind == "pathology":
            _pathology(tmp, cases, size, seed, shifted)
        elif kind == "radiology":
            _radiology(tmp, cases, size, seed)
        elif kind == "surgery":
            _surgery(tmp, cases, size, seed)
        elif kind == "microct":
            _microct(tmp, cases, size, seed)
        else:
            _xray(tmp, cases, size, seed, shifted)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
