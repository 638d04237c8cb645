"""`detailsr upscale`: super-resolve image files, folders or globs."""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DetailSRError, ImageError
from ..imageio import DEFAULT_MAX_PIXELS, READ_EXTENSIONS, WRITE_EXTENSIONS, read_image, write_image
from ..inference import upscale, upscale_alpha
from ..models import zoo
from .options import add_model_options, load_from_args, positive_int, ratio_value, show_progress


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "upscale", parents=[common], help="super-resolve images",
        description="Super-resolve images. INPUT is a file, a folder (its images, not recursive) or a glob.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", help="output file (one input) or folder; default: next to each input")
    add_model_options(p)
    p.add_argument("-s", "--scale", type=positive_int, help="required scale; an error if the model has another")
    p.add_argument("--ratio", type=ratio_value, help="share of windows given attention (content-aware models)")
    p.add_argument("--tile", type=positive_int, help="process in LR tiles of this side (bounded memory)")
    p.add_argument("--tile-overlap", type=int, default=16, metavar="N", help="LR pixels tiles share (16)")
    p.add_argument("--suffix", help="added to output file names (default _x<scale>)")
    p.add_argument("--ext", choices=sorted(e.lstrip(".") for e in WRITE_EXTENSIONS),
                   help="output format (default: the input's)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse inputs with more pixels (decompression bombs; default {DEFAULT_MAX_PIXELS})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    inputs = expand_inputs(args.inputs)
    if args.tile_overlap < 0:
        raise ConfigError(f"--tile-overlap must not be negative, got {args.tile_overlap}")
    net = load_from_args(args, default=zoo.DEFAULT_MODEL)
    if args.scale is not None and args.scale != net.scale:
        raise ConfigError(f"the model upscales by {net.scale}, not {args.scale}")
    suffix = f"_x{net.scale}" if args.suffix is None else args.suffix
    jobs = plan_outputs(inputs, args.output, suffix, args.ext, args.overwrite)
    failures = 0
    for src, dst in _progress(jobs, show_progress(args)):
        try:
            upscale_file(src, dst, net, args)
        except DetailSRError as e:
            if args.debug:
                raise
            failures += 1
            print(f"detailsr: error: {e}", file=sys.stderr)
    return 1 if failures else 0


def upscale_file(src: Path, dst: Path, net, args: argparse.Namespace) -> None:
    image = read_image(src, max_pixels=args.max_pixels)
    pixels = upscale(image.pixels, net, ratio=args.ratio, tile=args.tile, tile_overlap=args.tile_overlap,
                     progress=show_progress(args))
    alpha = None if image.alpha is None else upscale_alpha(image.alpha, net.scale)
    write_image(dst, np.ascontiguousarray(pixels), alpha=alpha, grayscale=image.grayscale,
                overwrite=args.overwrite)


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files as given, the images inside folders, glob matches; in order, without repeats."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in READ_EXTENSIONS and p.is_file())
        elif path.exists():
            found.append(path)
        elif glob.has_magic(pattern):
            matches = sorted(Path(m) for m in glob.glob(pattern))
            if not matches:
                raise ImageError(f"no file matches {pattern}")
            found += [m for m in matches if m.is_file()]
        else:
            raise ImageError(f"input {pattern} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ImageError(f"no images found in {' '.join(patterns)}")
    return unique


def plan_outputs(inputs: list[Path], output: str | None, suffix: str, ext: str | None,
                 overwrite: bool) -> list[tuple[Path, Path]]:
    """(input, output) pairs; checked before any work so that a bad plan writes nothing."""
    out = Path(output) if output else None
    single_file = out is not None and out.suffix.lower() in WRITE_EXTENSIONS and not out.is_dir()
    if single_file and len(inputs) > 1:
        raise ConfigError(f"{len(inputs)} inputs cannot all be written to the one file {out}")
    if out is not None and not single_file:
        if out.exists() and not out.is_dir():
            raise ImageError(f"output {out} exists and is not a folder")
        if out.suffix and out.suffix.lower() not in WRITE_EXTENSIONS and not out.exists():
            raise ImageError(f"cannot write {out}: unsupported image type {out.suffix}")
        out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for src in inputs:
        if single_file:
            dst = out
        else:
            name = src.stem + suffix + ("." + ext if ext else src.suffix)
            dst = (out if out is not None else src.parent) / name
        if dst.resolve() == src.resolve():
            raise ImageError(f"output {dst} would replace its own input; choose another -o or --suffix")
        if dst.exists() and not overwrite:
            raise ImageError(f"output {dst} exists; use --overwrite to replace it")
        jobs.append((src, dst))
    names = [d.resolve() for _, d in jobs]
    if len(set(names)) != len(names):
        raise ConfigError("two inputs would be written to the same output file; use distinct names")
    return jobs


def _progress(jobs, enabled: bool):
    if not enabled or len(jobs) < 2:
        return jobs
    from tqdm import tqdm

    return tqdm(jobs, unit="image")
