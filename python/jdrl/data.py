"""Paired blurry/sharp datasets: folder layouts, verification, and identical random crops.

Folder layouts (``layout=``), each tried in the order listed, ``{split}`` being the ``split``
argument; the first candidate whose two folders both exist is used:

- ``"sdd"`` (SDD, and what ``jdrl make-patches`` and ``jdrl synth`` write):
  ``root/{split}/blur`` + ``root/{split}/gt``, else ``root/blur`` + ``root/gt``.
- ``"dpdd"`` (DPDD as released, and as re-packed by Restormer's scripts):
  ``root/{split}_c/source`` + ``root/{split}_c/target``, else ``root/{split}/inputC`` +
  ``root/{split}/target``, else ``root/inputC`` + ``root/target``.
- ``"realdof"`` (RealDOF, a test set only): ``root/{split}/source`` + ``root/{split}/target``,
  else ``root/source`` + ``root/target``.
- ``"ded"`` (DED of Ma et al., as loaded by the DID-ANet code): light-field scenes in one sub-folder
  each, blurry images ``image/<scene>/image_<n>.jpg``, all-in-focus images
  ``sharp/<scene>/sharp_<n>.jpg`` (the defocus maps in ``filtered/`` are not used):
  ``root/{split}/image`` + ``root/{split}/sharp``, else ``root/image`` + ``root/sharp``. The
  ``image_`` / ``sharp_`` prefixes are removed before matching, and scene sub-folders are
  searched. (The DED test set has no ground truth; JDRL re-split its training set 8:2 — put such a
  split under ``root/train`` and ``root/test``.)
- explicit folders: ``blur_dir=`` and ``sharp_dir=`` (relative to ``root`` unless absolute)
  override the preset.

Pairs are matched by their path relative to the folder without the extension (the file stem for
flat folders), so ``blur/0001.png`` pairs with ``gt/0001.jpg``. Everything is verified when the
dataset is built, before any training step: a file without a counterpart, an unreadable file, two
images of a pair with different sizes, and a crop larger than an image each raise a
``DatasetError`` that names the file(s).

Randomness: the crop window and the flips of item ``index`` come from a generator seeded with
``(seed, epoch, index)``, so an item is the same on every run, on every DDP rank, in every
DataLoader worker and after a resume; ``set_epoch(epoch)`` (the trainer calls it at the start of
each epoch, as with ``DistributedSampler``) gives each epoch new crops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from jdrl.imageio import ImageReadError, is_image_file, read_image, read_image_array
from jdrl.errors import JdrlError

__all__ = [
    "LAYOUTS",
    "DatasetError",
    "ImagePair",
    "LayoutPreset",
    "PairedDataset",
    "find_pairs",
    "resolve_folders",
]


class DatasetError(JdrlError, RuntimeError):
    """A dataset on disk is not usable as given; the message names the file(s) or folder(s)."""


@dataclass(frozen=True)
class LayoutPreset:
    """Where a layout keeps its blurry and sharp images.

    ``candidates`` are ``(blurry folder, sharp folder)`` templates relative to the root, with
    ``{split}`` filled in, tried in order. ``blurry_prefix`` / ``sharp_prefix`` are removed from
    the file stems before matching; ``recursive`` searches sub-folders.
    """

    name: str
    candidates: tuple[tuple[str, str], ...]
    blurry_prefix: str = ""
    sharp_prefix: str = ""
    recursive: bool = False


LAYOUTS: dict[str, LayoutPreset] = {
    "sdd": LayoutPreset("sdd", (("{split}/blur", "{split}/gt"), ("blur", "gt"))),
    "dpdd": LayoutPreset(
        "dpdd",
        (("{split}_c/source", "{split}_c/target"), ("{split}/inputC", "{split}/target"), ("inputC", "target")),
    ),
    "realdof": LayoutPreset("realdof", (("{split}/source", "{split}/target"), ("source", "target"))),
    "ded": LayoutPreset(
        "ded",
        (("{split}/image", "{split}/sharp"), ("image", "sharp")),
        blurry_prefix="image_",
        sharp_prefix="sharp_",
        recursive=True,
    ),
}


class ImagePair(NamedTuple):
    """One verified pair: a name unique in the dataset, both paths, and the common ``(H, W)``."""

    name: str
    blurry_path: Path
    sharp_path: Path
    size: tuple[int, int]


def resolve_folders(
    root: str | os.PathLike | None,
    layout: str = "sdd",
    split: str = "train",
    blur_dir: str | os.PathLike | None = None,
    sharp_dir: str | os.PathLike | None = None,
) -> tuple[Path, Path]:
    """The ``(blurry folder, sharp folder)`` that ``layout`` (or the explicit folders) names under ``root``."""
    if (blur_dir is None) != (sharp_dir is None):
        raise DatasetError(
            f"give both blur_dir and sharp_dir or neither; got blur_dir={blur_dir}, sharp_dir={sharp_dir}"
        )
    if blur_dir is not None:
        base = Path(root) if root is not None else Path(".")
        folders = (base / Path(blur_dir), base / Path(sharp_dir))
        for folder in folders:
            if not folder.is_dir():
                raise DatasetError(f"image folder not found: {folder}")
        return folders
    if layout not in LAYOUTS:
        raise DatasetError(
            f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)} or give blur_dir/sharp_dir"
        )
    if root is None:
        raise DatasetError(f"layout {layout!r} needs a dataset root folder")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    tried = []
    for blurry_template, sharp_template in LAYOUTS[layout].candidates:
        blurry = root / blurry_template.format(split=split)
        sharp = root / sharp_template.format(split=split)
        if blurry.is_dir() and sharp.is_dir():
            return blurry, sharp
        tried.append(f"{blurry} + {sharp}")
    raise DatasetError(f"no {layout!r} layout under {root} for split {split!r}; looked for: " + "; ".join(tried))


def _list_images(folder: Path, prefix: str, recursive: bool) -> dict[str, Path]:
    """Matching key -> path for the images in ``folder``; two files with one key are an error."""
    found: dict[str, Path] = {}
    paths = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(paths):
        if not path.is_file() or not is_image_file(path):
            continue
        relative = path.relative_to(folder).with_suffix("")
        stem = relative.name
        if prefix and stem.startswith(prefix):
            stem = stem[len(prefix) :]
        key = (relative.parent / stem).as_posix() if relative.parent != Path(".") else stem
        if key in found:
            raise DatasetError(f"two images in {folder} match as {key!r}: {found[key]} and {path}; keep one")
        found[key] = path
    return found


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(H, W)`` from the file header alone, or None when PIL cannot parse it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - PIL raises many types (incl. DecompressionBombError); cv2 decides then
        return None
    return height, width


def _image_size(path: Path, decode: bool) -> tuple[int, int]:
    """``(H, W)`` of an image, from its header unless ``decode`` (or the header is unreadable).

    The header is enough to catch empty and non-image files at a fraction of a decode's cost. A
    file PIL cannot parse is not necessarily unreadable (OpenCV decodes some that PIL does not), so
    OpenCV has the last word.
    """
    if not decode:
        size = _header_size(path)
        if size is not None:
            return size
    try:
        array = read_image_array(path)
    except (ImageReadError, FileNotFoundError) as error:
        raise DatasetError(str(error)) from error
    return array.shape[0], array.shape[1]


def find_pairs(
    root: str | os.PathLike | None,
    layout: str = "sdd",
    split: str = "train",
    blur_dir: str | os.PathLike | None = None,
    sharp_dir: str | os.PathLike | None = None,
    verify: str = "header",
) -> list[ImagePair]:
    """All verified pairs of a dataset, sorted by name.

    ``verify="header"`` reads each file's header (size, and that it is an image at all);
    ``"decode"`` decodes every image, which also catches truncated files, at the cost of reading
    the whole dataset once. Raises ``DatasetError`` naming the file(s) on any problem.
    """
    if verify not in ("header", "decode"):
        raise DatasetError(f"verify must be 'header' or 'decode', got {verify!r}")
    blurry_folder, sharp_folder = resolve_folders(root, layout, split, blur_dir, sharp_dir)
    preset = LAYOUTS.get(layout) if blur_dir is None else None
    blurry_files = _list_images(
        blurry_folder, preset.blurry_prefix if preset else "", preset.recursive if preset else False
    )
    sharp_files = _list_images(
        sharp_folder, preset.sharp_prefix if preset else "", preset.recursive if preset else False
    )
    if not blurry_files and not sharp_files:
        raise DatasetError(f"no images in {blurry_folder} or {sharp_folder}")
    without_sharp = sorted(set(blurry_files) - set(sharp_files))
    without_blurry = sorted(set(sharp_files) - set(blurry_files))
    if without_sharp or without_blurry:
        lines = [f"blurry image {blurry_files[k]} has no sharp counterpart in {sharp_folder}" for k in without_sharp]
        lines += [f"sharp image {sharp_files[k]} has no blurry counterpart in {blurry_folder}" for k in without_blurry]
        shown = lines[:10] + ([f"... and {len(lines) - 10} more"] if len(lines) > 10 else [])
        # one line with "; " between the cases: the command prints errors on one line
        raise DatasetError(f"{len(lines)} unpaired image(s): " + "; ".join(shown))
    pairs = []
    for key in sorted(blurry_files):
        blurry_path, sharp_path = blurry_files[key], sharp_files[key]
        blurry_size = _image_size(blurry_path, decode=verify == "decode")
        sharp_size = _image_size(sharp_path, decode=verify == "decode")
        if blurry_size != sharp_size:
            raise DatasetError(
                f"image sizes differ within a pair: {blurry_path} is {blurry_size[1]}x{blurry_size[0]} (WxH) but "
                f"{sharp_path} is {sharp_size[1]}x{sharp_size[0]}"
            )
        pairs.append(ImagePair(key.replace("/", "_"), blurry_path, sharp_path, blurry_size))
    names = [pair.name for pair in pairs]
    if len(set(names)) != len(names):
        raise DatasetError(f"pair names collide after flattening sub-folders in {blurry_folder}; rename the files")
    return pairs


class PairedDataset(Dataset):
    """Blurry/sharp pairs from a folder layout, with an identical random crop and flips for both.

    Items are dicts ``{"blurry": (3, h, w) float32 in [0, 1], "sharp": (3, h, w), "name": str}``
    with ``h = w = crop`` (``crop=None`` keeps the whole image). ``flip`` draws a horizontal and a
    vertical flip, each with probability 1/2, applied to both images. ``verify`` is passed to
    ``find_pairs`` ("header" or "decode"). See the module docstring for layouts, verification and
    the seeding scheme.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        layout: str = "sdd",
        split: str = "train",
        crop: int | None = 512,
        flip: bool = True,
        seed: int = 0,
        blur_dir: str | os.PathLike | None = None,
        sharp_dir: str | os.PathLike | None = None,
        verify: str = "header",
    ) -> None:
        if crop is not None and (not isinstance(crop, int) or crop < 1):
            raise DatasetError(f"crop must be a positive int or None, got {crop!r}")
        self.root = root
        self.layout = layout
        self.split = split
        self.crop = crop
        self.flip = flip
        self.seed = int(seed)
        self.epoch = 0
        self.pairs = find_pairs(root, layout, split, blur_dir, sharp_dir, verify=verify)
        if crop is not None:
            too_small = [pair for pair in self.pairs if min(pair.size) < crop]
            if too_small:
                pair = too_small[0]
                raise DatasetError(
                    f"crop {crop} is larger than image {pair.blurry_path} ({pair.size[1]}x{pair.size[0]} WxH)"
                    + (f" and {len(too_small) - 1} other image(s)" if len(too_small) > 1 else "")
                    + "; lower the crop or use crop=None"
                )

    def set_epoch(self, epoch: int) -> None:
        """Make the crops and flips of this epoch differ from those of other epochs (reproducibly)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, path: Path) -> torch.Tensor:
        try:
            return read_image(path)
        except (ImageReadError, FileNotFoundError) as error:
            raise DatasetError(str(error)) from error

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        blurry = self._read(pair.blurry_path)
        sharp = self._read(pair.sharp_path)
        if blurry.shape != sharp.shape:  # the files changed since verification
            raise DatasetError(
                f"image sizes differ within a pair: {pair.blurry_path} {tuple(blurry.shape)} vs "
                f"{pair.sharp_path} {tuple(sharp.shape)}"
            )
        # Drawn in a fixed order whatever the options, so an item's crop does not depend on `flip`.
        generator = np.random.default_rng((self.seed, self.epoch, index))
        height, width = blurry.shape[1:]
        top_fraction, left_fraction, flip_horizontal, flip_vertical = generator.random(4)
        if self.crop is not None:
            if min(height, width) < self.crop:
                raise DatasetError(f"crop {self.crop} is larger than image {pair.blurry_path} ({width}x{height} WxH)")
            top = int(top_fraction * (height - self.crop + 1))
            left = int(left_fraction * (width - self.crop + 1))
            blurry = blurry[:, top : top + self.crop, left : left + self.crop]
            sharp = sharp[:, top : top + self.crop, left : left + self.crop]
        if self.flip:
            dims = [d for d, draw in ((2, flip_horizontal), (1, flip_vertical)) if draw < 0.5]
            if dims:
                blurry = torch.flip(blurry, dims)
                sharp = torch.flip(sharp, dims)
        return {"blurry": blurry.contiguous(), "sharp": sharp.contiguous(), "name": pair.name}
