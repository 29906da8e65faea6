"""Tests of `jdrl synth`: layout, determinism, the stored warp, the blur map, the realistic
misalignment (parallax, occlusions, non-rigid warp, photometric change), argument errors."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from jdrl import synth
from jdrl.synth import SynthError, make_synthetic_dataset

SIZE = 48
# The misalignment of the earlier versions: one global zoom and shift, nothing else.
GLOBAL_ONLY = {"parallax": 0.0, "nonrigid": 0.0, "exposure": 0.0, "white_balance": 0.0, "gamma": 0.0, "occluders": 0}
GLOBAL_ONLY_PARAMS = {**GLOBAL_ONLY, "parallax": (0.0, 0.0), "nonrigid": (0.0, 0.0)}


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image[:, :, ::-1].astype(np.float32) / 255.0


def remap_with_flow(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """out(p) = image(p + flow(p)), bilinear, borders clamped (flow_warp's "border")."""
    height, width = flow.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return cv2.remap(image, xs + flow[0], ys + flow[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pair_names(root: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (root / split / "blur").glob("*.png"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synth"), 3, 2, size=SIZE, shift=(1.0, 3.0), zoom=0.02, max_radius=3.0, seed=7
    )


def test_layout_and_meta(dataset: Path) -> None:
    for split, count in (("train", 3), ("test", 2)):
        names = pair_names(dataset, split)
        assert len(names) == count
        for name in names:
            for folder in ("blur", "gt", "gt_aligned"):
                image = cv2.imread(str(dataset / split / folder / f"{name}.png"), cv2.IMREAD_UNCHANGED)
                assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
            flow = np.load(dataset / split / "warp" / f"{name}.npy")
            radius = np.load(dataset / split / "radius" / f"{name}.npy")
            assert flow.shape == (2, SIZE, SIZE) and flow.dtype == np.float32
            assert radius.shape == (SIZE, SIZE) and radius.dtype == np.float32
            assert 0.0 <= radius.min() and radius.max() <= 3.0 + 1e-5
    meta = json.loads((dataset / "meta.json").read_text())
    assert meta["seed"] == 7 and meta["shift"] == [1.0, 3.0] and meta["zoom"] == [0.02, 0.02]
    assert meta["counts"] == {"train": 3, "test": 2}
    # The bundled test photos are held out of the train split.
    assert not set(meta["sources"]["train"]) & set(meta["sources"]["test"])
    assert meta["parallax"] == [3.0, 3.0] and meta["nonrigid"] == [1.0, 1.0] and meta["occluders"] == 2
    assert meta["exposure"] == 0.03 and meta["white_balance"] == 0.02 and meta["gamma"] == 0.02
    # What dataset caches (jdrl ablate, the misalignment study) compare a stored set against.
    assert synth.synth_defaults_meta().items() <= meta.items()
    for record in meta["pairs"]["train"]:
        assert record["parallax_px"] == 3.0 and len(record["occluders"]) == 2
        assert 0 <= record["occluded_fraction"] < 0.2 and 0 <= record["disoccluded_fraction"] < 0.2
        assert 1.0 <= float(np.hypot(*record["shift_xy"])) <= 3.0
        assert abs(record["zoom"]) == pytest.approx(0.02)
        assert record["psf"] in ("disk", "gaussian")


def test_deterministic_given_seed(dataset: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(
        tmp_path / "again", 3, 2, size=SIZE, shift=(1.0, 3.0), zoom=0.02, max_radius=3.0, seed=7
    )
    for split in ("train", "test"):
        assert pair_names(again, split) == pair_names(dataset, split)
        for name in pair_names(dataset, split):
            for relative in (f"blur/{name}.png", f"gt/{name}.png", f"warp/{name}.npy", f"radius/{name}.npy"):
                assert (again / split / relative).read_bytes() == (dataset / split / relative).read_bytes()
    other = make_synthetic_dataset(
        tmp_path / "other", 1, 0, size=SIZE, shift=(1.0, 3.0), zoom=0.02, max_radius=3.0, seed=8
    )
    name_7, name_8 = pair_names(dataset, "train")[0], pair_names(other, "train")[0]
    assert not np.array_equal(
        read_rgb(dataset / "train/blur" / f"{name_7}.png"), read_rgb(other / "train/blur" / f"{name_8}.png")
    )


def test_stored_warp_aligns_gt_to_gt_aligned(dataset: Path) -> None:
    inner = slice(4, -4)  # the misaligned target has no content for the outermost pixels
    for split in ("train", "test"):
        for name in pair_names(dataset, split):
            gt = read_rgb(dataset / split / "gt" / f"{name}.png")
            aligned = read_rgb(dataset / split / "gt_aligned" / f"{name}.png")
            flow = np.load(dataset / split / "warp" / f"{name}.npy")
            warped = remap_with_flow(gt, flow)
            error_after = np.abs(warped - aligned)[inner, inner].mean()
            error_before = np.abs(gt - aligned)[inner, inner].mean()
            assert error_after < 0.03, (name, error_after)
            assert error_after < 0.4 * error_before, (name, error_after, error_before)


def test_stored_warp_matches_jdrl_ext_flow_warp(dataset: Path) -> None:
    """The stored flow follows jdrl_ext's convention (channel 0 = x, out(p) = image(p + flow(p)))."""
    jdrl_ext = pytest.importorskip("jdrl_ext")
    torch = pytest.importorskip("torch")
    name = pair_names(dataset, "train")[0]
    gt = read_rgb(dataset / "train" / "gt" / f"{name}.png")
    aligned = read_rgb(dataset / "train" / "gt_aligned" / f"{name}.png")
    flow = np.load(dataset / "train" / "warp" / f"{name}.npy")
    image = torch.from_numpy(gt).permute(2, 0, 1)[None].contiguous()
    warped = jdrl_ext.flow_warp(image, torch.from_numpy(flow)[None], padding_mode="border")
    warped = warped[0].permute(1, 2, 0).numpy()
    assert np.abs(warped - remap_with_flow(gt, flow)).max() < 1e-3
    assert np.abs(warped - aligned)[4:-4, 4:-4].mean() < 0.03


def test_misaligned_target_matches_the_flow_exactly() -> None:
    """Before quantization, gt(p + flow(p)) reproduces gt_aligned up to interpolation error."""
    params = synth.SynthParams(
        size=64, shift=(2.5, 2.5), zoom=(0.015, 0.015), max_radius=2.0, noise=0.0, **GLOBAL_ONLY_PARAMS
    )
    photo = synth.load_source_photos()[0].load()
    pair = synth.make_pair(photo, params, np.random.default_rng(0), np.random.default_rng(1))
    record = pair.record
    assert np.hypot(*record["shift_xy"]) == pytest.approx(2.5)
    # An affine flow: its value at the zoom centre is the shift, its slope the zoom.
    np.testing.assert_allclose(pair.flow[:, 0, 1] - pair.flow[:, 0, 0], [record["zoom"], 0.0], atol=1e-6)
    warped = remap_with_flow(pair.sharp, pair.flow)
    assert np.abs(warped - pair.sharp_aligned)[4:-4, 4:-4].mean() < 0.03


def test_zero_misalignment_gives_identical_targets(tmp_path: Path) -> None:
    root = make_synthetic_dataset(
        tmp_path / "zero", 2, 1, size=32, shift=0.0, zoom=0.0, max_radius=2.0, seed=1, **GLOBAL_ONLY
    )
    for split in ("train", "test"):
        for name in pair_names(root, split):
            assert (root / split / "gt" / f"{name}.png").read_bytes() == (
                root / split / "gt_aligned" / f"{name}.png"
            ).read_bytes()
            assert not np.load(root / split / "warp" / f"{name}.npy").any()


def test_misalignment_does_not_change_the_blurry_images(tmp_path: Path) -> None:
    """Study arms at different shifts/zooms share the scenes: same seed, same blurry images."""
    small = make_synthetic_dataset(
        tmp_path / "s0", 2, 0, size=32, shift=0.0, zoom=0.0, max_radius=2.0, seed=3, **{**GLOBAL_ONLY, "occluders": 2}
    )
    large = make_synthetic_dataset(tmp_path / "s4", 2, 0, size=32, shift=4.0, zoom=0.02, max_radius=2.0, seed=3)
    other = make_synthetic_dataset(
        tmp_path / "s5", 2, 0, size=32, shift=1.0, zoom=0.0, max_radius=2.0, seed=3,
        parallax=(1.0, 2.0), nonrigid=0.5, exposure=0.1, white_balance=0.0, gamma=0.05,
    )
    for name in pair_names(small, "train"):
        for folder in ("blur", "gt_aligned"):
            expected = (small / "train" / folder / f"{name}.png").read_bytes()
            assert (large / "train" / folder / f"{name}.png").read_bytes() == expected
            assert (other / "train" / folder / f"{name}.png").read_bytes() == expected
        assert (large / "train/gt" / f"{name}.png").read_bytes() != (other / "train/gt" / f"{name}.png").read_bytes()


def test_global_only_settings_reproduce_the_earlier_pairs() -> None:
    """With the new parts off, the misalignment is exactly the zoom-and-shift flow (no occlusions)."""
    params = synth.SynthParams(size=48, max_radius=2.0, **GLOBAL_ONLY_PARAMS)
    photo = synth.load_source_photos()[1].load()
    pair = synth.make_pair(photo, params, np.random.default_rng(3), np.random.default_rng(4))
    record = pair.record
    expected = synth.misalignment_flow(48, record["shift_xy"], record["zoom"], record["zoom_centre_xy"])
    np.testing.assert_array_equal(pair.flow, expected)
    assert not pair.occluded.any() and not pair.disoccluded.any() and record["occluders"] == []


def parallax_only_params(**overrides) -> synth.SynthParams:
    settings = {**GLOBAL_ONLY_PARAMS, "shift": (0.0, 0.0), "zoom": (0.0, 0.0), "parallax": (3.0, 3.0)}
    return synth.SynthParams(size=64, max_radius=3.0, noise=0.0, **{**settings, **overrides})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parallax_follows_the_inverse_depth_that_drives_the_blur(seed: int) -> None:
    params = parallax_only_params()
    photo = synth.load_source_photos()[seed].load()
    pair = synth.make_pair(photo, params, np.random.default_rng(seed), np.random.default_rng(10 + seed))
    record = pair.record
    direction = np.asarray(record["parallax_direction_xy"])
    along = np.tensordot(direction, pair.flow, axes=1)
    across = pair.flow[0] * direction[1] - pair.flow[1] * direction[0]
    assert np.abs(across).max() < 1e-5  # every point moves along the baseline
    # Signed parallax = parallax * (d - focus) / span: the focal plane stays, nearer points (larger
    # inverse depth) move one way, farther ones the other, the largest by exactly `parallax`.
    relative = pair.depth - record["focus_depth"]
    np.testing.assert_allclose(along, 3.0 * relative / np.abs(relative).max(), atol=1e-5)
    assert np.abs(along).max() == pytest.approx(3.0, abs=1e-5)
    assert (along[relative > 0.05] > 0).all() and (along[relative < -0.05] < 0).all()
    # The blur radius grows with the same |d - focus|: where there is blur, |parallax| is a linear
    # function of the radius.
    blurred = pair.radius > 0.1
    assert np.corrcoef(np.abs(along[blurred]), pair.radius[blurred])[0, 1] > 0.999
    # And gt really is the scene seen that way.
    warped = remap_with_flow(pair.sharp, pair.flow)
    error = np.abs(warped - pair.sharp_aligned)[4:-4, 4:-4].mean()
    assert error < 0.02, error
    assert error < 0.5 * np.abs(pair.sharp - pair.sharp_aligned)[4:-4, 4:-4].mean()


def test_both_sides_of_the_focal_plane_occur() -> None:
    # Over a few scenes, the focus lies inside the depth range: points move both ways.
    for seed in range(4):
        pair = synth.make_pair(
            synth.load_source_photos()[seed].load(), parallax_only_params(), np.random.default_rng(seed),
            np.random.default_rng(seed),
        )
        along = np.tensordot(np.asarray(pair.record["parallax_direction_xy"]), pair.flow, axes=1)
        if (along > 0.5).any() and (along < -0.5).any():
            return
    pytest.fail("no scene had points on both sides of the focal plane")


def test_disocclusions_show_the_background_layer() -> None:
    """A red disk in front of a green background, parallax along +x: the disk moves right and
    uncovers green on its left (filled from the background layer), and covers green on its right."""
    size, margin = 48, 8
    side = size + 2 * margin
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    disk = np.clip(10.0 - np.hypot(xx - side / 2, yy - side / 2) + 0.5, 0, 1).astype(np.float32)
    green = np.broadcast_to(np.array([0.2, 0.6, 0.2], np.float32), (side, side, 3)).copy()
    red = np.broadcast_to(np.array([0.9, 0.1, 0.1], np.float32), (side, side, 3)).copy()
    layers = [
        synth.SceneLayer(green, np.ones((side, side), np.float32), np.zeros((side, side), np.float32)),
        synth.SceneLayer(red, disk, np.ones((side, side), np.float32)),
    ]
    misalignment = {"zoom": 0.0, "shift_xy": [0.0, 0.0], "zoom_centre_xy": [0.0, 0.0],
                    "parallax_px": 3.0, "parallax_direction_xy": [1.0, 0.0]}
    flows = [synth._parallax_flow(layer.depth, focus=0.0, span=1.0, misalignment=misalignment) for layer in layers]
    image, visible, disoccluded = synth._render_second_view(layers, flows, margin, size, misalignment)
    assert np.isfinite(image).all()
    # The background stays (focal plane), the disk moves by 3 px to the right.
    row = visible[size // 2]  # through the disk's centre (canvas side / 2 = margin + size / 2)
    covered = np.flatnonzero(row == 1)
    assert covered.min() == pytest.approx(size / 2 - 10 + 3, abs=1)
    assert covered.max() == pytest.approx(size / 2 + 10 + 3, abs=1)
    # Disoccluded: shown background that the disk hid in the blurry view, on the disk's left side.
    assert disoccluded.sum() >= 2 * 10  # a crescent about 3 px wide and 20 px tall
    ys, xs = np.nonzero(disoccluded)
    assert (xs <= size / 2).all() and xs.mean() < size / 2 - 5
    shown = image[disoccluded]
    to_green = np.abs(shown - [0.2, 0.6, 0.2]).max(axis=1)
    to_red = np.abs(shown - [0.9, 0.1, 0.1]).max(axis=1)
    assert (to_green < to_red).all()  # at most half covered by the disk's anti-aliased edge
    assert (to_green < 1e-5).mean() > 0.6  # most of them pure background


@pytest.mark.parametrize("seed", [0, 5])
def test_default_pairs_have_occlusions_and_the_warp_holds_elsewhere(seed: int) -> None:
    params = synth.SynthParams(size=96, max_radius=3.0, noise=0.0, exposure=0.0, white_balance=0.0, gamma=0.0)
    photos = synth.load_source_photos()
    pair = synth.make_pair(
        photos[seed].load(), params, *(np.random.default_rng(seed) for _ in range(3))
    )
    record = pair.record
    assert len(record["occluders"]) == 2
    assert pair.disoccluded.any() and pair.occluded.any()
    assert record["disoccluded_fraction"] == pytest.approx(pair.disoccluded.mean())
    assert np.isfinite(pair.sharp).all() and 0 <= pair.sharp.min() and pair.sharp.max() <= 1
    # gt_aligned is the unblurred scene in the blurry geometry; the warp carries gt onto it
    # wherever the surface is visible in gt, and no global flow can.
    inner = (slice(6, -6), slice(6, -6))
    visible = ~pair.occluded[inner]
    error = np.abs(remap_with_flow(pair.sharp, pair.flow) - pair.sharp_aligned).mean(axis=2)[inner]
    assert error[visible].mean() < 0.02, error[visible].mean()
    assert error[~visible].mean() > 2 * error[visible].mean()  # occluded pixels show another surface
    global_flow = synth.misalignment_flow(96, record["shift_xy"], record["zoom"], record["zoom_centre_xy"])
    global_error = np.abs(remap_with_flow(pair.sharp, global_flow) - pair.sharp_aligned).mean(axis=2)[inner]
    assert error[visible].mean() < 0.6 * global_error[visible].mean()


def test_a_warp_that_folds_over_is_an_error() -> None:
    # A local flow of slope 2 maps two points onto one: no inverse, so no honest gt to render.
    size, margin = 32, 8
    side = size + 2 * margin
    xs = np.broadcast_to(np.arange(side, dtype=np.float32), (side, side))
    folding = np.stack([2.0 * (xs - side / 2), np.zeros((side, side), np.float32)])
    misalignment = {"zoom": 0.0, "shift_xy": [0.0, 0.0], "zoom_centre_xy": [0.0, 0.0]}
    with pytest.raises(SynthError, match="folds over"):
        synth._inverse_map(folding, margin, size, misalignment)
    # A gentle one inverts: p + h(p) lands back on q.
    gentle = 0.1 * folding
    map_x, _ = synth._inverse_map(gentle, margin, size, misalignment)
    p = map_x[0] - margin
    np.testing.assert_allclose(p + 0.2 * (p + margin - side / 2), np.arange(size), atol=0.01)


def test_photometric_change_is_within_its_bounds() -> None:
    params = synth.SynthParams(
        size=32, max_radius=1.0, noise=0.0, **{**GLOBAL_ONLY_PARAMS, "exposure": 0.03, "white_balance": 0.02,
                                                "gamma": 0.02}, shift=(0.0, 0.0), zoom=(0.0, 0.0)
    )
    photo = synth.load_source_photos()[0].load()
    gains = []
    for seed in range(12):
        pair = synth.make_pair(photo, params, np.random.default_rng(seed), np.random.default_rng(seed))
        record = pair.record
        assert abs(record["exposure_gain"] - 1) <= 0.03
        assert all(abs(g - 1) <= 0.02 for g in record["white_balance_rgb"])
        assert abs(record["gamma"] - 1) <= 0.02
        # No geometry here: gt is gt_aligned with the second shot's exposure, white balance, gamma.
        gain = record["exposure_gain"] * np.asarray(record["white_balance_rgb"])
        expected = np.clip(pair.sharp_aligned**2.2 * gain, 0, 1) ** (1 / 2.2)
        np.testing.assert_allclose(pair.sharp, expected ** record["gamma"], atol=1e-5)
        assert np.abs(pair.sharp - pair.sharp_aligned).max() < 0.05
        gains.append(record["exposure_gain"])
    assert np.ptp(gains) > 0.02  # the gain is drawn per pair, not fixed


def gradient_energy(image: np.ndarray) -> np.ndarray:
    gray = image.mean(axis=2)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return gx**2 + gy**2


def test_blur_is_stronger_where_the_radius_is_larger() -> None:
    params = synth.SynthParams(size=64, shift=(0.0, 0.0), zoom=(0.0, 0.0), max_radius=4.0, noise=0.0)
    photos = {p.name: p for p in synth.load_source_photos()}
    kept_low, kept_high = [], []
    for seed, name in enumerate(("brick", "grass", "astronaut", "gravel")):
        pair = synth.make_pair(photos[name].load(), params, np.random.default_rng(seed), np.random.default_rng(0))
        ratio = gradient_energy(pair.blurry) / (gradient_energy(pair.sharp_aligned) + 1e-4)
        low = pair.radius < 0.15 * params.max_radius
        high = pair.radius > 0.6 * params.max_radius
        kept_low.append(ratio[low])
        kept_high.append(ratio[high])
    low_ratio = np.median(np.concatenate(kept_low))
    high_ratio = np.median(np.concatenate(kept_high))
    assert low_ratio > 0.5, low_ratio  # in focus: texture kept
    assert high_ratio < 0.5 * low_ratio, (low_ratio, high_ratio)


def test_zero_radius_and_noise_keep_the_blurry_image_sharp() -> None:
    params = synth.SynthParams(size=32, shift=(1.0, 1.0), zoom=(0.0, 0.0), max_radius=0.0, noise=0.0)
    photo = synth.load_source_photos()[0].load()
    pair = synth.make_pair(photo, params, np.random.default_rng(0), np.random.default_rng(0))
    assert not pair.radius.any()
    assert np.abs(pair.blurry - pair.sharp_aligned).max() < 1e-4


@pytest.mark.parametrize("kind", ["disk", "gaussian"])
def test_psf_kernels_are_normalized_and_grow(kind: str) -> None:
    small, large = synth.psf_kernel(kind, 1.0), synth.psf_kernel(kind, 3.0)
    for kernel in (small, large):
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and kernel.shape[0] % 2 == 1
        np.testing.assert_allclose(kernel, kernel.T, atol=1e-7)
    assert large.max() < small.max()


def test_source_folder(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        cv2.imwrite(str(photos / f"shot {index}.png"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    (photos / "notes.txt").write_text("not an image")
    root = make_synthetic_dataset(
        tmp_path / "out", 2, 1, size=32, shift=1.0, zoom=0.0, max_radius=1.0, seed=0, source=photos
    )
    meta = json.loads((root / "meta.json").read_text())
    assert meta["sources"]["train"] == ["shot_0", "shot_1"]
    assert meta["sources_shared_between_splits"] is True  # too few photos to hold any out
    assert len(pair_names(root, "train")) == 2 and len(pair_names(root, "test")) == 1


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"size": -5}, "size"),
        ({"size": 4}, "size"),
        ({"shift": -1.0}, "shift"),
        ({"shift": (3.0, 1.0)}, "shift"),
        ({"zoom": 0.5}, "zoom"),
        ({"max_radius": -1.0}, "max_radius"),
        ({"n_train": -1}, "n_train"),
        ({"n_train": 0, "n_test": 0}, "n_train + n_test"),
        ({"seed": -3}, "seed"),
        ({"psf": "box"}, "psf"),
        ({"noise": 2.0}, "noise"),
        ({"parallax": 10.0}, "parallax"),
        ({"parallax": -1.0}, "parallax"),
        ({"nonrigid": 5.0}, "nonrigid"),
        ({"exposure": 0.9}, "exposure"),
        ({"white_balance": -0.1}, "white_balance"),
        ({"gamma": "x"}, "gamma"),
        ({"occluders": -1}, "occluders"),
        ({"occluders": 1.5}, "occluders"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, named: str) -> None:
    arguments = {"n_train": 1, "n_test": 0, "size": 32, "max_radius": 1.0, **kwargs}
    with pytest.raises(SynthError, match=re.escape(named)):
        make_synthetic_dataset(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()  # nothing written before the checks


def test_unknown_source_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_photos"
    with pytest.raises(SynthError, match="no_such_photos"):
        make_synthetic_dataset(tmp_path / "out", 1, 0, size=32, source=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SynthError, match="empty"):
        make_synthetic_dataset(tmp_path / "out", 1, 0, size=32, source=empty)


def test_unreadable_source_photo_is_named(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SynthError, match="broken.png"):
        make_synthetic_dataset(tmp_path / "out", 1, 0, size=32, source=photos)


def test_non_empty_output_needs_overwrite(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_synthetic_dataset(out, 2, 0, size=32, max_radius=1.0, seed=0)
    with pytest.raises(SynthError, match="not empty"):
        make_synthetic_dataset(out, 1, 0, size=32, max_radius=1.0, seed=0)
    make_synthetic_dataset(out, 1, 0, size=32, max_radius=1.0, seed=0, overwrite=True)
    assert len(pair_names(out, "train")) == 1  # the stale second pair is gone


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jdrl")
    synth.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    args = make_parser().parse_args(
        [
            "synth",
            str(out),
            "--train",
            "2",
            "--test",
            "1",
            "--size",
            "32",
            "--shift",
            "1:2",
            "--zoom",
            "0.01",
            "--max-radius",
            "2",
            "--seed",
            "5",
            "--psf",
            "disk",
            "--parallax",
            "1:2",
            "--nonrigid",
            "0.5",
            "--exposure",
            "0.01",
            "--white-balance",
            "0",
            "--gamma",
            "0.04",
            "--occluders",
            "1",
        ]
    )
    assert args.func(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shift"] == [1.0, 2.0] and meta["psf"] == "disk" and meta["seed"] == 5
    assert meta["parallax"] == [1.0, 2.0] and meta["nonrigid"] == [0.5, 0.5] and meta["occluders"] == 1
    assert meta["exposure"] == 0.01 and meta["white_balance"] == 0.0 and meta["gamma"] == 0.04
    assert len(pair_names(out, "train")) == 2 and len(pair_names(out, "test")) == 1
    assert "wrote 2 train + 1 test" in capsys.readouterr().out


def test_cli_reports_bad_arguments(tmp_path: Path, capsys) -> None:
    args = make_parser().parse_args(["synth", str(tmp_path / "x"), "--size", "-5"])
    assert args.func(args) == 2
    assert "error: --size must be an integer >= 8" in capsys.readouterr().err
    # A flag's default that the other flags make invalid: the error names the flag and says the
    # value is its default (the user may not have typed it).
    args = make_parser().parse_args(["synth", str(tmp_path / "x"), "--size", "16"])
    assert args.func(args) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--max-radius must be in [0, --size / 4 = 4] px, got 5.0 (that is --max-radius's default)")
    args = make_parser().parse_args(["synth", str(tmp_path / "x"), "--size", "16", "--max-radius", "9"])
    assert args.func(args) == 2
    assert capsys.readouterr().err.strip().endswith("--max-radius must be in [0, --size / 4 = 4] px, got 9.0")
    for argv, expected in ((["--train", "-1"], "--train must be a non-negative integer, got -1"),
                           (["--train", "0", "--test", "0"], "--train + --test must be at least 1, got 0 and 0")):
        args = make_parser().parse_args(["synth", str(tmp_path / "x"), *argv])
        assert args.func(args) == 2
        assert capsys.readouterr().err.strip().endswith("error: " + expected), argv
    args = make_parser().parse_args(["synth", str(tmp_path / "x"), "--white-balance", "0.9"])
    assert args.func(args) == 2
    assert "error: --white-balance must be a number in [0, 0.5], got 0.9" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args(["synth", str(tmp_path / "x"), "--shift", "a:b"])
    assert "--shift" in capsys.readouterr().err
