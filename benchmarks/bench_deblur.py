"""Wall time and peak memory of `jdrl deblur` on one large photo (issue 11, item 4).

Makes a WIDTHxHEIGHT test image (smooth texture, 8-bit PNG) and a randomly initialized checkpoint
of the chosen preset (weights do not change the cost), then runs the real `jdrl deblur` command in
a subprocess, `--repeats` times, and reports per run: wall seconds, peak RSS of the process, user and
system CPU seconds and minor page faults (from wait4's rusage), with the machine's load average
before each run (the machine may be shared: wall time is noisy, RSS is not).

    python benchmarks/bench_deblur.py                         # 4096x2160, small preset, --defocus-map
    python benchmarks/bench_deblur.py --size 1024x768 --no-defocus-map --repeats 1
    python benchmarks/bench_deblur.py --threads 1 --repeats 1   # one thread: fairer on a shared machine
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, git_commit, load_average, parse_size  # noqa: E402


def make_inputs(folder: Path, height: int, width: int, preset: str) -> tuple[Path, Path]:
    """A smooth random RGB photo and a random-init checkpoint of ``preset``."""
    import cv2
    import torch

    from jdrl.checkpoint import save_checkpoint
    from jdrl.config import load_config
    from jdrl.imageio import write_image_array
    from jdrl.models import build_deblur_net

    generator = np.random.default_rng(0)
    coarse = generator.random((height // 32 + 1, width // 32 + 1, 3)).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image + 0.05 * generator.standard_normal(image.shape, dtype=np.float32), 0, 1)
    image_path = folder / "photo.png"
    write_image_array(image_path, np.rint(image * 255).astype(np.uint8))
    config = load_config(None, {"model.preset": preset, "train.device": "cpu"})
    torch.manual_seed(0)
    net = build_deblur_net(config.model.arch, config.model.preset, config.model.levels)
    checkpoint = folder / f"{preset}.pt"
    save_checkpoint(checkpoint, {"model": net.state_dict(), "config": config.to_dict(), "epoch": 0, "step": 0})
    return image_path, checkpoint


def run_once(command: list[str], env: dict[str, str]) -> dict:
    """Run ``command``; wall seconds and the child's own rusage (peak RSS, CPU, page faults)."""
    load_before = load_average()
    began = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - began
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"jdrl deblur failed ({process.returncode}):\n{stdout}\n{stderr}")
    return {
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "minor_faults": usage.ru_minflt,
        "load_before": load_before,
        "stdout": stdout.strip().splitlines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4096x2160", help="WIDTHxHEIGHT (default 4096x2160)")
    parser.add_argument("--preset", default="small", help="model preset (default small)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-defocus-map", action="store_true", help="do not pass --defocus-map")
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS for the command (default: unset, torch uses every core)"
    )
    parser.add_argument("--extra", default="", help="more `jdrl deblur` arguments, e.g. '--tile 768'")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    height, width = parse_size(args.size)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "python"), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.pop("OMP_NUM_THREADS", None)  # by default the command decides its threads, as for a user
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    sys.path[:0] = [str(REPO_ROOT / "python"), str(REPO_ROOT)]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        image, checkpoint = make_inputs(folder, height, width, args.preset)
        command = [sys.executable, "-m", "jdrl.cli", "deblur", str(image), "--checkpoint", str(checkpoint)]
        command += ["--out", str(folder / "out")] + (["--defocus-map"] if not args.no_defocus_map else [])
        command += args.extra.split()
        runs = [run_once(command, env) for _ in range(args.repeats)]
    threads = args.threads if args.threads is not None else "default"
    print(f"jdrl deblur {width}x{height}, preset {args.preset}, commit {git_commit()}, {os.cpu_count()} CPUs, threads {threads}")
    print(f"command: {' '.join(command[2:])}")
    print("run  wall_s  peak_rss_MB  user_s  sys_s  minor_faults  load_before")
    for index, run in enumerate(runs):
        print(
            f"{index:3d}  {run['wall_s']:6.1f}  {run['peak_rss_mb']:11.0f}  {run['user_s']:6.1f}  {run['system_s']:5.1f}"
            f"  {run['minor_faults']:12d}  {' '.join(f'{v:.2f}' for v in run['load_before'])}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "preset": args.preset, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
