"""Entry point: parse the sub-command, run it, turn errors into one line and an exit code.

Parsing imports nothing heavy (torch, OpenCV): each sub-command imports what it needs when it runs,
so that `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..allocator import bound_kernel_caches, keep_freed_memory
from ..errors import DetailSRError, UsageError
from . import bench, export, flops, mask, models, train, upscale
from . import eval as eval_command

COMMANDS = (upscale, eval_command, flops, bench, mask, models, train, export)
USAGE_EXIT = 2


class Parser(argparse.ArgumentParser):
    """argparse with the command's one-line error format (`detailsr: error: ...`, exit 2)."""

    def error(self, message: str):
        print(f"detailsr: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars")
    parser = Parser(prog="detailsr", description="Content-aware image super-resolution.", parents=[common])
    parser.add_argument("--version", action="version", version=f"detailsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.debug = getattr(args, "debug", False)
    args.quiet = getattr(args, "quiet", False)
    from PIL import Image

    # `--max-pixels` is the one decompression-bomb limit of the command; Pillow's own is lower.
    Image.MAX_IMAGE_PIXELS = None
    keep_freed_memory()
    bound_kernel_caches()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="detailsr: %(levelname)s: %(message)s"
    )
    try:
        return args.run(args) or 0
    except DetailSRError as e:
        if args.debug:
            raise
        print(f"detailsr: error: {_rank_prefix()}{e}", file=sys.stderr)
        return USAGE_EXIT if isinstance(e, UsageError) else 1
    except BrokenPipeError:  # e.g. `detailsr models | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("detailsr: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure still gets one line without --debug
        if args.debug:
            raise
        print(f"detailsr: error: {_rank_prefix()}unexpected {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        return 1


def _rank_prefix() -> str:
    """'rank N: ' under torchrun with several processes (each prints its own line), else ''."""
    import os

    size, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f"rank {rank}: " if size.isdigit() and int(size) > 1 else ""
