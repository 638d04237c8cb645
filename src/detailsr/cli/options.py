"""Options several sub-commands share: which model, on which device, in which precision, with how
many threads.

Values are checked here, at parse time, so that a bad one is a usage error (exit 2) before any
work starts; nothing here imports torch until a model is loaded.
"""

from __future__ import annotations

import argparse
import re
import sys

from ..choices import ALL_ATTENTION_BACKENDS, AUTO_RATIO, PRECISIONS, ROUTINGS
from ..errors import ConfigError, UsageError
from ..sizes import parse_bytes

# torch device strings a user may mean: a type, optionally with an index; or auto
_DEVICE = re.compile(r"^(auto|(cpu|cuda|mps|xpu|hip|mtia|hpu|meta)(:\d+)?)$")


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "a whole number of pixels, 0 or more")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def ratio_value(text: str) -> float:
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


RATIO_HELP = ("share of windows given attention (content-aware models), or auto: CAMixer's predictor decides "
              "per image and layer")


def routing_ratio(text: str) -> float | str:
    """--ratio: a share of windows in [0, 1], or 'auto' (CAMixer's predictor sets it per image and layer)."""
    if text.strip().lower() == AUTO_RATIO:
        return AUTO_RATIO
    try:
        return ratio_value(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'auto', got {text!r}") from None


def memory_size(text: str) -> int:
    """'512M', '2G', '1.5GiB' -> bytes (an argparse type)."""
    try:
        return parse_bytes(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def device_value(text: str) -> str:
    if not _DEVICE.match(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; expected auto, cpu, cuda, cuda:N, mps or xpu")
    return text.strip().lower()


def _number(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def check_tiles(args: argparse.Namespace) -> None:
    """--tile must exceed --tile-overlap: otherwise the stride collapses to 1 pixel (thousands of tiles)."""
    if args.tile is not None and args.tile <= args.tile_overlap:
        raise UsageError(f"--tile {args.tile} must be larger than --tile-overlap {args.tile_overlap}")


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model", help="zoo name (see `detailsr models`) or checkpoint file "
                   "(default: the embedded CAMixerSR-S x4)")
    add_device_options(p)
    p.add_argument("--attn", choices=ALL_ATTENTION_BACKENDS, help="attention kernel (default sdpa)")
    p.add_argument("--stochastic", action="store_true",
                   help="CAMixer: draw the number of attended windows as the official code does")
    add_routing_options(p)


def add_routing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--routing", choices=ROUTINGS,
                   help="CAMixerSR: the predictor's windows (learned, default) or those less the windows "
                   "Pure-Pass finds pure (purepass)")
    p.add_argument("--pure-threshold", type=ratio_value, metavar="T",
                   help="purepass routing: a window whose share of pure pixels reaches T does not attend (0.5)")


def add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=device_value, default="auto",
                   help="torch device: auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:1, mps; "
                   "under torchrun each process takes cuda:LOCAL_RANK (cpu without CUDA)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch")


def add_precision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="arithmetic of the network and its inputs: fp32 (default), fp16 (GPUs), bf16; "
                   "results come back as float32 before rounding")


def add_compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true",
                   help="compile the network with torch.compile (minutes at the first image; pays off on "
                   "GPUs); if compiling fails it says why and runs uncompiled")


def maybe_compile(net, args: argparse.Namespace):
    if not getattr(args, "compile", False):
        return net
    from ..compilation import compile_forward

    return compile_forward(net)


def load_from_args(args: argparse.Namespace):
    from ..models.registry import build_untrained, load_model

    use_threads(args)
    use_device(args)
    precision = getattr(args, "precision", "fp32")
    check_precision(None, precision, args.device)  # the device alone may rule it out: before loading
    options = runtime_options(args)
    if getattr(args, "untrained", False):
        if not args.model:
            raise UsageError("--untrained needs -m with a zoo model name")
        net = build_untrained(args.model, **options)
    else:
        net = load_model(args.model, **options)
    return maybe_compile(with_precision(to_device(net, args.device), precision), args)


def use_device(args: argparse.Namespace) -> None:
    """`args.device` made concrete: auto -> cuda, else mps, else cpu; under torchrun (WORLD_SIZE > 1)
    auto and cuda -> cuda:LOCAL_RANK, auto without CUDA -> cpu."""
    import torch

    from ..sharding import world

    name, ranks = args.device, world()
    if ranks.size > 1 and name in ("auto", "cuda"):
        args.device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() or name == "cuda" else "cpu"
    elif name == "auto":
        mps = getattr(torch.backends, "mps", None)
        args.device = "cuda" if torch.cuda.is_available() else "mps" if mps and mps.is_available() else "cpu"


def check_precision(net, precision: str, device: str) -> None:
    """A precision the device (or the model's family) cannot run is a usage error, found before any work."""
    from ..precision import precision_supported

    reason = precision_supported(net, precision, device)
    if reason is not None:
        what = f"{net.arch} on {device}" if net is not None else device
        raise UsageError(f"--precision {precision} cannot run on {what}: {reason}")


def with_precision(net, precision: str):
    """`net` cast to `precision` (fp32: as loaded), checked for its family first."""
    from ..precision import PRECISION_DTYPES

    check_precision(net, precision, str(next(net.parameters()).device))
    return net if precision == "fp32" else net.to(PRECISION_DTYPES[precision])  # ours: cast in place


def runtime_options(args: argparse.Namespace) -> dict:
    """The `load_model` runtime options the command line asked for (attention, stochastic K, routing)."""
    options = {}
    if args.attn:
        options["attn_type"] = args.attn
    if getattr(args, "stochastic", False):
        options["stochastic"] = True
    if args.routing or args.pure_threshold is not None:
        options.update(routing=args.routing, pure_threshold=args.pure_threshold)
    return options


def use_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def to_device(net, device: str):
    """`net` on `device`, or one line saying why that device cannot be used here."""
    import torch

    try:
        return net.to(torch.device(device))
    except (RuntimeError, AssertionError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"device {device} is not available here ({reason})") from e


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and not with --quiet."""
    return not args.quiet and sys.stderr.isatty()
