"""What does the deblurring body F_D take from F_B's defocus map? Score trained JDRL nets with the map
as F_B predicts it, and with the map replaced by its spatial mean or by zeros.

The paper feeds F_B's map to F_D as a degradation prior (section 3.1). If F_D uses where the map
says the blur is, flattening the map to its per-image, per-channel mean costs PSNR; if F_D reads
only the map's overall level, the mean costs nothing; zeros also remove that level. For each run
folder (or checkpoint) it prints PSNR against ``gt_aligned`` on the pairs of ``--data`` (made by
``jdrl synth``), photo by photo (crops of one photo are not independent) and over all pairs,
beside the blurry input:

- ``as is``: the net as trained (what ``jdrl eval`` scores);
- ``mean``: F_B's map replaced by its spatial mean, channel by channel, image by image;
- ``zeros``: F_B's map replaced by zeros.

Example, ours and #4 of a finished demo on a larger test set (see ``demo_rescore.py``)::

    PYTHONPATH=python:. python benchmarks/defocus_map_use.py runs/demo/runs/ours runs/demo/runs/no_reblur \\
        --data runs/test64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

MODES = ("as is", "mean", "zeros")


class ReplacedMap(nn.Module):
    """F_B followed by the replacement of ``mode`` (``MODES``)."""

    def __init__(self, defocus_map_net: nn.Module, mode: str) -> None:
        super().__init__()
        self.defocus_map_net = defocus_map_net
        self.mode = mode

    def forward(self, blurry: torch.Tensor) -> torch.Tensor:
        predicted = self.defocus_map_net(blurry)
        if self.mode == "mean":
            return predicted.mean(dim=(2, 3), keepdim=True).expand_as(predicted).contiguous()
        if self.mode == "zeros":
            return torch.zeros_like(predicted)
        return predicted


def checkpoint_of(path: Path) -> Path:
    """A checkpoint file as given, or a run folder's ``best.pt`` (else ``last.pt``)."""
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise SystemExit(f"{path}: not a checkpoint, and no best.pt or last.pt in it")


@torch.no_grad()
def score(net: nn.Module | None, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Pair name -> PSNR (dB) of the net's output (the blurry input itself for ``net=None``)."""
    from jdrl.metrics import psnr

    scores = {}
    for name, blurry, sharp in pairs:
        estimate = blurry if net is None else net(blurry).sharp
        scores[name] = float(psnr(estimate.clamp(0, 1), sharp))
    return scores


def by_photo(scores: dict[str, float], photos: dict[str, str]) -> dict[str, float]:
    """Photo -> mean PSNR over its pairs (``jdrl.synth.photo_means``), in name order, and ``"all
    pairs"`` -> the mean over every pair."""
    from jdrl.synth import photo_means

    means = dict(sorted(photo_means(scores, photos).items()))
    means["all pairs"] = sum(scores.values()) / len(scores)
    return means


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (best.pt, else last.pt) or checkpoints of JDRL nets")
    parser.add_argument("--data", type=Path, required=True, help="synthetic pairs made by `jdrl synth` (with gt_aligned)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="split of --data (default test)")
    parser.add_argument("--json", type=Path, default=None, help="also write every number, per pair, here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from jdrl.checkpoint import CheckpointError, load_deblur_net
    from jdrl.imageio import read_image
    from jdrl.synth import pair_sources

    folder = args.data / args.split
    names = sorted(path.stem for path in (folder / "blur").glob("*.png"))
    if not names or not (folder / "gt_aligned").is_dir():
        raise SystemExit(f"--data {args.data}: no {args.split}/blur/*.png with {args.split}/gt_aligned (make it with `jdrl synth`)")
    pairs = [
        (name, read_image(folder / "blur" / f"{name}.png")[None], read_image(folder / "gt_aligned" / f"{name}.png")[None])
        for name in names
    ]
    photos = pair_sources(args.data, args.split)
    results = {"data": str(args.data), "split": args.split, "input": score(None, pairs), "runs": {}}
    for run in args.runs:
        checkpoint = checkpoint_of(run)
        try:
            net = load_deblur_net(checkpoint).eval()
        except CheckpointError as error:
            raise SystemExit(f"{checkpoint}: {error}") from None
        if not hasattr(net, "defocus_map_net"):
            raise SystemExit(f"{checkpoint}: its network has no defocus map net F_B (model.arch must be 'jdrl')")
        predictor = net.defocus_map_net
        results["runs"][str(run)] = {}
        for mode in MODES:
            net.defocus_map_net = ReplacedMap(predictor, mode)
            results["runs"][str(run)][mode] = score(net, pairs)
        net.defocus_map_net = predictor

    input_means = by_photo(results["input"], photos)
    print(f"{len(pairs)} {args.split} pairs of {args.data}; PSNR vs gt_aligned, mean by photo and over all pairs.\n")
    print("| run | photo | input | " + " | ".join(MODES) + " |")
    print("|---|---|---|" + "---|" * len(MODES))
    for run, modes in results["runs"].items():
        means = {mode: by_photo(modes[mode], photos) for mode in MODES}
        for photo, value in input_means.items():
            print(f"| {run} | {photo} | {value:.3f} | " + " | ".join(f"{means[mode][photo]:.3f}" for mode in MODES) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
