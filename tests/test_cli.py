"""The `jdrl` command as a user meets it: each error path runs the real command in a subprocess
(`python -m jdrl.cli`, the console script's `main`) and checks that stderr ends in one line that
names the problem, that there is no traceback, and the exit status (2 usage, 1 runtime, 130 Ctrl-C).
Also `jdrl deblur` over a folder (skipping what cannot be read, --skip-existing), file modes, bit
depth, gray, alpha and metadata of its outputs."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jdrl.checkpoint import load_checkpoint, save_checkpoint
from jdrl.config import load_config
from jdrl.imageio import ImageMetadata, read_stored_image, write_image, write_png
from jdrl.models import build_deblur_net

def subprocess_env() -> dict[str, str]:
    """This interpreter's import path (the installed build, or a checkout on PYTHONPATH), one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("JDRL_DEBUG", None)
    return env


def jdrl(*argv: str, check_one_line: bool = True, cwd: Path, **popen) -> subprocess.CompletedProcess:
    """Run `jdrl ARGV` in a fresh interpreter in ``cwd`` (not the repository root, whose source
    folder would hide an installed build); with ``check_one_line``, assert a failing run's stderr
    is one line without a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "jdrl.cli", *argv], env=subprocess_env(), cwd=cwd, capture_output=True, text=True,
        timeout=300, **popen,
    )
    if check_one_line and done.returncode != 0:
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done


def last_line(text: str) -> str:
    """The last line a terminal would show (progress bars redraw with carriage returns)."""
    return text.strip().splitlines()[-1].split("\r")[-1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    config = load_config(None, {"model.preset": "tiny", "train.device": "cpu"})
    torch.manual_seed(0)
    net = build_deblur_net("jdrl", "tiny", config.model.levels)
    return save_checkpoint(folder / "tiny.pt", {"model": net.state_dict(), "config": config.to_dict(), "epoch": 0})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """4 random-textured 32x32 pairs in SDD layout (as tests/test_train.py)."""
    root = tmp_path_factory.mktemp("pairs")
    generator = torch.Generator().manual_seed(0)
    for index in range(4):
        sharp = F.interpolate(torch.rand(1, 3, 8, 8, generator=generator), size=(36, 36), mode="bicubic").clamp(0, 1)
        blurry = F.avg_pool2d(F.pad(sharp, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        write_image(root / "blur" / f"{index:03d}.png", blurry[0, :, 2:34, 2:34])
        write_image(root / "gt" / f"{index:03d}.png", sharp[0, :, 1:33, 2:34])
    return root


def photo(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def test_checkpoint_errors_are_one_line(tmp_path, tiny_checkpoint):
    image = tmp_path / "in.png"
    write_image(image, torch.rand(3, 24, 24))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:2000])
    state = load_checkpoint(tiny_checkpoint)
    other_arch = tmp_path / "unet_config.pt"
    save_checkpoint(other_arch, {**state, "config": {**state["config"], "model": {**state["config"]["model"], "arch": "unet"}}})
    newer = tmp_path / "newer.pt"
    torch.save({**state, "format_version": 99}, newer)  # save_checkpoint would stamp the current version
    cases = {
        str(tmp_path / "missing.pt"): "does not exist",
        str(image): "is not a checkpoint",
        str(corrupt): "corrupt or truncated",
        str(other_arch): "do not fit",
        str(newer): "format version 99",
    }
    for checkpoint, expected in cases.items():
        done = jdrl("deblur", str(image), "--checkpoint", checkpoint, "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert done.returncode == 1, (checkpoint, done.stderr)
        assert done.stderr.startswith("jdrl deblur: error: ") and expected in done.stderr, done.stderr
        assert Path(checkpoint).name in done.stderr
    debug = jdrl(
        "--debug", "deblur", str(image), "--checkpoint", str(corrupt), "--out", str(tmp_path / "out"),
        check_one_line=False, cwd=tmp_path,
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_and_data_errors(tmp_path, tiny_checkpoint):
    empty = tmp_path / "empty"
    (empty / "blur").mkdir(parents=True)
    (empty / "gt").mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    image = tmp_path / "in.png"
    write_image(image, torch.rand(3, 24, 24))
    deblur = ["deblur", str(image), "--checkpoint", str(tiny_checkpoint)]
    train_out = ["--set", f"train.out_dir={tmp_path / 'run'}", "--set", "train.device=cpu"]
    cases = [
        (["train", "--set", "train.epcohs=3"], 2, "epcohs"),
        (["train", "--set", "optim.lr=fast"], 2, "optim.lr must be a number"),
        (["train", "--set", f"data.root={empty}", *train_out], 1, "empty"),
        (["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "e")], 1, "nodata"),
        ([*deblur, "--out", str(a_file)], 2, "a_file: this is a file"),
        ([*deblur, "--out", str(a_file / "sub")], 1, "cannot write in this folder"),
    ]
    for argv, status, expected in cases:
        done = jdrl(*argv, cwd=tmp_path)
        assert done.returncode == status, (argv, done.stderr)
        assert expected in done.stderr and f"jdrl {argv[0]}: error: " in done.stderr, (argv, done.stderr)


def test_python_m_jdrl_is_the_jdrl_command(tmp_path):
    """`python -m jdrl` (no scripts folder on PATH) runs the same main: its help and its errors."""
    helped = subprocess.run([sys.executable, "-m", "jdrl", "--help"], env=subprocess_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: jdrl "), helped.stdout + helped.stderr
    for command in ("train", "eval", "deblur", "demo", "synth"):
        assert command in helped.stdout, command
    failed = subprocess.run([sys.executable, "-m", "jdrl", "train", "--set", "train.epcohs=3"], env=subprocess_env(),
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "jdrl train: error: " in failed.stderr and "epcohs" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr


def test_deblur_skips_unreadable_inputs_and_resumes(tmp_path, tiny_checkpoint):
    inputs = tmp_path / "in"
    for index in range(2):
        write_png(inputs / f"good{index}.png", np.rint(photo(seed=index) * 255).astype(np.uint8))
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "text.jpg").write_text("not an image")
    out = tmp_path / "out"
    argv = ["deblur", str(inputs), str(tmp_path / "missing.png"), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    argv += ["--tile", "48", "--overlap", "16", "--device", "cpu"]
    done = jdrl(*argv, check_one_line=False, cwd=tmp_path)
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in done.stderr, done.stderr
    assert any("missing.png: no such file" in line for line in errors)
    assert any("empty.png" in line and "cannot decode" in line for line in errors)
    assert any("text.jpg" in line and "cannot decode" in line for line in errors)
    assert sorted(p.name for p in out.iterdir()) == ["good0.png", "good1.png"]
    assert "deblurred 2, failed 3" in last_line(done.stdout)

    (out / "good1.png").unlink()
    kept = (out / "good0.png").stat().st_mtime_ns
    again = jdrl("deblur", str(inputs / "good0.png"), str(inputs / "good1.png"), *argv[3:], "--skip-existing", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "deblurred 1, failed 0, skipped 1 already done" in last_line(again.stdout)
    assert (out / "good0.png").stat().st_mtime_ns == kept and (out / "good1.png").exists()


def test_deblur_outputs_keep_depth_gray_alpha_metadata_and_umask(tmp_path, tiny_checkpoint):
    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    metadata = ImageMetadata(icc_profile=icc, exif=exif.tobytes())
    rgb = photo()
    alpha = np.random.default_rng(5).integers(0, 65536, size=(40, 56, 1), dtype=np.uint16)
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_png(inputs / "rgb16.png", np.rint(rgb * 65535).astype(np.uint16), metadata)
    write_png(inputs / "rgba16.png", np.concatenate([np.rint(rgb * 65535).astype(np.uint16), alpha], axis=2))
    write_png(inputs / "gray8.png", np.rint(rgb[:, :, :1] * 255).astype(np.uint8))
    gray_alpha = np.concatenate([np.rint(rgb[:, :, :1] * 255), alpha[:, :, :1] >> 8], axis=2).astype(np.uint8)
    write_png(inputs / "grayalpha8.png", gray_alpha)
    Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).save(inputs / "photo.jpg", exif=exif.tobytes(), icc_profile=icc)
    import cv2

    cv2.imwrite(str(inputs / "scan16.tif"), np.rint(rgb * 65535).astype(np.uint16))
    out = tmp_path / "out"
    done = jdrl(
        "deblur", str(inputs), "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--tile", "48", "--overlap", "16",
        "--device", "cpu", cwd=tmp_path, preexec_fn=lambda: os.umask(0o027),
    )
    assert done.returncode == 0, done.stderr
    results = {name: read_stored_image(out / f"{name}.png") for name in ("rgb16", "rgba16", "gray8", "grayalpha8", "photo", "scan16")}
    assert results["rgb16"].color.dtype == np.uint16 and not results["rgb16"].gray and results["rgb16"].alpha is None
    assert results["rgb16"].metadata.icc_profile == icc
    assert Image.open(out / "rgb16.png").getexif().get(0x0112) == 6
    assert results["rgba16"].color.dtype == np.uint16 and np.array_equal(results["rgba16"].alpha, alpha)
    assert results["gray8"].gray and results["gray8"].color.dtype == np.uint8 and results["gray8"].alpha is None
    assert Image.open(out / "gray8.png").mode == "L"
    assert results["grayalpha8"].gray and np.array_equal(results["grayalpha8"].alpha, gray_alpha[:, :, 1:])
    assert Image.open(out / "grayalpha8.png").mode == "LA"
    assert results["photo"].color.dtype == np.uint8 and results["photo"].metadata.icc_profile == icc
    assert Image.open(out / "photo.png").getexif().get(0x0112) == 6
    assert results["scan16"].color.dtype == np.uint16
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path  # 0666 less the umask 027


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, pairs):
    """torch.save writes part of the second checkpoint and then fails as a full disk does."""
    wrapper = tmp_path / "full_disk.py"
    wrapper.write_text(
        "import errno, sys, torch\n"
        "real_save, calls = torch.save, []\n"
        "def save(obj, stream, *args, **kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) < 2:\n"
        "        return real_save(obj, stream, *args, **kwargs)\n"
        "    stream.write(b'x' * 4096)\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "torch.save = save\n"
        "from jdrl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "run"
    argv = ["train", *tiny_overrides(pairs, out, epochs=3)]
    done = subprocess.run(
        [sys.executable, str(wrapper), *argv], env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    line = last_line(done.stderr)
    assert line.startswith("jdrl train: error: No space left on device") and "last.pt" in line, line
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]


def tiny_overrides(pairs: Path, out: Path, epochs: int) -> list[str]:
    values = {
        "model.preset": "tiny", "data.root": pairs, "data.crop": 24, "data.workers": 0, "optim.lr": 1e-3,
        "loss.flow_warmup_epochs": 1, "train.epochs": epochs, "train.out_dir": out, "train.device": "cpu",
    }
    return [part for key, value in values.items() for part in ("--set", f"{key}={value}")]


def restore_default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_and_resume_auto_continues(tmp_path, pairs):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "jdrl.cli", "train", *tiny_overrides(pairs, out, epochs=1000)],
        env=subprocess_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A runner started in the background of a non-interactive shell ignores SIGINT, and a child
        # inherits that (Python then installs no KeyboardInterrupt handler): give the child the
        # default disposition, as a terminal would, so the test does not depend on how CI started.
        preexec_fn=restore_default_sigint,
    )
    deadline = time.monotonic() + 240
    while not (out / "last.pt").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), process.communicate()[1] if process.poll() is not None else "timeout"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert "interrupted; the last checkpoint" in last_line(stderr) and "--resume auto" in last_line(stderr)
    stopped_at = load_checkpoint(out / "last.pt")["epoch"]
    assert stopped_at >= 1
    resumed = jdrl("train", *tiny_overrides(pairs, out, epochs=stopped_at + 1), "--resume", "auto", check_one_line=False, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch {stopped_at}" in resumed.stderr
    assert load_checkpoint(out / "last.pt")["epoch"] == stopped_at + 1
