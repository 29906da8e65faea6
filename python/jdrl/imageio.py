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
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from jdrl.atomic import atomic_write
from jdrl.errors import JdrlError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageMetadata",
    "ImageReadError",
    "StoredImage",
    "is_image_file",
    "read_image",
    "read_image_array",
    "read_stored_image",
    "write_image",
    "write_image_array",
    "write_png",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
WRITABLE_BIT_DEPTHS = {".png": (8, 16), ".tif": (8, 16), ".tiff": (8, 16), ".jpg": (8,), ".jpeg": (8,), ".bmp": (8,)}


class ImageReadError(JdrlError, OSError):
    """A file exists but cannot be decoded as an image (corrupt, truncated, or not an image)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a name with one of ``IMAGE_EXTENSIONS`` (case-insensitive) that is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _decode(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(file bytes, decoded array as OpenCV stores it: (H, W[, C]) BGR[A])``; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise ImageReadError(f"cannot read image file {path}: {error.strerror or error}") from error
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if encoded.size > 0 else None
    if decoded is None:
        raise ImageReadError(f"cannot decode image file {path} (empty, corrupt, truncated or not an image)")
    if decoded.dtype not in (np.uint8, np.uint16, np.float32):
        raise ImageReadError(f"image file {path} has unsupported sample type {decoded.dtype}; use 8- or 16-bit")
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    if decoded.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"image file {path} has {decoded.shape[2]} channels; expected 1, 3 or 4")
    return encoded, decoded


def read_image_array(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as stored: ``(H, W, 3)`` RGB, dtype uint8, uint16 or float32.

    Gray images are repeated to 3 channels; an alpha channel is dropped. Raises
    ``FileNotFoundError`` for a missing file and ``ImageReadError`` for one that cannot be decoded,
    both naming the file.
    """
    _, decoded = _decode(os.fspath(path))
    channels = decoded.shape[2]
    if channels == 1:
        rgb = np.repeat(decoded, 3, axis=2)
    elif channels == 3:
        rgb = decoded[:, :, ::-1]
    else:
        rgb = decoded[:, :, 2::-1]  # BGRA -> RGB, alpha dropped
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


# --- images as stored, with their metadata (jdrl deblur) -----------------------------------------


@dataclass
class ImageMetadata:
    """What an output should carry over from its input: the ICC colour profile and the EXIF block
    (TIFF-structured bytes without the ``Exif\\0\\0`` prefix; it holds the orientation tag)."""

    icc_profile: bytes | None = None
    exif: bytes | None = None


@dataclass
class StoredImage:
    """An image as its file stores it.

    ``color``: ``(H, W, 3)`` RGB (a gray file's one channel repeated), dtype uint8, uint16 or
    float32; ``alpha``: ``(H, W, 1)`` of the same dtype, or None; ``gray``: the file is grayscale;
    ``metadata``: ICC profile and EXIF. Pixels are as stored: the EXIF orientation is not applied
    (it travels with the metadata instead, so that viewers turn the output as they turn the input).
    """

    color: np.ndarray
    alpha: np.ndarray | None
    gray: bool
    metadata: ImageMetadata

    @property
    def bit_depth(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.color.dtype, 32)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_PREFIX = b"Exif\x00\x00"


def _png_chunks(data: bytes | memoryview):
    """``(type, payload)`` of each chunk of a PNG file (stops quietly at a truncated chunk)."""
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        payload = data[position + 8 : position + 8 + length]
        if len(payload) < length:
            return
        yield bytes(kind), payload
        position += 12 + length


def _png_info(data: bytes | memoryview) -> tuple[bool, ImageMetadata]:
    """``(is gray, metadata)`` of a PNG file from its chunks (no pixel decoding)."""
    gray, metadata = False, ImageMetadata()
    for kind, payload in _png_chunks(data):
        if kind == b"IHDR" and len(payload) >= 10:
            gray = payload[9] in (0, 4)  # colour types 0 (gray) and 4 (gray + alpha)
        elif kind == b"iCCP":
            payload = bytes(payload)
            name_end = payload.find(b"\x00")
            try:
                metadata.icc_profile = zlib.decompress(payload[name_end + 2 :])
            except zlib.error:
                pass  # a damaged profile is dropped, not fatal
        elif kind == b"eXIf":
            metadata.exif = bytes(payload)
    return gray, metadata


