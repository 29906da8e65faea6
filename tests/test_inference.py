"""Tests of tiled inference, the defocus-map PCA, and the deblur / eval commands end to end."""

from __future__ import annotations

import csv
import itertools
import json

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from jdrl.checkpoint import save_checkpoint
from jdrl.cli import main as jdrl_main
from jdrl.imageio import read_image, read_image_array, write_image
from jdrl.inference import colorize_defocus, deblur_tiled, defocus_map_to_scalar, tile_spans, tile_weights
from jdrl.metrics import psnr
from jdrl.models import DeblurOutput, build_deblur_net
from torch import nn

TINY_MODEL = {"arch": "jdrl", "preset": "tiny", "levels": 8}


class StandInNet(nn.Module):
    """Fully convolutional, receptive-field radius 3, one stride-2 stage; a 5-channel "defocus map"."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.Conv2d(16, 4 * 8, 1)

    def forward(self, blurry: torch.Tensor) -> DeblurOutput:
        height, width = blurry.shape[-2:]
        features = F.pixel_shuffle(self.up(torch.relu(self.down(torch.relu(self.head(blurry))))), 2)
        features = features[:, :, :height, :width]
        return DeblurOutput(blurry + features[:, :3], features[:, 3:])


def photo(height: int, width: int, seed: int = 0) -> torch.Tensor:
    rgb = skimage.data.astronaut()
    top, left = 40 * seed, 30 * seed
    crop = cv2.resize(
        rgb[top : top + 3 * height, left : left + 3 * width], (width, height), interpolation=cv2.INTER_AREA
    )
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255


def test_tile_spans_cover_align_and_overlap():
    for length in (5, 48, 49, 96, 97, 200, 2160, 4096):
        spans = tile_spans(length, 48, 16, align=32) if length < 1000 else tile_spans(length, 512, 64, align=32)
        tile, overlap = (48, 16) if length < 1000 else (512, 64)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(start % 32 == 0 for start, _ in spans)
        assert all(end - start <= max(tile + 31, length if length <= tile else 0) for start, end in spans)
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert end - next_start >= overlap
        coverage = torch.zeros(length)
        for span in spans:
            coverage[span[0] : span[1]] += tile_weights(span, length, overlap)
        assert float(coverage.min()) > 0.0
    with pytest.raises(ValueError, match="align"):
        tile_spans(100, 48, 20, align=32)


@pytest.mark.parametrize("height, width", [(96, 80), (97, 83)])
def test_tiled_equals_whole_image_for_a_fully_convolutional_net(height, width):
    torch.manual_seed(0)
    net = StandInNet().eval()
    image = photo(height, width).unsqueeze(0)
    with torch.no_grad():
        whole = net(image)
    tiled = deblur_tiled(net, image, tile=48, overlap=16, keep_defocus_map=True)
    # Receptive-field radius 3 <= overlap // 4 = 4 and strides dividing align: only rounding differs.
    assert (tiled.sharp - whole.sharp).abs().max() < 1e-5
    assert (tiled.defocus_map - whole.defocus_map).abs().max() < 1e-5
    assert deblur_tiled(net, image, tile=48, overlap=16).defocus_map is None


def test_tiled_is_close_to_whole_image_for_the_tiny_jdrl_net():
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "tiny").eval()
    image = photo(96, 80, seed=1).unsqueeze(0)
    with torch.no_grad():
        whole = net(image)
    tiled = deblur_tiled(net, image, tile=48, overlap=16, keep_defocus_map=True)
    # Not rounding-level: squeeze-excitation and transposed attention use whole-input statistics,
    # and the net's receptive field is far wider than the 4 dropped pixels. Measured on this
    # input: mean abs 0.006, max 0.10 next to the seams, 39.9 dB between tiled and whole; asserted
    # with margin.
    difference = (tiled.sharp - whole.sharp).abs()
    assert float(difference.mean()) < 0.02
    assert float(psnr(tiled.sharp.clamp(0, 1), whole.sharp.clamp(0, 1))) > 30.0
    assert tiled.defocus_map.shape == whole.defocus_map.shape == (1, 35, 96, 80)
    assert (
        float((tiled.defocus_map - whole.defocus_map).abs().mean())
        < 0.02 * float(whole.defocus_map.abs().mean()) + 1e-3
    )


def test_memory_is_bounded_by_the_tile_on_a_4k_image():
    seen = []

    class Recorder(nn.Module):
        def forward(self, blurry):
            seen.append(tuple(blurry.shape[-2:]))
            return DeblurOutput(blurry * 1.0, None)

    image = torch.rand(1, 3, 2160, 4096)
    result = deblur_tiled(Recorder(), image, tile=512, overlap=64)
    assert max(max(shape) for shape in seen) <= 512 + 31 and len(seen) == 5 * 9
    assert torch.allclose(result.sharp, image, atol=1e-6)  # weights are normalized everywhere


def test_defocus_pca_is_larger_where_blurrier_whatever_the_sign():
    generator = torch.Generator().manual_seed(0)
    blur_amount = torch.linspace(0, 1, 40).view(1, 40).expand(30, 40)
    direction = torch.randn(35, generator=generator)
    for sign in (1.0, -1.0):
        defocus = sign * direction.view(35, 1, 1) * blur_amount + 0.01 * torch.randn(35, 30, 40, generator=generator)
        scalar = defocus_map_to_scalar(defocus.unsqueeze(0), chunk_pixels=500)
        assert scalar.shape == (30, 40)
        correlation = np.corrcoef(scalar.flatten().numpy(), blur_amount.flatten().numpy())[0, 1]
        assert correlation > 0.99
    colours = colorize_defocus(scalar)
    assert colours.shape == (30, 40, 3) and colours.dtype == np.uint8
    assert colours[:, 0].mean() < colours[:, -1].mean()  # inferno: dark = sharp
    assert colorize_defocus(torch.zeros(4, 5)).shape == (4, 5, 3)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = build_deblur_net(**TINY_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": net.state_dict(), "config": {"model": dict(TINY_MODEL)}})
    return path


def test_deblur_command_writes_images_and_defocus_maps(tmp_path, tiny_checkpoint, capsys):
    inputs = tmp_path / "in"
    for index in range(2):
        write_image(inputs / f"img{index}.png", photo(96, 80, seed=index))
    out = tmp_path / "out"
    argv = [
        "deblur",
        str(inputs),
        "--checkpoint",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--tile",
        "48",
        "--overlap",
        "16",
        "--device",
        "cpu",
        "--defocus-map",
    ]
    assert jdrl_main(argv) == 0
    for index in range(2):
        assert read_image(out / f"img{index}.png").shape == (3, 96, 80)
        assert read_image_array(out / f"img{index}_defocus.png").shape == (96, 80, 3)
        # The radius in pixels with a colour bar on the right (jdrl.defocus.radius_picture).
        radius = read_image_array(out / f"img{index}_radius.png")
        assert radius.shape[0] >= 96 and radius.shape[1] > 80 and radius.shape[2] == 3
    capsys.readouterr()
    missing = ["deblur", str(tmp_path / "nothere.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    assert jdrl_main(missing) == 1
    assert "nothere.png: no such file or folder" in capsys.readouterr().err


def test_eval_command_end_to_end(tmp_path, tiny_checkpoint):
    root = tmp_path / "data"
    for index in range(2):
        sharp = photo(64, 64, seed=index + 2)
        write_image(root / "gt" / f"pair{index}.png", sharp)
        blurry = torch.from_numpy(cv2.GaussianBlur(sharp.permute(1, 2, 0).numpy(), (5, 5), 1.2)).permute(2, 0, 1)
        write_image(root / "blur" / f"pair{index}.png", torch.roll(blurry, shifts=1, dims=2))  # misaligned by 1 px
    out = tmp_path / "eval"
    argv = [
        "eval",
        "--checkpoint",
        str(tiny_checkpoint),
        "--data",
        str(root),
        "--out",
        str(out),
        "--tile",
        "0",
        "--device",
        "cpu",
    ]
    assert jdrl_main(argv) == 0
    with open(out / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["name"] for row in rows] == ["pair0", "pair1"]
    assert {"psnr", "ssim", "psnr_unaligned", "ssim_unaligned"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["count"] == 2 and (summary["lpips"] == "measured" or summary["lpips"].startswith("skipped"))
    for column in ("psnr", "ssim_unaligned"):
        assert abs(summary["means"][column] - np.mean([float(row[column]) for row in rows])) < 1e-5

    # Saved predictions: the blurry images themselves, so the aligned metrics see the 1-px shift undone.
    predictions = tmp_path / "pred"
    for index in range(2):
        write_image(predictions / f"pair{index}.png", read_image(root / "blur" / f"pair{index}.png"))
    assert jdrl_main(["eval", "--pred-dir", str(predictions), "--data", str(root), "--out", str(tmp_path / "e2")]) == 0
    means = json.loads((tmp_path / "e2" / "summary.json").read_text())["means"]
    assert means["psnr"] > means["psnr_unaligned"]
    (predictions / "pair1.png").unlink()
    # jdrl.cli.main reports the DatasetError as one line and exits 1 (tests/test_cli.py runs such cases as subprocesses)
    assert jdrl_main(["eval", "--pred-dir", str(predictions), "--data", str(root), "--out", str(tmp_path / "e3")]) == 1


def test_eval_reports_defocus_correlations_on_synthetic_data(tmp_path):
    from dataclasses import asdict

    from jdrl.losses import LossConfig, build_reblur_net
    from jdrl.synth import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "synth", 1, 2, size=40, shift=1.0, zoom=0.0, max_radius=3.0, seed=0)
    torch.manual_seed(0)
    net = build_deblur_net(**TINY_MODEL)
    reblur = build_reblur_net(LossConfig(), TINY_MODEL["levels"])
    checkpoint = tmp_path / "with_r.pt"
    config = {"model": dict(TINY_MODEL), "loss": asdict(LossConfig())}
    save_checkpoint(checkpoint, {"model": net.state_dict(), "reblur": reblur.state_dict(), "config": config})
    def argv(out):
        return ["eval", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "test", "--out", str(out),
                "--tile", "0", "--device", "cpu", "--lpips", "off"]

    assert jdrl_main(argv(tmp_path / "eval")) == 0
    defocus = json.loads((tmp_path / "eval" / "summary.json").read_text())["defocus"]
    assert set(defocus) == {"reblur", "predicted_map"}
    for values in defocus.values():
        assert {"spearman", "pearson", "spearman_all", "pearson_all"} <= set(values)
        assert all(-1 <= values[key] <= 1 for key in ("spearman", "pearson", "spearman_all", "pearson_all"))
    # Without radius maps (a real test set) there is nothing to score.
    for path in (root / "test" / "radius").iterdir():
        path.unlink()
    assert jdrl_main(argv(tmp_path / "eval2")) == 0
    assert "defocus" not in json.loads((tmp_path / "eval2" / "summary.json").read_text())


def test_streamed_defocus_pca_equals_the_whole_map_and_uint8_input_equals_floats():
    from jdrl.inference import StreamingDefocusPCA

    torch.manual_seed(0)
    net = StandInNet().eval()
    image = photo(97, 83).unsqueeze(0)
    as_uint8 = (image * 255).round().to(torch.uint8)
    whole = deblur_tiled(net, as_uint8.float() / 255, tile=48, overlap=16, keep_defocus_map=True)
    expected = defocus_map_to_scalar(whole.defocus_map)

    received = []
    exact = StreamingDefocusPCA(chunk_pixels=100)  # float32 sums (keep_defocus_map): rounding only

    def record(top, left, block, size):
        received.append((top, left, block.shape[2], block.shape[3]))
        exact(top, left, block, size)

    kept = deblur_tiled(net, as_uint8, tile=48, overlap=16, keep_defocus_map=True, defocus_sink=record)
    assert torch.equal(kept.sharp, whole.sharp)  # uint8 input = the same image as floats
    assert [(top, left) for top, left, _, _ in received] == sorted((top, left) for top, left, _, _ in received)
    covered = torch.zeros(97, 83, dtype=torch.int32)
    for top, left, rows, columns in received:
        covered[top : top + rows, left : left + columns] += 1
    assert bool((covered == 1).all()) and len(received) > 1  # every pixel once, in row-major block order
    assert (exact.scalar_map() - expected).abs().max() < 1e-4 * float(expected.abs().max())

    streamed = StreamingDefocusPCA(chunk_pixels=100)  # sink only: float16 band
    deblur_tiled(net, as_uint8, tile=48, overlap=16, defocus_sink=streamed)
    difference = (streamed.scalar_map() - expected).abs().max()
    assert difference < 2e-3 * float(expected.abs().max()), difference


def test_defocus_pca_file_is_closed_when_deblurring_fails_between_tiles(tmp_path, monkeypatch):
    """The map's temporary file (1.2 GB at 4K) goes when the file's deblurring fails, not at garbage collection."""
    import jdrl.inference as inference

    made = []

    class Recorded(inference.StreamingDefocusPCA):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    def fail_after_one_block(net, image, *, defocus_sink, **kwargs):
        defocus_sink(0, 0, torch.zeros(1, 35, 4, 4), tuple(image.shape[2:]))
        raise RuntimeError("the network failed on the second tile")

    monkeypatch.setattr(inference, "StreamingDefocusPCA", Recorded)
    monkeypatch.setattr(inference, "deblur_tiled", fail_after_one_block)
    write_image(tmp_path / "in.png", photo(40, 40))
    args = inference.argparse.Namespace(tile=32, overlap=8, bit_depth=None, defocus_map=True)
    net = build_deblur_net(**TINY_MODEL).eval()
    with pytest.raises(RuntimeError, match="second tile"):
        inference._deblur_file(net, tmp_path / "in.png", tmp_path, args, torch.device("cpu"))
    assert len(made) == 1 and made[0].storage.closed
    with inference.StreamingDefocusPCA() as pca:
        pass
    assert pca.storage.closed


def test_whole_image_result_is_contiguous_when_the_net_returns_channels_last():
    net = StandInNet().eval()

    def channels_last_net(tiles):
        sharp, defocus_map = net(tiles)
        return DeblurOutput(sharp.contiguous(memory_format=torch.channels_last), defocus_map)

    with torch.no_grad():
        result = deblur_tiled(channels_last_net, photo(40, 36).unsqueeze(0), tile=None, keep_defocus_map=True)
    assert result.sharp.is_contiguous() and result.defocus_map.is_contiguous()


def test_streamed_defocus_radius_equals_the_radius_of_the_whole_map():
    from jdrl.defocus import predicted_map_radius
    from jdrl.inference import StreamingDefocusRadius

    torch.manual_seed(0)
    net = StandInNet().eval()  # 5 map channels: m = 3 levels
    image = photo(61, 53).unsqueeze(0)
    whole = deblur_tiled(net, image, tile=48, overlap=16, keep_defocus_map=True)
    expected = predicted_map_radius(whole.defocus_map, 3, 6.0, "window")[0]
    streamed = StreamingDefocusRadius(6.0, "window", rows_per_chunk=7)  # chunks that straddle the bands
    deblur_tiled(net, image, tile=48, overlap=16, keep_defocus_map=True, defocus_sink=streamed)
    assert streamed.radius.shape == expected.shape
    assert torch.allclose(streamed.radius, expected, atol=1e-5), (streamed.radius - expected).abs().max()


def reference_blend(net, image, tile, overlap, map_dtype):
    """The sums of one whole-image buffer per output, tile after tile in row-major order: what
    deblur_tiled computed before it streamed finished blocks (its results must equal these to the bit)."""
    from jdrl.inference import _normalized_weights

    height, width = image.shape[2:]
    rows, columns = tile_spans(height, tile, overlap), tile_spans(width, tile, overlap)
    row_weights, column_weights = _normalized_weights(rows, height, overlap), _normalized_weights(columns, width, overlap)
    sharp_sum = torch.zeros(1, 3, height, width)
    map_sum = None
    for (row_start, row_end), row_weight in zip(rows, row_weights):
        for (column_start, column_end), column_weight in zip(columns, column_weights):
            weights = row_weight[:, None] * column_weight[None, :]
            sharp, defocus_map = net(image[:, :, row_start:row_end, column_start:column_end])
            sharp_sum[:, :, row_start:row_end, column_start:column_end].addcmul_(sharp, weights)
            if map_sum is None:
                map_sum = torch.zeros(1, defocus_map.shape[1], height, width, dtype=map_dtype)
            map_sum[:, :, row_start:row_end, column_start:column_end].add_(torch.mul(defocus_map, weights))
    return sharp_sum, map_sum


@pytest.mark.parametrize("height, width", [(97, 83), (161, 40), (40, 161), (100, 200), (120, 121)])
def test_streamed_blocks_equal_whole_image_sums_to_the_bit(height, width):
    """Tiles in several rows and columns, one column, one row, a last tile that overlaps two."""
    torch.manual_seed(0)
    net = StandInNet().eval()
    image = torch.rand(1, 3, height, width)
    with torch.no_grad():
        sharp_sum, map_sum = reference_blend(net, image, 48, 16, torch.float32)
        _, half_sum = reference_blend(net, image, 48, 16, torch.float16)
    kept = deblur_tiled(net, image, tile=48, overlap=16, keep_defocus_map=True)
    assert torch.equal(kept.sharp, sharp_sum) and torch.equal(kept.defocus_map, map_sum)

    half = torch.full_like(half_sum, float("nan"))
    blocks = []

    def into_half(top, left, block, size):
        blocks.append(block.shape)
        half[:, :, top : top + block.shape[2], left : left + block.shape[3]] = block

    streamed = deblur_tiled(net, image, tile=48, overlap=16, defocus_sink=into_half, defocus_channels=5)
    assert torch.equal(streamed.sharp, sharp_sum) and streamed.defocus_map is None
    assert torch.equal(half, half_sum)  # float16 sums (a sink only): the same roundings as one float16 buffer
    assert all(shape[2] * shape[3] < height * width for shape in blocks) or len(blocks) == 1


@pytest.mark.parametrize("bit_depth, gray, alpha", [(8, False, False), (16, False, True), (8, True, True)])
def test_sample_sink_equals_samples_of_the_whole_image(bit_depth, gray, alpha):
    from jdrl.inference import _alpha_at, _SampleSink, _to_samples

    torch.manual_seed(0)
    net = StandInNet().eval()
    image = torch.rand(1, 3, 97, 83)
    whole = deblur_tiled(net, image, tile=48, overlap=16).sharp[0]
    alpha_channel = np.arange(97 * 83, dtype=np.uint16).reshape(97, 83, 1) % 251 if alpha else None
    if alpha_channel is not None and bit_depth == 8:
        alpha_channel = alpha_channel.astype(np.uint8)
    expected = _to_samples(whole.mean(dim=0, keepdim=True) if gray else whole.clone(), bit_depth)
    if alpha_channel is not None:
        expected = np.concatenate([expected, _alpha_at(alpha_channel, bit_depth)], axis=2)
    sink = _SampleSink(97, 83, bit_depth, gray, alpha_channel)
    assert deblur_tiled(net, image, tile=48, overlap=16, sharp_sink=sink).sharp is None
    assert sink.pixels.dtype == expected.dtype and np.array_equal(sink.pixels, expected)


def test_deblur_tile_defaults_to_512(tmp_path, tiny_checkpoint, monkeypatch):
    """Without --tile, 512 tiles (peak memory ~1.1 GB at 4K on the CPU, benchmarks/RESULTS.md)."""
    import jdrl.inference as inference
    from jdrl.cli import main

    used = []
    original = inference.deblur_tiled

    def recorded(net, image, **kwargs):
        used.append((kwargs["tile"], kwargs["overlap"]))
        return original(net, image, **kwargs)

    monkeypatch.setattr(inference, "deblur_tiled", recorded)
    write_image(tmp_path / "in.png", photo(40, 40))
    common = ["deblur", str(tmp_path / "in.png"), "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--tile", "384"]) == 0
    assert used == [(512, 64), (384, 64)] and inference.DEFAULT_TILE == 512
