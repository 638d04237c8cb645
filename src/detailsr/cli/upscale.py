"""`detailsr upscale`: super-resolve image files, folders, globs, or standard input."""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ..choices import DEFAULT_MAX_PIXELS, READ_EXTENSIONS, WRITE_EXTENSIONS
from ..errors import ConfigError, DetailSRError, ImageError, UsageError
from .options import (
    RATIO_HELP,
    add_compile_option,
    add_model_options,
    add_precision_option,
    check_tiles,
    load_from_args,
    memory_size,
    non_negative_int,
    positive_float,
    positive_int,
    routing_ratio,
    show_progress,
)

log = logging.getLogger(__name__)
STREAM = "-"  # standard input as INPUT, standard output as -o


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "upscale", parents=[common], help="super-resolve images",
        description="Super-resolve images. INPUT is a file, a folder (its images), a glob, or - (standard "
        "input). Folders and globs take only image files, and never detailsr's own outputs (a name "
        "<stem><suffix> or <stem>_x<N> beside the image <stem>).",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output",
                   help="output file (one input), folder, or - (standard output); default: next to each input, "
                   "standard output for standard input")
    add_model_options(p)
    add_precision_option(p)
    add_compile_option(p)
    p.add_argument("--batch", type=positive_int, default=1, metavar="N",
                   help="run up to N inputs of the same size as one batch (1); models whose output depends "
                   "on the batch (ATD's token sort, CAMixer's --stochastic draw) take one at a time")
    p.add_argument("-s", "--scale", type=positive_int,
                   help="the model's scale, checked (an error if it has another; see --outscale)")
    p.add_argument("--outscale", type=positive_float, metavar="S",
                   help="final scale: the model's output resized to S times the input (e.g. 2 or 3.5 with a x4 "
                   "model; area averaging to shrink, Lanczos to enlarge)")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="folders: their sub-folders too (mirrored under -o FOLDER)")
    p.add_argument("--ratio", type=routing_ratio, help=RATIO_HELP)
    p.add_argument("--tile", type=positive_int,
                   help="process in LR tiles of this side (bounded memory); larger than the overlap")
    p.add_argument("--tile-overlap", type=non_negative_int, default=16, metavar="N", help="LR pixels tiles share (16)")
    p.add_argument("--max-memory", type=memory_size, default="1G", metavar="SIZE",
                   help="memory for the network's working set, e.g. 512M or 4G (1G): larger images are "
                   "processed in tiles that fit, streamed into the output; models that need the whole "
                   "image refuse images that do not fit (then raise it, or choose --tile)")
    p.add_argument("--panorama", action="store_true",
                   help="the inputs are 360° panoramas (equirectangular, or any image whose left and right "
                   "edges meet): pad with wrap-around context so the output has no seam at the ±180° meridian")
    p.add_argument("--suffix", help="added to output file names (default _x<scale>, or _x<outscale>)")
    p.add_argument("--ext", choices=sorted(e.lstrip(".") for e in WRITE_EXTENSIONS),
                   help="output format (default: the input's; PNG for standard input)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing output files")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave inputs whose output exists (to resume a batch)")
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse inputs with more pixels (decompression bombs; default {DEFAULT_MAX_PIXELS})")
    p.set_defaults(run=run)


@dataclass(frozen=True)
class Source:
    """An input image: `path` (STREAM for standard input), found under folder `base` (None: named itself)."""

    path: Path
    base: Path | None = None

    @property
    def is_stream(self) -> bool:
        return str(self.path) == STREAM


def run(args: argparse.Namespace) -> int:
    """Upscale every input; under torchrun (WORLD_SIZE > 1) each rank takes its share of the inputs
    (see `detailsr.sharding`), every output is written once, and only rank 0 prints the summary."""
    from ..sharding import all_results, barrier, process_group, shard

    check_tiles(args)
    sources = expand_inputs(args.inputs, args.recursive, args.suffix, args.output)
    net = load_from_args(args)
    check_model_fits(args, net)
    with process_group(args.device) as ranks:
        # every rank plans the whole list (same checks, same order) before any rank writes
        jobs = plan_outputs(sources, args.output, output_suffix(args, net), args.ext, args.overwrite,
                            args.skip_existing)
        barrier()
        mine = shard(jobs, ranks)
        if ranks.size > 1:
            log.debug("rank %d of %d upscales %d of the %d inputs", ranks.rank, ranks.size, len(mine), len(jobs))
        failures = sum(all_results(upscale_jobs(mine, net, args, ranks.main)))
    if failures and len(jobs) > 1 and ranks.main:
        print(f"detailsr: {failures} of {len(jobs)} images failed; the others were written", file=sys.stderr)
    return 1 if failures else 0


