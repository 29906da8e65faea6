"""F: the deblurring network of the paper, ``I_hat = F_D(I_B, F_B(I_B))`` (Eq. 3, section 3.2.1).

F_B (:class:`~jdrl.models.defocus_map.DefocusMapNet`) predicts the defocus map; a channel-attention
fusion re-weights the channels of ``cat(I_B, B_hat)``, and all ``3 + S(m)`` of them enter F_D's
first layer (SPEC section 7, as the authors' network does); F_D is a Restormer-style transformer
encoder-decoder with four levels (Zamir et al., CVPR 2022):

- MDTA, "transposed" attention: attention between channels, not pixels, so its cost grows with
  ``H * W`` linearly; queries, keys and values come from a 1x1 then a depthwise 3x3 convolution.
- GDFN, a gated feed-forward: two depthwise-convolved branches, one through GELU, multiplied.
- LayerNorm over the channels of each pixel before both.
- Down by a 3x3 convolution then pixel-unshuffle (channels x2, size /2); up by a 3x3 convolution
  then pixel-shuffle (channels /2, size x2); skip connections are concatenated and reduced by a
  1x1 convolution (at level 1 the concatenation is kept at twice the width, for detail).
- Refinement blocks at full resolution, and a global residual: the network predicts
  ``I_hat - I_B``.

Any input size works: the fused input is padded to a multiple of 8 (three halvings) and the output
cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from jdrl.models.common import DeblurOutput, PointwiseConv2d, he_initialize, pad_to_multiple, pointwise_conv
from jdrl.models.defocus_map import DefocusMapNet

__all__ = ["RESTORMER_PRESETS", "JDRLDeblurNet", "RestormerBody", "RestormerPreset"]

# Three halvings between level 1 and level 4.
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class RestormerPreset:
    """Sizes of the deblurring network F.

    dim: channels at level 1 (level ``k`` has ``dim * 2**(k-1)``).
    blocks: transformer blocks per level, levels 1 to 4 (the decoder mirrors levels 1 to 3).
    refinement_blocks: transformer blocks at full resolution after the decoder.
    heads: attention heads per level; each must divide that level's channels.
    ffn_expansion: hidden channels of the gated feed-forward, as a multiple of its input channels.
    defocus_width, defocus_blocks: size of F_B (:class:`DefocusMapNet`).
    global_residual: predict ``I_hat - I_B`` rather than ``I_hat``.
    """

    dim: int
    blocks: tuple[int, int, int, int]
    refinement_blocks: int
    heads: tuple[int, int, int, int]
    ffn_expansion: float
    defocus_width: int
    defocus_blocks: int
    global_residual: bool = True


RESTORMER_PRESETS: dict[str, RestormerPreset] = {
    # The sizes of section 3.2.1 / Restormer: what the paper trains on two A100s.
    "paper": RestormerPreset(
        dim=48,
        blocks=(4, 6, 6, 8),
        refinement_blocks=4,
        heads=(1, 2, 4, 8),
        ffn_expansion=2.66,
        defocus_width=32,
        defocus_blocks=2,
    ),
    # Trainable on a CPU in minutes on small patches.
    "small": RestormerPreset(
        dim=16,
        blocks=(1, 1, 1, 2),
        refinement_blocks=1,
        heads=(1, 1, 2, 4),
        ffn_expansion=2.66,
        defocus_width=16,
        defocus_blocks=1,
    ),
    # For tests only.
    "tiny": RestormerPreset(
        dim=8,
        blocks=(1, 1, 1, 1),
        refinement_blocks=1,
        heads=(1, 1, 1, 1),
        ffn_expansion=2.0,
        defocus_width=8,
        defocus_blocks=1,
    ),
}


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fused layer_norm on a channels-last view is about twice as fast on a CPU as
        # mean/var over dim 1, whose reductions stride across memory.
        normalized = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return normalized.permute(0, 3, 1, 2)


class ChannelAttention(nn.Module):
    """MDTA: multi-head attention across channels; ``(B, C, H, W) -> (B, C, H, W)``.

    Each head attends between its ``C / heads`` channels with a ``(C/heads) x (C/heads)`` map built
    from L2-normalized queries and keys over all pixels, scaled by a learned temperature per head.
    """

    residual_output_layer = "project_out"  # read by he_initialize

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"heads ({heads}) must divide the channels ({channels})")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_qkv = PointwiseConv2d(channels, 3 * channels, bias=False)
        # Depthwise 3x3: local context for queries, keys and values before the global channel mix.
        self.qkv_local = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels, bias=False)
        self.project_out = PointwiseConv2d(channels, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        query, key, value = self.qkv_local(self.to_qkv(x)).chunk(3, dim=1)
        shape = (batch, self.heads, channels // self.heads, height * width)
        query, key = query.reshape(shape), key.reshape(shape)
        # Cosine similarity of L2-normalized rows (F.normalize's eps of 1e-12 included), from products
        # only: on a CPU, F.normalize's norm over the 262144 pixels of a 512x512 tile took ~7x as
        # long as these (c x c) products, and at full resolution this attention was 29% of a tile's
        # forward.
        attention = self.attention_from_products(
            query @ key.transpose(-2, -1),
            (query @ query.transpose(-2, -1)).diagonal(dim1=-2, dim2=-1),
            (key @ key.transpose(-2, -1)).diagonal(dim1=-2, dim2=-1),
        )
        out = (attention @ value.reshape(shape)).reshape(batch, channels, height, width)
        return self.project_out(out)

    def attention_from_products(
        self, query_key: torch.Tensor, query_square: torch.Tensor, key_square: torch.Tensor
    ) -> torch.Tensor:
        """Each head's ``(c x c)`` attention from ``Q K^T (..., heads, c, c)`` and the squared norms of
        the query and key channels ``(..., heads, c)``: softmax over keys of the cosine similarity
        times the head's temperature. The clamp comes before the square root, whose gradient at 0
        is infinite."""
        query_norm = query_square.clamp_min(1e-24).sqrt()
        key_norm = key_square.clamp_min(1e-24).sqrt()
        cosine = query_key / (query_norm.unsqueeze(-1) * key_norm.unsqueeze(-2))
        return torch.softmax(cosine * self.temperature, dim=-1)


class GatedFeedForward(nn.Module):
    """GDFN: ``conv1x1(gelu(a) * b)`` with ``a, b`` two depthwise-convolved branches of the input."""

    residual_output_layer = "project_out"  # read by he_initialize

    def __init__(self, channels: int, expansion: float) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.expand = PointwiseConv2d(channels, 2 * hidden, bias=False)
        self.local = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = PointwiseConv2d(hidden, channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        content, gate = self.local(self.expand(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * content)


class TransformerBlock(nn.Module):
    """``x + MDTA(norm(x))`` then ``x + GDFN(norm(x))``; ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, heads: int, ffn_expansion: float) -> None:
        super().__init__()
        self.attention_norm = ChannelLayerNorm(channels)
        self.attention = ChannelAttention(channels, heads)
        self.feed_forward_norm = ChannelLayerNorm(channels)
        self.feed_forward = GatedFeedForward(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() and x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last):
            return self._forward_in_bands(x)
        return self._forward_whole_image(x)

    def _forward_whole_image(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.feed_forward(self.feed_forward_norm(x))

    def _forward_in_bands(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` without gradients on the CPU (channels-last input), a band of rows at a time.

        Whole-image layers hold 3C (queries, keys, values) and 2 x hidden (the feed-forward's two
        branches, 170 channels at level 1 of the small preset) channels at full resolution; in
        bands only x, the values and the output are whole-image tensors. `jdrl deblur` of a
        4096x2160 photo (small preset, 512 tiles) peaks at ~1.1 GB instead of ~1.7-1.9 GB, and with
        the feed-forward's branches apart (below) a tile is faster too (``benchmarks/bench_tile.py``;
        benchmarks/RESULTS.md, "Transformer blocks in bands of rows"). The attention
        needs all pixels before any output, so it takes two passes over the bands:

        1. ``norm``, ``to_qkv`` and the depthwise 3x3 on each band (and one row of halo on each
           side), accumulating ``Q^T K`` and the squared norms of the queries' and keys' channels
           (in float64), and storing the values.
        2. The attention of each head is then a ``(c x c)`` matrix, and with ``project_out`` one
           ``(C x C)`` 1x1 convolution of the values; each band (with its halo rows) adds it to
           ``x`` and runs the feed-forward, whose depthwise 3x3 needs that halo.

        The halo rows give each band's depthwise convolutions the neighbours the whole image has
        (its zero padding only at the image's top and bottom), so only the order of the sums in
        ``Q^T K`` differs from ``forward``: equal up to float rounding (tested).
        """
        out = torch.empty_like(x)
        for index in range(x.shape[0]):
            self._image_in_bands(x[index : index + 1], out[index : index + 1])
        return out

    def _image_in_bands(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """:meth:`_forward_in_bands` for one image ``(1, C, H, W)``, written into ``out``."""
        attention, feed_forward = self.attention, self.feed_forward
        _, channels, height, width = x.shape
        hidden = feed_forward.project_out.in_channels
        bands = row_bands(height, band_rows(max(3 * channels, 2 * hidden) * width * x.element_size()))

        values = torch.empty_like(x)
        query_key = torch.zeros(channels, channels, dtype=torch.float64)
        query_square = torch.zeros(channels, dtype=torch.float64)
        key_square = torch.zeros(channels, dtype=torch.float64)
        for start, stop, halo_start, halo_stop in bands:
            qkv = attention.qkv_local(attention.to_qkv(self.attention_norm(x[:, :, halo_start:halo_stop])))
            qkv = qkv[:, :, start - halo_start : stop - halo_start]
            pixels = qkv.permute(0, 2, 3, 1).reshape(-1, 3 * channels)  # (pixels, 3C)
            query, key = pixels[:, :channels], pixels[:, channels : 2 * channels]
            query_key += (query.transpose(0, 1) @ key).double()
            query_square += query.square().sum(0).double()
            key_square += key.square().sum(0).double()
            values[:, :, start:stop] = qkv[:, 2 * channels :]

        # Each head's (c x c) diagonal block of the products, as ChannelAttention.forward has them.
        heads, per_head = attention.heads, channels // attention.heads
        head_blocks = query_key.view(heads, per_head, heads, per_head).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        per_head_attention = attention.attention_from_products(
            head_blocks.to(x.dtype), query_square.view(heads, per_head).to(x.dtype), key_square.view(heads, per_head).to(x.dtype)
        )
        mixing = torch.block_diag(*per_head_attention)
        project_out = attention.project_out
        attend_and_project = (project_out.weight.view(channels, channels) @ mixing).view(channels, channels, 1, 1)

        # The feed-forward's two branches computed apart (a 1x1 and a depthwise convolution compute
        # each output channel on its own), so that GELU runs on a tensor of its own instead of a
        # channel half of one channels-last tensor, which it strides through (~4x slower).
        # expand and local have no bias (GatedFeedForward).
        expand, local = feed_forward.expand.weight, feed_forward.local.weight
        for start, stop, halo_start, halo_stop in bands:
            attended = x[:, :, halo_start:halo_stop] + pointwise_conv(
                values[:, :, halo_start:halo_stop], attend_and_project, project_out.bias
            )
            normalized = self.feed_forward_norm(attended)
            inner = slice(start - halo_start, stop - halo_start)
            gate = F.conv2d(pointwise_conv(normalized, expand[hidden:]), local[hidden:], padding=1, groups=hidden)
            activated = F.gelu(gate[:, :, inner])
            del gate
            content = F.conv2d(pointwise_conv(normalized, expand[:hidden]), local[:hidden], padding=1, groups=hidden)
            torch.add(
                attended[:, :, inner], feed_forward.project_out(activated.mul_(content[:, :, inner])), out=out[:, :, start:stop]
            )


# A band's largest intermediate (3C or 2 x hidden channels) in bytes: 48 rows of a 512-wide tile's
# level 1 in the small preset, half the size of one whole-image tensor of that level (x: 32
# channels). Timed with `benchmarks/bench_tile.py --band-mb 4,16,64` (benchmarks/RESULTS.md).
BAND_BYTES = 16 << 20


def band_rows(bytes_per_row: int) -> int:
    """Rows per band so that a band's largest intermediate is about ``BAND_BYTES`` (at least 4)."""
    return max(4, BAND_BYTES // max(1, bytes_per_row))


def row_bands(height: int, rows: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, halo_start, halo_stop)`` of consecutive bands of ``rows`` rows covering
    ``height``, each with one row of halo on each side where the image has one (3x3 neighbours)."""
    return [
        (start, min(start + rows, height), max(start - 1, 0), min(start + rows + 1, height))
        for start in range(0, height, rows)
    ]


def transformer_stage(channels: int, heads: int, ffn_expansion: float, count: int) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(channels, heads, ffn_expansion) for _ in range(count)])


class Downsample(nn.Sequential):
    """``(B, C, H, W) -> (B, 2C, H/2, W/2)``: a 3x3 convolution to ``C/2`` then pixel-unshuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """``(B, C, H, W) -> (B, C/2, 2H, 2W)``: a 3x3 convolution to ``2C`` then pixel-shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.PixelShuffle(2))


class SqueezeExcitationFusion(nn.Module):
    """Channel-attention fusion of the blurry image and its defocus map.

    ``(blurry (B, 3, H, W), defocus_map (B, S, H, W)) -> (B, 3 + S, H, W)``: the ``3 + S`` channels
    of the concatenation re-weighted by a squeeze-excitation gate (global average, two linear
    layers, sigmoid). Nothing squeezes them afterwards: all of them are F_D's input, so F_D sees
    the defocus map at full width rather than through a 3-channel bottleneck.
    """

    def __init__(self, map_channels: int) -> None:
        super().__init__()
        self.out_channels = 3 + map_channels
        squeezed = max(4, self.out_channels // 4)
        self.excite = nn.Sequential(
            nn.Linear(self.out_channels, squeezed),
            nn.ReLU(inplace=True),
            nn.Linear(squeezed, self.out_channels),
            nn.Sigmoid(),
        )

    def forward(self, blurry: torch.Tensor, defocus_map: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat([blurry, defocus_map], dim=1)
        gate = self.excite(stacked.mean(dim=(2, 3)))
        return stacked * gate[:, :, None, None]


class RestormerBody(nn.Module):
    """F_D: the 4-level transformer encoder-decoder.

    ``(B, in_channels, H, W) -> (B, 3, H, W)`` with ``H, W`` multiples of 8 (the caller pads);
    in F the input is the fused ``[I_B, B_hat]`` (``3 + S(m)`` channels). It returns what the
    caller adds to ``I_B`` (with the global residual) or the image itself.
    """

    def __init__(self, preset: RestormerPreset, in_channels: int = 3) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        dim, heads, blocks, expansion = preset.dim, preset.heads, preset.blocks, preset.ffn_expansion
        for level, (count, head_count) in enumerate(zip(blocks, heads), start=1):
            if count < 1:
                raise ValueError(f"preset.blocks must be positive, got {count} at level {level}")
            channels = dim * 2 ** (level - 1)
            if channels % head_count != 0:
                raise ValueError(
                    f"preset.heads[{level - 1}] = {head_count} does not divide the {channels} channels of level {level}"
                )
        self.embed = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.encoder1 = transformer_stage(dim, heads[0], expansion, blocks[0])
        self.down1 = Downsample(dim)
        self.encoder2 = transformer_stage(2 * dim, heads[1], expansion, blocks[1])
        self.down2 = Downsample(2 * dim)
        self.encoder3 = transformer_stage(4 * dim, heads[2], expansion, blocks[2])
        self.down3 = Downsample(4 * dim)
        self.latent = transformer_stage(8 * dim, heads[3], expansion, blocks[3])

        self.up3 = Upsample(8 * dim)
        self.reduce3 = PointwiseConv2d(8 * dim, 4 * dim, bias=False)
        self.decoder3 = transformer_stage(4 * dim, heads[2], expansion, blocks[2])
        self.up2 = Upsample(4 * dim)
        self.reduce2 = PointwiseConv2d(4 * dim, 2 * dim, bias=False)
        self.decoder2 = transformer_stage(2 * dim, heads[1], expansion, blocks[1])
        self.up1 = Upsample(2 * dim)
        self.decoder1 = transformer_stage(2 * dim, heads[0], expansion, blocks[0])
        self.refinement = transformer_stage(2 * dim, heads[0], expansion, preset.refinement_blocks)
        self.to_image = nn.Conv2d(2 * dim, 3, 3, padding=1, bias=False)
        he_initialize(self, nonlinearity="linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level1 = self.encoder1(self.embed(x))
        level2 = self.encoder2(self.down1(level1))
        level3 = self.encoder3(self.down2(level2))
        x = self.latent(self.down3(level3))
        x = self.decoder3(self.reduce3(torch.cat([self.up3(x), level3], dim=1)))
        x = self.decoder2(self.reduce2(torch.cat([self.up2(x), level2], dim=1)))
        x = self.decoder1(torch.cat([self.up1(x), level1], dim=1))
        return self.to_image(self.refinement(x))


class JDRLDeblurNet(nn.Module):
    """The deblurring network F of the paper: F_B, channel-attention fusion, Restormer-style F_D.

    ``forward(blurry (B, 3, H, W) in [0, 1]) -> DeblurOutput(sharp (B, 3, H, W), defocus_map
    (B, S(m), H, W))`` for any ``H, W``.

    Args:
        preset: a :class:`RestormerPreset` (see ``RESTORMER_PRESETS``).
        levels: the number of blur levels ``m`` of the defocus map (``S(m)`` channels).
    """

    def __init__(self, preset: RestormerPreset, levels: int = 8) -> None:
        super().__init__()
        self.preset = preset
        self.levels = levels
        self.defocus_map_net = DefocusMapNet(levels, preset.defocus_width, preset.defocus_blocks)
        self.fusion = SqueezeExcitationFusion(self.defocus_map_net.out_channels)
        he_initialize(self.fusion)
        self.deblur_body = RestormerBody(preset, in_channels=self.fusion.out_channels)
        if preset.global_residual:
            # With the global residual, a small last layer starts F near the identity, so the
            # first flow estimates and losses see an image close to I_B instead of noise; it is
            # not zero, so every parameter gets a gradient from the first step.
            with torch.no_grad():
                self.deblur_body.to_image.weight.mul_(0.1)

    def forward(self, blurry: torch.Tensor) -> DeblurOutput:
        if blurry.dim() != 4 or blurry.shape[1] != 3:
            raise ValueError(f"blurry must be (B, 3, H, W), got {tuple(blurry.shape)}")
        height, width = blurry.shape[-2:]
        # Inference on the CPU runs channels-last (each pixel's channels adjacent): oneDNN's
        # convolutions and the channel LayerNorm are faster there, and the layers then keep that
        # layout. One 512x512 tile of the small preset, one thread: 4.2 -> 3.7 s. The results are
        # returned contiguous (NCHW), as with gradients.
        inference_on_cpu = blurry.device.type == "cpu" and not torch.is_grad_enabled()
        if inference_on_cpu:
            # A copy, not .contiguous(): a tile of an (H, W, 3) photo is a (1, 3, h, w) view whose
            # batch stride is 3, which .contiguous(channels_last) keeps (a size-1 dimension's stride
            # does not count there) but the convolutions then read as NCHW and return NCHW, so no
            # layer ran channels-last in `jdrl deblur`. The copy is one tile of 3 channels.
            blurry = blurry.clone(memory_format=torch.channels_last)
        defocus_map = self.defocus_map_net(blurry)
        # Fusion before padding, so the squeeze-excitation averages over the real image only.
        fused = pad_to_multiple(self.fusion(blurry, defocus_map), SIZE_MULTIPLE)
        out = self.deblur_body(fused)[..., :height, :width]
        sharp = blurry + out if self.preset.global_residual else out
        if inference_on_cpu:
            sharp, defocus_map = sharp.contiguous(), defocus_map.contiguous()
        return DeblurOutput(sharp, defocus_map)
