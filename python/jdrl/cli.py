"""The ``jdrl`` command: one subcommand per module, imported only when that subcommand runs.

Each subcommand module exposes ``register(subparsers) -> None`` (adds its parser and
``set_defaults(func=run)``) and ``run(args) -> int``. ``jdrl --help`` lists every subcommand from
the table below without importing any of them, so help stays fast and works even where a
subcommand's own dependencies (e.g. the compiled ops) are missing.

Errors: :func:`main` reports what a command raises as one line on stderr, ``jdrl COMMAND: error:
...``, and returns 2 for usage errors (:class:`jdrl.errors.UsageError`, e.g. an unknown ``--set``
key; argparse's own errors also exit 2), 1 for failures at run time (a missing or corrupt file, a
full disk, ...) and 130 after Ctrl-C. ``--debug`` (anywhere on the command line) or
``JDRL_DEBUG=1`` lets the exception propagate with its traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "error_line", "main"]

# name -> (module, one-line help). The order is the order `jdrl --help` shows.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("jdrl.train", "train the deblurring net on (misaligned) blurry/sharp pairs"),
    "eval": ("jdrl.evaluate", "evaluate a checkpoint on a test set (aligned and unaligned PSNR/SSIM/LPIPS)"),
    "deblur": ("jdrl.inference", "deblur images or folders with a checkpoint"),
    "make-patches": ("jdrl.patches", "cut large training pairs into patches"),
    "inspect-pairs": ("jdrl.inspect_pairs", "measure the misalignment of a dataset's pairs"),
    "synth": ("jdrl.synth", "make synthetic misaligned defocus pairs"),
    "demo": ("jdrl.demo", "small end-to-end run: synthesize, train, evaluate"),
    "ablate": ("jdrl.ablation", "train and evaluate the paper's ablation variants (Table 5)"),
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("jdrl_ext")
    except Exception:  # noqa: BLE001 - not installed (run from a checkout)
        return "unknown (not installed)"


def _top_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(
        prog="jdrl",
        description="Reblurring-guided single image defocus deblurring from misaligned training pairs.",
        epilog="Run `jdrl COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also JDRL_DEBUG=1); may appear anywhere on the command line",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    return parser, subparsers


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser: with ``command``, that command's module registers its real subparser; the others
    (and all of them when ``command`` is None) are listed by name and help only."""
    parser, subparsers = _top_parser()
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name == command:
            try:
                module = importlib.import_module(module_name)
            except ImportError as error:
                raise ImportError(f"jdrl {name}: cannot import {module_name}: {error}") from error
            module.register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in SUBCOMMANDS:
            return token
        if not token.startswith("-"):
            return None  # an unknown command: let argparse report it
    return None


def _debug_requested(argv: list[str]) -> bool:
    """True when ``--debug`` is on the command line (removed from ``argv``) or ``JDRL_DEBUG`` is set."""
    debug = "--debug" in argv
    while "--debug" in argv:
        argv.remove("--debug")
    return debug or os.environ.get("JDRL_DEBUG", "").strip() not in ("", "0")


def error_line(error: BaseException) -> tuple[str, int]:
    """``(one-line message, exit status)`` for an exception that ended a command."""
    from jdrl.errors import JdrlError, describe_os_error

    if isinstance(error, JdrlError):
        text, status = str(error), error.exit_code
    elif isinstance(error, OSError) and error.strerror is not None:
        text, status = describe_os_error(error), 1
    elif isinstance(error, (ValueError, ImportError)):  # bad input the library code names, a missing build
        text, status = str(error), 2 if isinstance(error, ValueError) else 1
    elif isinstance(error, MemoryError):
        text, status = "out of memory (for `jdrl deblur`, a smaller --tile needs less)", 1
    else:
        text = (
            f"unexpected {type(error).__name__}: {error}; rerun with --debug (or JDRL_DEBUG=1) for the "
            "traceback and report it"
        )
        status = 1
    return " ".join(text.split()), status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jdrl`` console script; returns the exit status (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    # OpenCV's own warnings (e.g. libtiff's about odd tags) would break the one-line error reports.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    command = _chosen_command(argv)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if command is None or not hasattr(args, "func"):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"jdrl {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns any failure into one line
        if debug:
            raise
        text, status = error_line(error)
        print(f"jdrl {command or ''}: error: {text}".replace("jdrl : ", "jdrl: "), file=sys.stderr)
        return status


if __name__ == "__main__":  # `python -m jdrl.cli ...`, e.g. under torchrun
    sys.exit(main())