def _pillow_info(path: str) -> tuple[bool, ImageMetadata]:
    """``(is gray, metadata)`` of a JPEG/TIFF/BMP file with Pillow (headers only; best effort)."""
    try:
        from PIL import Image
    except ImportError:
        return False, ImageMetadata()
    try:
        with Image.open(path) as image:
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
            icc = image.info.get("icc_profile") or None
            exif = None
            if image.format == "JPEG":
                raw = image.info.get("exif")
                exif = raw[len(_EXIF_PREFIX) :] if raw and raw.startswith(_EXIF_PREFIX) else raw
            elif image.format == "TIFF":
                orientation = image.getexif().get(0x0112)  # a TIFF's own tags hold its layout: keep only this
                if orientation is not None:
                    carried = Image.Exif()
                    carried[0x0112] = orientation
                    exif = carried.tobytes()[len(_EXIF_PREFIX) :]
            return gray, ImageMetadata(icc_profile=icc, exif=exif or None)
    except Exception:  # noqa: BLE001 - metadata is best effort; OpenCV decided the file is readable
        return False, ImageMetadata()


def read_stored_image(path: str | os.PathLike) -> StoredImage:
    """The image at ``path`` as stored (see :class:`StoredImage`); errors as in :func:`read_image_array`."""
    path = os.fspath(path)
    encoded, decoded = _decode(path)
    is_png = encoded[: len(_PNG_SIGNATURE)].tobytes() == _PNG_SIGNATURE
    gray, metadata = _png_info(encoded.data) if is_png else _pillow_info(path)
    del encoded
    channels = decoded.shape[2]
    gray = gray or channels == 1
    if channels == 1:
        color = np.repeat(decoded, 3, axis=2)
    else:
        color = np.ascontiguousarray(decoded[:, :, 2::-1])
    alpha = np.ascontiguousarray(decoded[:, :, 3:4]) if channels == 4 else None
    return StoredImage(color=color, alpha=alpha, gray=gray, metadata=metadata)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_png_unfiltered(pixels: np.ndarray, color_type: int) -> bytes:
    """A PNG of ``pixels (H, W, C)`` uint8/uint16 with no row filters (for what OpenCV cannot write)."""
    height, width, _ = pixels.shape
    bit_depth = 8 if pixels.dtype == np.uint8 else 16
    samples = pixels.astype(">u2") if bit_depth == 16 else pixels
    rows = np.concatenate(
        [np.zeros((height, 1), dtype=np.uint8), np.ascontiguousarray(samples).view(np.uint8).reshape(height, -1)], axis=1
    )
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def write_png(path: str | os.PathLike, pixels: np.ndarray, metadata: ImageMetadata | None = None) -> None:
    """Write ``pixels`` ``(H, W)`` or ``(H, W, C)`` (C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA),
    uint8 or uint16, as a PNG at ``path`` (atomically), with the ICC profile (``iCCP``) and EXIF
    (``eXIf``) of ``metadata``."""
    path = os.fspath(path)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot write {path}: PNG takes uint8 or uint16 samples, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2] if pixels.ndim == 3 else 0
    if channels == 1:
        bgr = pixels[:, :, 0]
    elif channels == 2:  # OpenCV writes no gray + alpha PNG
        bgr = None
    elif channels == 3:
        bgr = pixels[:, :, ::-1]
    elif channels == 4:
        bgr = np.concatenate([pixels[:, :, 2::-1], pixels[:, :, 3:]], axis=2)
    else:
        raise ValueError(f"cannot write {path}: expected (H, W) or (H, W, 1|2|3|4), got shape {pixels.shape}")
    if bgr is None:
        data = _encode_png_unfiltered(pixels, color_type=4)
    else:
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr))
        if not ok:
            raise OSError(f"OpenCV could not encode an image of shape {pixels.shape} as PNG for {path}")
        data = encoded.tobytes()
    extra = b""
    if metadata is not None and metadata.icc_profile:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(metadata.icc_profile))
    if metadata is not None and metadata.exif:
        exif = metadata.exif[len(_EXIF_PREFIX) :] if metadata.exif.startswith(_EXIF_PREFIX) else metadata.exif
        extra += _png_chunk(b"eXIf", exif)
    if extra:  # after IHDR (the first chunk), before the image data, as the PNG spec asks of both
        ihdr_end = len(_PNG_SIGNATURE) + 12 + struct.unpack(">I", data[8:12])[0]
        data = data[:ihdr_end] + extra + data[ihdr_end:]
    with atomic_write(path, "wb") as stream:
        stream.write(data)
