"""Reading and writing images as float tensors in [0, 1].

Images travel through the framework as ``(3, H, W)`` float32 RGB tensors in ``[0, 1]``. On disk
they are 8- or 16-bit PNG, JPEG, TIFF or BMP files, read and written with OpenCV (which stores
colour as BGR, so every read and write swaps the channel order). Reading goes through
``np.fromfile`` + ``cv2.imdecode`` rather than ``cv2.imread`` so that paths with non-ASCII
characters work on every platform, and so that an unreadable file can be told apart from a missing
one. Writing is atomic: the encoded bytes go to a temporary file in the destination folder, which
then replaces the destination with ``os.replace``; an interrupted run never leaves half a PNG that
a later run would mistake for a result.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from jdrl.atomic import atomic_write
from jdrl.errors import JdrlError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "is_image_file",
    "read_image",
    "read_image_array",
    "write_image",
    "write_image_array",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
WRITABLE_BIT_DEPTHS = {".png": (8, 16), ".tif": (8, 16), ".tiff": (8, 16), ".jpg": (8,), ".jpeg": (8,), ".bmp": (8,)}


class ImageReadError(JdrlError, OSError):
    """A file exists but cannot be decoded as an image (corrupt, truncated, or not an image)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a name with one of ``IMAGE_EXTENSIONS`` (case-insensitive) that is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as stored: ``(H, W, 3)`` RGB, dtype uint8, uint16 or float32.

    Gray images are repeated to 3 channels; an alpha channel is dropped. Raises
    ``FileNotFoundError`` for a missing file and ``ImageReadError`` for one that cannot be decoded,
    both naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(f"cannot read image file {path}: {error}") from error
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size > 0 else None
    if decoded is None:
        raise ImageReadError(f"cannot decode image file {path} (corrupt, truncated or not an image)")
    if decoded.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageReadError(f"image file {path} has unsupported sample type {decoded.dtype}; use 8- or 16-bit")
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    channels = decoded.shape[2]
    if channels == 1:
        rgb = np.repeat(decoded, 3, axis=2)
    elif channels == 3:
        rgb = decoded[:, :, ::-1]
    elif channels == 4:
        rgb = decoded[:, :, 2::-1]  # BGRA -> RGB, alpha dropped
    else:
        raise ImageReadError(f"image file {path} has {channels} channels; expected 1, 3 or 4")
    return np.ascontiguousarray(rgb)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """The image at ``path`` as a ``(3, H, W)`` float32 RGB tensor in ``[0, 1]``.

    8-bit samples are divided by 255, 16-bit ones by 65535; float TIFFs are taken as already in
    ``[0, 1]`` and clipped to it. Errors as in ``read_image_array``.
    """
    array = read_image_array(path)
    if array.dtype == np.uint8:
        scaled = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        scaled = array.astype(np.float32) / 65535.0
    else:
        scaled = np.clip(array, 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


def _to_hwc_array(image: torch.Tensor | np.ndarray, bit_depth: int) -> np.ndarray:
    """``(3, H, W)``, ``(1, 3, H, W)``, ``(1, H, W)`` or ``(H, W)`` floats in [0, 1] -> quantized ``(H, W, C)`` RGB."""
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu", torch.float32).numpy()
    else:
        array = np.asarray(image, dtype=np.float32)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"write_image takes one image; got a batch of shape {array.shape}")
        array = array[0]
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"write_image expects (3, H, W), (1, H, W) or (H, W); got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("write_image got non-finite values (NaN or inf); refusing to write them")
    peak = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    quantized = np.rint(np.clip(array, 0.0, 1.0) * peak).astype(dtype)
    return quantized.transpose(1, 2, 0)


def write_image_array(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` RGB or ``(H, W)`` gray uint8/uint16 array atomically to ``path``.

    The format follows the extension; the parent folder is created when missing.
    """
    path = os.fspath(path)
    extension = os.path.splitext(path)[1].lower()
    if extension not in WRITABLE_BIT_DEPTHS:
        raise ValueError(f"cannot write {path}: extension must be one of {', '.join(WRITABLE_BIT_DEPTHS)}")
    bit_depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(array.dtype)
    if bit_depth is None or bit_depth not in WRITABLE_BIT_DEPTHS[extension]:
        allowed = " or ".join(f"uint{b}" for b in WRITABLE_BIT_DEPTHS[extension])
        raise ValueError(f"cannot write {path}: {extension} takes {allowed} samples, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim != 2:
        raise ValueError(f"cannot write {path}: expected (H, W, 3) or (H, W), got shape {array.shape}")
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"OpenCV could not encode an image of shape {array.shape} as {extension} for {path}")
    with atomic_write(path, "wb") as stream:
        stream.write(encoded.tobytes())


def write_image(path: str | os.PathLike, image: torch.Tensor | np.ndarray, bit_depth: int = 8) -> None:
    """Write a ``(3, H, W)`` (or ``(1, 3, H, W)``, ``(1, H, W)``, ``(H, W)``) image in ``[0, 1]`` to ``path``.

    Values are clipped to ``[0, 1]`` and rounded to ``bit_depth`` bits (8, or 16 for PNG/TIFF).
    The write is atomic (temporary file, then ``os.replace``).
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    write_image_array(path, _to_hwc_array(image, bit_depth))
