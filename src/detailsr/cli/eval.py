"""`detailsr eval`: PSNR / SSIM on benchmark folders under the papers' protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..choices import BLENDS, PROTOCOLS
from .options import (
    RATIO_HELP,
    add_compile_option,
    add_model_options,
    add_precision_option,
    check_tiles,
    load_from_args,
    non_negative_int,
    positive_int,
    routing_ratio,
    show_progress,
)

if TYPE_CHECKING:
    from ..evaluation import DatasetResult


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "eval", parents=[common], help="evaluate on benchmark datasets",
        description="PSNR/SSIM of a model on dataset folders (each with HR/ and optionally LR_bicubic/X<s>/). "
        "Protocols: y = Y channel (BT.601), border crop = scale (lightweight SR); rgb = RGB, no crop "
        "(large-image SR); ws = WS-PSNR/WS-SSIM for 360° ERP images (RGB, no crop): a folder without HR/ "
        "holds the HR panoramas themselves, and missing LR (LR_fisheye/X<s>/<name>.png) is made with the "
        "ODI fisheye degradation.",
    )
    add_model_options(p)
    add_precision_option(p)
    add_compile_option(p)
    p.add_argument("-d", "--datasets", nargs="+", required=True, metavar="DIR")
    p.add_argument("-s", "--scale", type=positive_int, required=True)
    p.add_argument("--ratio", type=routing_ratio, help=RATIO_HELP)
    p.add_argument("--protocol", choices=PROTOCOLS, default="y")
    p.add_argument("--tile", type=positive_int, help="LR tile side (the large-image protocol uses 64)")
    p.add_argument("--tile-overlap", type=non_negative_int, default=16, metavar="N")
    p.add_argument("--blend", choices=BLENDS, default="feather",
                   help="tile overlaps: feathered (default) or plain averaging as the official large-image test")
    p.add_argument("--json", type=Path, metavar="FILE", help="write all per-image results as JSON")
    p.add_argument("--save-images", type=Path, metavar="DIR", help="also write the SR images")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate every image; under torchrun (WORLD_SIZE > 1) each rank takes its share of all the
    datasets' images (see `detailsr.sharding`) and rank 0 gathers the results, prints the table and
    writes the JSON exactly as a single process would."""
    from ..evaluation import DatasetResult, hr_files
    from ..imageio import write_bytes_atomic
    from ..sharding import gather_results, process_group, shard, unshard

    check_tiles(args)
    folders = [Path(d) for d in args.datasets]
    for folder in folders:
        hr_files(folder, args.protocol)  # fail on a bad folder before loading the model
    net = load_from_args(args)
    with process_group(args.device) as ranks:
        items = [(k, path) for k, folder in enumerate(folders) for path in hr_files(folder, args.protocol)]
        mine = shard(items, ranks)
        local = []
        for k, folder in enumerate(folders):
            files = [path for i, path in mine if i == k]
            if files:
                found = _evaluate(net, folder, files, args, show_progress(args) and ranks.main)
                local += [(k, name, result) for name, result in found.images.items()]
        parts = gather_results(local)
    if not ranks.main:
        return 0
    merged = unshard(parts)
    results = [DatasetResult(folder.name, {name: r for i, name, r in merged if i == k})
               for k, folder in enumerate(folders)]
    print(format_table(results, args.protocol))
    if args.json:
        report = to_json(args.model, net.scale, args.ratio, args.protocol, results)
        if args.precision != "fp32":
            report["precision"] = args.precision
        write_bytes_atomic(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0


def _evaluate(net, folder: Path, files: list[Path], args, progress: bool) -> DatasetResult:
    from ..evaluation import evaluate_folder

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc=folder.name, unit="image", leave=False)
    try:
        return evaluate_folder(
            net, folder, args.scale, ratio=args.ratio, protocol=args.protocol, tile=args.tile,
            tile_overlap=args.tile_overlap, blend=args.blend, save_dir=args.save_images,
            on_image=(lambda _: bar.update()) if bar else None, files=files,
        )
    finally:
        if bar:
            bar.close()


def format_table(results: list[DatasetResult], protocol: str) -> str:
    what = {"y": "Y, crop = scale", "rgb": "RGB, no crop", "ws": "WS on RGB, no crop"}[protocol]
    header = f"{'dataset':<12} {'images':>6} {'PSNR':>8} {'SSIM':>7} {'GFLOPs/img':>11} {'s/img':>7}"
    lines = [f"PSNR (dB) / SSIM on {what}; GFLOPs executed (2 x MACs), whole-image path", header]
    for r in results:
        lines.append(
            f"{r.name:<12} {len(r.images):>6} {r.mean('psnr'):>8.2f} {r.mean('ssim'):>7.4f} "
            f"{r.mean('gflops'):>11.2f} {r.mean('seconds'):>7.2f}"
        )
        if protocol == "ws":
            ws = {k: sum(i.extra[k] for i in r.images.values()) / len(r.images) for k in ("ws_psnr", "ws_ssim")}
            lines.append(f"{'':<12} {'':>6} WS-PSNR {ws['ws_psnr']:.2f}  WS-SSIM {ws['ws_ssim']:.4f}")
    return "\n".join(lines)


def to_json(model: str | None, scale: int, ratio, protocol: str, results: list[DatasetResult]) -> dict:
    return {
        "model": model,
        "scale": scale,
        "ratio": ratio,
        "protocol": protocol,
        "datasets": {
            r.name: {
                "psnr": r.mean("psnr"),
                "ssim": r.mean("ssim"),
                "images": {
                    name: {"psnr": i.psnr, "ssim": i.ssim, "gflops": i.gflops, **i.extra}
                    for name, i in r.images.items()
                },
            }
            for r in results
        },
    }
