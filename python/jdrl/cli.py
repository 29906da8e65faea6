"""The ``jdrl`` command: one subcommand per module, imported only when that subcommand runs.

Each subcommand module exposes ``register(subparsers) -> None`` (adds its parser and
``set_defaults(func=run)``) and ``run(args) -> int``. ``jdrl --help`` lists every subcommand from
the table below without importing any of them, so help stays fast and works even where a
subcommand's own dependencies (e.g. the compiled ops) are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jdrl`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if command is None or not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # `python -m jdrl.cli ...`, e.g. under torchrun
    sys.exit(main())
