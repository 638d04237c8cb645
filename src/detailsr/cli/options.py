"""Options several sub-commands share: which model, on which device, with how many threads."""

from __future__ import annotations

import argparse
import sys

import torch

from ..errors import ConfigError
from ..models.layers import ATTENTION_BACKENDS
from ..models.registry import build_untrained, load_model


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def ratio_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="zoo name (see `detailsr models`) or checkpoint file")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1, mps")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    p.add_argument("--attn", choices=ATTENTION_BACKENDS, help="attention kernel (default sdpa)")
    p.add_argument("--stochastic", action="store_true",
                   help="CAMixer: draw the number of attended windows as the official code does")


def load_from_args(args: argparse.Namespace, default: str | None = None):
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {}
    if args.attn:
        options["attn_type"] = args.attn
    if args.stochastic:
        options["stochastic"] = True
    if getattr(args, "untrained", False):
        if not args.model:
            raise ConfigError("--untrained needs -m with a zoo model name")
        net = build_untrained(args.model, **options)
    else:
        net = load_model(args.model or default, **options)
    try:
        device = torch.device(args.device)
        return net.to(device)
    except (RuntimeError, AssertionError) as e:
        raise ConfigError(f"device {args.device} is not available ({e})") from e


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and not with --quiet."""
    return not args.quiet and sys.stderr.isatty()
