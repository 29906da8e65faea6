"""Tests of image I/O, the paired dataset (layouts, verification, crops), make-patches and inspect-pairs."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from jdrl import inspect_pairs, patches
from jdrl.data import LAYOUTS, DatasetError, PairedDataset, find_pairs
from jdrl.imageio import ImageReadError, read_image, read_image_array, write_image


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo crop (uint8 RGB), different per seed, so flows and sharpness behave as on real data."""
    photo = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    factor = max(1, min(4, (photo.shape[0] - 1) // max(height, width)))
    top = int(rng.integers(0, photo.shape[0] - factor * height))
    left = int(rng.integers(0, photo.shape[1] - factor * width))
    crop = photo[top : top + factor * height, left : left + factor * width]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def make_pairs(blurry_dir: Path, sharp_dir: Path, names: list[str], size=(40, 48), blurry_prefix="", sharp_prefix=""):
    for index, name in enumerate(names):
        sharp = textured(*size, seed=index)
        save_rgb(sharp_dir / f"{sharp_prefix}{name}.png", sharp)
        save_rgb(blurry_dir / f"{blurry_prefix}{name}.png", cv2.GaussianBlur(sharp, (5, 5), 1.5))


def run_command(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------------------------------------- imageio


def test_read_image_8_and_16_bit_gray_and_channel_order(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.png"), bgr)
    red = read_image(tmp_path / "red.png")
    assert red.shape == (3, 5, 7) and red.dtype == torch.float32
    assert torch.equal(red[0], torch.ones(5, 7)) and float(red[1:].abs().max()) == 0.0

    deep = np.full((4, 6, 3), 65535, np.uint16)
    deep[..., 0] = 32768  # blue channel on disk
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    cv2.imwrite(str(tmp_path / "deep.tif"), deep)
    for name in ("deep.png", "deep.tif"):
        image = read_image(tmp_path / name)
        assert torch.allclose(image[2], torch.full((4, 6), 32768 / 65535))
        assert torch.equal(image[0], torch.ones(4, 6))

    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (3, 4, 5)
    assert torch.equal(image[0], image[2]) and torch.allclose(image[1], torch.from_numpy(gray / 255.0).float())


def test_write_image_round_trip_is_atomic_and_keeps_bit_depth(tmp_path):
    image = torch.rand(3, 9, 11)
    write_image(tmp_path / "sub" / "eight.png", image)
    write_image(tmp_path / "sixteen.png", image, bit_depth=16)
    assert torch.allclose(read_image(tmp_path / "sub" / "eight.png"), image, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(read_image(tmp_path / "sixteen.png"), image, atol=0.5 / 65535 + 1e-7)
    assert read_image_array(tmp_path / "sixteen.png").dtype == np.uint16
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["eight.png", "sixteen.png"]  # no temp left
    with pytest.raises(ValueError, match="bit_depth"):
        write_image(tmp_path / "x.png", image, bit_depth=12)
    with pytest.raises(ValueError, match="uint8"):
        write_image(tmp_path / "x.jpg", image, bit_depth=16)


def test_read_image_errors_name_the_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_image(tmp_path / "absent.png")


# ---------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    "layout, blurry_rel, sharp_rel, split",
    [
        ("sdd", "blur", "gt", "train"),
        ("sdd", "test/blur", "test/gt", "test"),
        ("dpdd", "train_c/source", "train_c/target", "train"),
        ("dpdd", "test/inputC", "test/target", "test"),
        ("dpdd", "inputC", "target", "val"),
        ("realdof", "source", "target", "test"),
        ("realdof", "test/source", "test/target", "test"),
    ],
)
def test_each_layout_preset_is_found(tmp_path, layout, blurry_rel, sharp_rel, split):
    make_pairs(tmp_path / blurry_rel, tmp_path / sharp_rel, ["a", "b"])
    dataset = PairedDataset(tmp_path, layout=layout, split=split, crop=None, flip=False)
    assert [pair.name for pair in dataset.pairs] == ["a", "b"]
    item = dataset[1]
    assert item["name"] == "b" and item["blurry"].shape == item["sharp"].shape == (3, 40, 48)
    assert (
        item["blurry"].dtype == torch.float32 and 0.0 <= float(item["sharp"].min()) <= float(item["sharp"].max()) <= 1.0
    )


def test_ded_layout_scene_folders_and_prefixes(tmp_path):
    for scene in ("scene1", "scene2"):
        make_pairs(
            tmp_path / "train" / "image" / scene,
            tmp_path / "train" / "sharp" / scene,
            ["0", "1"],
            blurry_prefix="image_",
            sharp_prefix="sharp_",
        )
    (tmp_path / "train" / "filtered").mkdir()  # DED's defocus maps: present, unused
    pairs = find_pairs(tmp_path, layout="ded", split="train")
    assert [pair.name for pair in pairs] == ["scene1_0", "scene1_1", "scene2_0", "scene2_1"]
    assert pairs[0].blurry_path.name == "image_0.png" and pairs[0].sharp_path.name == "sharp_0.png"
    assert set(LAYOUTS) == {"sdd", "dpdd", "realdof", "ded"}


def test_explicit_folders_and_stem_matching_across_extensions(tmp_path):
    sharp = textured(32, 32)
    save_rgb(tmp_path / "in" / "x.jpg", sharp)
    save_rgb(tmp_path / "out" / "x.png", sharp)
    pairs = find_pairs(tmp_path, blur_dir="in", sharp_dir="out")
    assert [(p.name, p.blurry_path.suffix, p.sharp_path.suffix) for p in pairs] == [("x", ".jpg", ".png")]
    with pytest.raises(DatasetError, match="both"):
        find_pairs(tmp_path, blur_dir="in")


def test_unknown_layout_and_missing_folders_are_named(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset layout 'gopro'"):
        PairedDataset(tmp_path, layout="gopro")
    with pytest.raises(DatasetError, match="looked for") as error:
        PairedDataset(tmp_path, layout="sdd", split="train")
    assert str(tmp_path / "blur") in str(error.value)


# ---------------------------------------------------------------------------------------------- verification


def test_missing_counterpart_names_the_file(tmp_path):
    make_pairs(tmp_path / "blur", tmp_path / "gt", ["a", "b"])
    (tmp_path / "gt" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"blur/b\.png has no sharp counterpart"):
        PairedDataset(tmp_path, crop=None)
    (tmp_path / "blur" / "b.png").unlink()
    save_rgb(tmp_path / "gt" / "c.png", textured(40, 48))
    with pytest.raises(DatasetError, match=r"gt/c\.png has no blurry counterpart"):
        PairedDataset(tmp_path, crop=None)
    # both ways at once: one line, the cases apart
    (tmp_path / "blur" / "d.png").write_bytes((tmp_path / "blur" / "a.png").read_bytes())
    with pytest.raises(DatasetError) as error:
        PairedDataset(tmp_path, crop=None)
    assert "\n" not in str(error.value)
    assert str(error.value).startswith("2 unpaired image(s): blurry image ")
    assert "has no sharp counterpart in " in str(error.value) and "; sharp image " in str(error.value)


def test_unreadable_file_names_the_file(tmp_path):
    make_pairs(tmp_path / "blur", tmp_path / "gt", ["a", "b"])
    (tmp_path / "gt" / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"gt/b\.png"):
        PairedDataset(tmp_path, crop=None)


def test_truncated_file_is_caught_by_full_verification(tmp_path):
    make_pairs(tmp_path / "blur", tmp_path / "gt", ["a"])
    data = (tmp_path / "blur" / "a.png").read_bytes()
    (tmp_path / "blur" / "a.png").write_bytes(data[: len(data) // 2])
    dataset = PairedDataset(tmp_path, crop=None)  # the header is intact
    with pytest.raises(DatasetError, match=r"blur/a\.png"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"blur/a\.png"):
        PairedDataset(tmp_path, crop=None, verify="decode")


def test_size_mismatch_names_both_files(tmp_path):
    make_pairs(tmp_path / "blur", tmp_path / "gt", ["a"])
    save_rgb(tmp_path / "gt" / "a.png", textured(40, 50))
    with pytest.raises(DatasetError, match=r"blur/a\.png is 48x40.*gt/a\.png is 50x40"):
        PairedDataset(tmp_path, crop=None)


def test_crop_larger_than_image_names_it(tmp_path):
    make_pairs(tmp_path / "blur", tmp_path / "gt", ["a"], size=(40, 48))
    with pytest.raises(DatasetError, match=r"crop 41 is larger than image .*blur/a\.png \(48x40"):
        PairedDataset(tmp_path, crop=41)
    assert PairedDataset(tmp_path, crop=40)[0]["sharp"].shape == (3, 40, 40)


# ---------------------------------------------------------------------------------------------- crops and flips


@pytest.fixture()
def coordinate_dataset(tmp_path) -> Path:
    """Sharp pixels encode their own (x, y); blurry = 255 - sharp, so any pixelwise mix-up shows."""
    height, width = 37, 53
    ys, xs = np.mgrid[0:height, 0:width]
    sharp = np.stack([xs * 4, ys * 6, (xs + ys) % 256], axis=2).astype(np.uint8)
    for name in ("p0", "p1", "p2"):
        save_rgb(tmp_path / "gt" / f"{name}.png", sharp)
        save_rgb(tmp_path / "blur" / f"{name}.png", 255 - sharp)
    return tmp_path


def test_identical_crop_and_flip_for_both_images(coordinate_dataset):
    dataset = PairedDataset(coordinate_dataset, crop=16, flip=True, seed=3)
    seen_windows, seen_flips = set(), set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            blurry, sharp = item["blurry"], item["sharp"]
            assert blurry.shape == sharp.shape == (3, 16, 16)
            assert torch.allclose(blurry, 1.0 - sharp, atol=1e-6)  # same window, same flips
            x = (sharp[0] * 255).round() / 4
            y = (sharp[1] * 255).round() / 6
            flip_x = bool(x[0, 0] > x[0, -1])
            flip_y = bool(y[0, 0] > y[-1, 0])
            seen_flips.add((flip_x, flip_y))
            seen_windows.add((int(x.min()), int(y.min())))
            # a crop stays a contiguous window: coordinates step by exactly one pixel
            assert torch.equal((x[:, 1:] - x[:, :-1]).abs(), torch.ones(16, 15))
            assert torch.equal((y[1:] - y[:-1]).abs(), torch.ones(15, 16))
    assert len(seen_flips) == 4 and len(seen_windows) > 10


def test_items_are_deterministic_given_seed_epoch_and_index(coordinate_dataset):
    first = PairedDataset(coordinate_dataset, crop=16, seed=5)
    second = PairedDataset(coordinate_dataset, crop=16, seed=5)
    for index in (2, 0, 1):  # order of access must not matter (workers, DDP ranks)
        assert torch.equal(first[index]["sharp"], second[index]["sharp"])
    other_seed = PairedDataset(coordinate_dataset, crop=16, seed=6)
    assert any(not torch.equal(first[i]["sharp"], other_seed[i]["sharp"]) for i in range(3))
    first.set_epoch(1)
    second.set_epoch(1)
    assert torch.equal(first[0]["sharp"], second[0]["sharp"])
    whole = PairedDataset(coordinate_dataset, crop=None, flip=False)[0]
    assert whole["sharp"].shape == (3, 37, 53)


# ---------------------------------------------------------------------------------------------- make-patches


def test_make_patches_on_a_2x2_grid(tmp_path):
    quadrant = 32
    sharp = np.zeros((2 * quadrant, 2 * quadrant, 3), np.uint8)
    sharp[:quadrant, :quadrant] = textured(quadrant, quadrant, seed=1)
    sharp[:quadrant, quadrant:] = textured(quadrant, quadrant, seed=2)
    sharp[quadrant:, :quadrant] = 128  # flat: the sharpness filter must drop it
    sharp[quadrant:, quadrant:] = textured(quadrant, quadrant, seed=3)
    blurry = cv2.GaussianBlur(sharp, (5, 5), 1.0)
    save_rgb(tmp_path / "src" / "blur" / "big.png", blurry)
    save_rgb(tmp_path / "src" / "gt" / "big.png", sharp)

    out = tmp_path / "dst"
    assert (
        run_command(patches, ["make-patches", str(tmp_path / "src"), str(out), "--size", "32", "--stride", "32"]) == 0
    )
    names = sorted(p.stem for p in (out / "gt").glob("*.png"))
    assert names == ["big_y00000_x00000", "big_y00000_x00032", "big_y00032_x00000", "big_y00032_x00032"]
    assert names == sorted(p.stem for p in (out / "blur").glob("*.png"))
    for name in names:
        top, left = int(name[5:10]), int(name[12:17])
        window = (slice(top, top + quadrant), slice(left, left + quadrant))
        assert np.array_equal(read_image_array(out / "gt" / f"{name}.png"), sharp[window])
        assert np.array_equal(read_image_array(out / "blur" / f"{name}.png"), blurry[window])
    assert len(PairedDataset(out, crop=32)) == 4  # the output is an SDD-layout dataset

    with pytest.raises(FileExistsError, match="overwrite"):
        patches.make_patches(tmp_path / "src", out, size=32)
    filtered = patches.make_patches(tmp_path / "src", tmp_path / "filtered", size=32, min_sharpness=1e-5)
    assert (filtered.kept, filtered.dropped) == (3, 1)
    assert not (tmp_path / "filtered" / "gt" / "big_y00032_x00000.png").exists()
    with open(tmp_path / "filtered" / "patches.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["kept"] for row in rows] == ["1", "1", "0", "1"]
    with pytest.raises(DatasetError, match=r"patch size 65 is larger than image .*big\.png"):
        patches.make_patches(tmp_path / "src", tmp_path / "big", size=65)


def test_window_starts_with_and_without_edge_cover():
    assert patches.window_starts(100, 32, 32) == [0, 32, 64]
    assert patches.window_starts(100, 32, 32, cover_edges=True) == [0, 32, 64, 68]
    assert patches.window_starts(20, 32, 32) == []


def test_make_patches_16_bit_source(tmp_path):
    deep = (np.random.default_rng(0).random((32, 64, 3)) * 65535).astype(np.uint16)
    for folder in ("blur", "gt"):
        (tmp_path / "src" / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "src" / folder / "d.png"), deep)
    summary = patches.make_patches(tmp_path / "src", tmp_path / "dst", size=32)
    assert summary.kept == 2
    patch = read_image_array(tmp_path / "dst" / "gt" / "d_y00000_x00032.png")
    assert patch.dtype == np.uint16 and np.array_equal(patch, deep[:, 32:, ::-1])


# ---------------------------------------------------------------------------------------------- inspect-pairs


def test_inspect_pairs_recovers_a_known_zoom_and_shift(tmp_path, capsys):
    size, scale, shift = 128, 0.02, (3.0, -2.0)
    centre = (size - 1) / 2
    for index in range(2):
        sharp = textured(size, size, seed=10 + index)
        # blurry(p) = sharp(c + (1 + s)(p - c) + t): the flow the fit models, exactly
        warp = np.array([[1 + scale, 0, shift[0] - scale * centre], [0, 1 + scale, shift[1] - scale * centre]])
        blurry = cv2.warpAffine(
            sharp, warp, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
        save_rgb(tmp_path / "blur" / f"{index}.png", blurry)
        save_rgb(tmp_path / "gt" / f"{index}.png", sharp)
    table = tmp_path / "report.csv"
    assert run_command(inspect_pairs, ["inspect-pairs", str(tmp_path), "--csv", str(table)]) == 0
    printed = capsys.readouterr().out
    assert "2 pairs" in printed and "zoom_pct" in printed
    with open(table) as stream:
        rows = list(csv.DictReader(stream))
    expected_zoom = 100 * (1 / (1 + scale) - 1)
    for row in rows:
        assert abs(float(row["zoom_pct"]) - expected_zoom) < 0.3
        assert abs(float(row["shift_x_px"]) - shift[0]) < 0.3 and abs(float(row["shift_y_px"]) - shift[1]) < 0.3
        assert 0.0 < float(row["mask_kept"]) <= 1.0 and float(row["median_flow_px"]) > 1.0

    flow = torch.zeros(2, 9, 11)
    flow[0] += 1.5
    s, tx, ty, rms = inspect_pairs.fit_zoom_shift(flow)
    assert abs(s) < 1e-12 and abs(tx - 1.5) < 1e-12 and abs(ty) < 1e-12 and rms < 1e-12