def upscale_jobs(jobs: list[tuple[Source, Path | None]], net, args: argparse.Namespace, main: bool = True) -> int:
    """Upscale `jobs` (one at a time, or in batches of same-size inputs with --batch); the number that failed."""
    size = args.batch
    why = batch_dependence(net) if size > 1 else None
    if why:
        log.debug("--batch %d: one image at a time, since %s", size, why)
        size = 1
    progress = _progress(jobs, show_progress(args) and main)
    if size == 1:
        failures = 0
        for src, dst in progress:
            try:
                upscale_file(src, dst, net, args)
            except DetailSRError as e:
                failures += _failed(e, args)
        return failures
    return _upscale_batched(progress, net, args, size)


# Families whose output for one image depends on the other images of its batch (measured, see
# tests/test_devices.py): ATD's AC-MSA groups tokens by a sort whose near-ties the batch's float
# rounding can flip (ATD-light x4: 7e-3 max abs vs one at a time).
BATCH_DEPENDENT = ("atd", "atd_light", "pp_atd_light", "camixer_atd_light")


def batch_dependence(net) -> str | None:
    """Why `net`'s output for an image would change with the batch it runs in; None when it does not."""
    if net.arch in BATCH_DEPENDENT:
        return f"{net.arch} sorts tokens into groups (ATD's AC-MSA) and the batch's rounding flips near-ties"
    if any(getattr(m, "stochastic", False) for m in net.modules()):
        return "the official stochastic K averages the drawn share over the batch"
    return None


def _failed(error: DetailSRError, args: argparse.Namespace) -> int:
    """Report one failed image (raise it with --debug); 1, to count it."""
    if args.debug:
        raise error
    print(f"detailsr: error: {error}", file=sys.stderr)
    return 1


def _upscale_batched(jobs, net, args: argparse.Namespace, size: int) -> int:
    """Read inputs in order, collect those of one size, channel count and bit depth, and run each
    collection as one batch once it has `size` members (or, when 2 x `size` images wait, the oldest
    collection as it is: memory stays bounded). The number of images that failed."""
    waiting: dict[tuple, list] = {}
    failures = 0
    for src, dst in jobs:
        try:
            image = read_input(src, args)
        except DetailSRError as e:
            failures += _failed(e, args)
            continue
        key = (image.pixels.shape, image.pixels.dtype.str, image.alpha is not None)
        waiting.setdefault(key, []).append((src, dst, image))
        if len(waiting[key]) == size:
            failures += _upscale_group(waiting.pop(key), net, args)
        elif sum(map(len, waiting.values())) >= 2 * size:
            failures += _upscale_group(waiting.pop(next(iter(waiting))), net, args)
    for key in list(waiting):
        failures += _upscale_group(waiting.pop(key), net, args)
    return failures


def _upscale_group(group: list, net, args: argparse.Namespace) -> int:
    """(source, output, image) triples of one size through the network as one batch, then each
    finished and written as `upscale_file` does (alpha, --outscale). The number that failed."""
    import numpy as np
    import torch

    from ..imageio import from_tensor, to_tensor
    from ..inference import output_size, panorama_padding, resize_output, run, upscale_alpha

    rows, width = group[0][2].pixels.shape[:2]
    width += sum(panorama_padding(net, width)) if args.panorama else 0  # what the network sees
    if args.tile is not None or not _batch_fits(net, (rows, width), len(group), args.max_memory):
        return sum(_upscale_read(src, dst, image, net, args) for src, dst, image in group)
    try:
        y = run(net, torch.cat([to_tensor(image.pixels) for _, _, image in group]), ratio=args.ratio,
                panorama=args.panorama)
    except DetailSRError as e:
        return _failed(e, args) * len(group)
    failures = 0
    for (src, dst, image), sr in zip(group, y, strict=True):
        try:
            out = from_tensor(sr, image.pixels.dtype)
            if image.alpha is not None:
                out = np.concatenate([out, upscale_alpha(image.alpha, net.scale, args.panorama)[:, :, None]], axis=2)
            if args.outscale is not None:
                out = resize_output(out, *output_size(image.pixels.shape[:2], args.outscale))
            write_output(src, dst, image, out, args)
        except DetailSRError as e:
            failures += _failed(e, args)
    return failures


def _batch_fits(net, shape: tuple, count: int, budget: int) -> bool:
    """Whether `count` whole images of `shape` fit the memory budget together, and on the CPU their
    feature maps the cache (`tiling.cache_pixels`) (else: one at a time)."""
    from ..tiling import cache_pixels, plan_tile

    in_cache = cache_pixels(net)
    if in_cache is not None and count * shape[0] * shape[1] > in_cache:
        return False
    try:
        return plan_tile(net, shape[0], shape[1], budget // count) is None
    except ConfigError:
        return False


def _upscale_read(src: Source, dst: Path | None, image, net, args: argparse.Namespace) -> int:
    """`upscale_file` for an image already read; 1 if it failed, else 0."""
    try:
        _upscale_image(src, dst, image, net, args)
        return 0
    except DetailSRError as e:
        return _failed(e, args)


def check_model_fits(args: argparse.Namespace, net) -> None:
    if args.scale is not None and args.scale != net.scale:
        raise ConfigError(f"the model upscales by {net.scale}, not {args.scale}; "
                          f"use --outscale {args.scale} to resize its output to x{args.scale}")
    if args.tile is not None and args.tile < net.min_size:
        raise UsageError(f"--tile {args.tile} is below the smallest input {net.arch} takes ({net.min_size} px)")


def output_suffix(args: argparse.Namespace, net) -> str:
    if args.suffix is not None:
        return args.suffix
    return f"_x{args.outscale:g}" if args.outscale is not None else f"_x{net.scale}"


def upscale_file(src: Source, dst: Path | None, net, args: argparse.Namespace) -> None:
    """Upscale one input; dst None: standard output."""
    _upscale_image(src, dst, read_input(src, args), net, args)


def _upscale_image(src: Source, dst: Path | None, image, net, args: argparse.Namespace) -> None:
    import numpy as np

    from ..inference import upscale

    rgba = image.pixels if image.alpha is None else np.dstack([image.pixels, image.alpha])
    out = upscale(rgba, net, ratio=args.ratio, tile=args.tile, tile_overlap=args.tile_overlap,
                  outscale=args.outscale, progress=show_progress(args), max_memory=args.max_memory,
                  panorama=args.panorama)
    write_output(src, dst, image, out, args)


def read_input(src: Source, args: argparse.Namespace):
    from ..imageio import decode_image, read_image

    if src.is_stream:
        return decode_image(sys.stdin.buffer.read(), "standard input", max_pixels=args.max_pixels)
    return read_image(src.path, max_pixels=args.max_pixels)


def write_output(src: Source, dst: Path | None, image, out, args: argparse.Namespace) -> None:
    """The upscaled `out` (H x W x 3, or 4 with alpha) of input `image`, to `dst` (None: standard output)."""
    from ..imageio import encode_image, write_bytes_atomic

    pixels, alpha = out[:, :, :3], (None if image.alpha is None else out[:, :, 3])
    if dst is None:
        ext = args.ext or (src.path.suffix if not src.is_stream else "png")
        sys.stdout.buffer.write(encode_image(pixels, ext, alpha, image.grayscale, "standard output"))
        sys.stdout.buffer.flush()
        return
    encoded = encode_image(pixels, dst.suffix, alpha, image.grayscale, dst)
    dst.parent.mkdir(parents=True, exist_ok=True)  # a sub-folder mirrored by --recursive
    if dst.exists() and not args.overwrite:  # appeared while this batch ran
        raise ImageError(f"{dst} exists; use --overwrite")
    write_bytes_atomic(dst, encoded)


def expand_inputs(patterns: list[str], recursive: bool, suffix: str | None, output: str | None) -> list[Source]:
    """Files as given, the images in folders and glob matches; in order, without repeats.

    Folders and globs take only image files and leave out detailsr's own outputs (see
    `_without_outputs`), so that a rerun on a folder does not upscale its earlier results.
    """
    found: list[Source] = []
    for pattern in patterns:
        path = Path(pattern)
        if pattern == STREAM:
            found.append(Source(path))
        elif path.is_dir():
            found += [Source(p, path) for p in _without_outputs(_images_in(path, recursive, output), suffix)]
        elif path.exists():
            found.append(Source(path))
        elif glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=recursive))]
            if not matches:
                raise ImageError(f"no file matches {pattern}")
            found += [Source(p) for p in _without_outputs(_only_images(m for m in matches if m.is_file()), suffix)]
        else:
            raise ImageError(f"input {pattern} does not exist")
    if sum(s.is_stream for s in found) > 1:
        raise UsageError("standard input (-) can be read only once")
    unique = list({(s.path if s.is_stream else s.path.resolve()): s for s in reversed(found)}.values())[::-1]
    if not unique:
        raise ImageError(f"no images found in {' '.join(patterns)}")
    return unique


def _images_in(folder: Path, recursive: bool, output: str | None) -> list[Path]:
    """The image files of `folder` (and its sub-folders, leaving out hidden ones and the output folder)."""
    if not recursive:
        return _only_images(p for p in sorted(folder.iterdir()) if p.is_file())
    skip = Path(output).resolve() if output and output != STREAM else None
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip)
        files += [Path(root) / n for n in sorted(names)]
    return _only_images(files)


def _only_images(paths) -> list[Path]:
    return [p for p in paths if p.suffix.lower() in READ_EXTENSIONS and not p.name.startswith(".")]


_SCALED_NAME = re.compile(r"(.+)_x\d+(\.\d+)?")  # detailsr's default output names: <stem>_x4, <stem>_x3.5


def _without_outputs(paths: list[Path], suffix: str | None) -> list[Path]:
    """`paths` less detailsr's outputs: a file <stem><suffix> or <stem>_x<N> with an image <stem>.* beside it."""
    stems: dict[Path, set[str]] = {}  # image stems per folder, listed once

    def is_output(path: Path) -> bool:
        origins = set()
        if suffix and path.stem.endswith(suffix) and path.stem != suffix:
            origins.add(path.stem[: -len(suffix)])
        if match := _SCALED_NAME.fullmatch(path.stem):
            origins.add(match.group(1))
        if not origins:
            return False
        if path.parent not in stems:
            stems[path.parent] = {p.stem for p in _only_images(path.parent.iterdir())}
        return bool(origins & stems[path.parent])

    kept = [p for p in paths if not is_output(p)]
    if len(kept) < len(paths):
        log.info("leaving out %d earlier outputs of detailsr", len(paths) - len(kept))
    return kept


def plan_outputs(sources: list[Source], output: str | None, suffix: str, ext: str | None, overwrite: bool,
                 skip_existing: bool) -> list[tuple[Source, Path | None]]:
    """(input, output) pairs, output None for standard output; checked before any work so that a bad
    plan writes nothing. Existing outputs are an error, unless replaced or skipped as asked."""
    to_stdout = output == STREAM or (output is None and any(s.is_stream for s in sources))
    if to_stdout:
        if len(sources) > 1:
            raise UsageError(f"{len(sources)} inputs cannot all be written to standard output")
        return [(sources[0], None)]
    out = Path(output) if output else None
    single_file = out is not None and out.suffix.lower() in WRITE_EXTENSIONS and not out.is_dir()
    if single_file and len(sources) > 1:
        raise UsageError(f"{len(sources)} inputs cannot all be written to the one file {out}")
    if any(s.is_stream for s in sources) and not single_file:
        raise UsageError("standard input needs -o FILE or -o - (standard output)")
    if out is not None and not single_file:
        _check_output_folder(out)
    jobs, existing = [], []
    for src in sources:
        dst = out if single_file else _output_path(src, out, suffix, ext)
        if not src.is_stream and dst.resolve() == src.path.resolve():
            raise ImageError(f"output {dst} would replace its own input; choose another -o or --suffix")
        if dst.exists() and not overwrite:
            existing.append(dst)
            if skip_existing:
                continue
        jobs.append((src, dst))
    if existing and not skip_existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ImageError(f"output {existing[0]} exists{more}; use --overwrite to replace or --skip-existing to keep")
    if existing:
        log.warning("skipping %d of %d inputs whose output exists", len(existing), len(sources))
    names = [d.resolve() for _, d in jobs]
    if len(set(names)) != len(names):
        raise UsageError("two inputs would be written to the same output file; use distinct names")
    if out is not None and not single_file:
        out.mkdir(parents=True, exist_ok=True)
    return jobs


def _check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ImageError(f"output {out} exists and is not a folder")
    if out.suffix and out.suffix.lower() not in WRITE_EXTENSIONS and not out.exists():
        raise ImageError(f"cannot write {out}: unsupported image type {out.suffix}")


def _output_path(src: Source, out: Path | None, suffix: str, ext: str | None) -> Path:
    name = src.path.stem + suffix + ("." + ext if ext else src.path.suffix)
    if out is None:
        return src.path.parent / name
    inside = src.path.parent.relative_to(src.base) if src.base is not None else Path()
    return out / inside / name


def _progress(jobs, enabled: bool):
    if not enabled or len(jobs) < 2:
        return jobs
    from tqdm import tqdm

    return tqdm(jobs, unit="image")
