"""`detailsr mask`: a picture of where a content-aware model attended."""

from __future__ import annotations

import argparse

from .options import RATIO_HELP, add_model_options, load_from_args, routing_ratio


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "mask", parents=[common], help="draw the routing map of an image",
        description="Write a gray map at the input's size: the share of the model's blocks in which each "
        "pixel's window got self-attention (white: all blocks, black: none).",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("-o", "--output", required=True, help="output image file")
    add_model_options(p)
    p.add_argument("--ratio", type=routing_ratio, help=RATIO_HELP)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..imageio import read_image, write_image
    from ..routing import routing_maps

    image = read_image(args.input)
    net = load_from_args(args)
    share = routing_maps(net, image.pixels, ratio=args.ratio)
    gray = np.floor(share * 255 + 0.5).astype(np.uint8)
    write_image(args.output, np.repeat(gray[:, :, None], 3, axis=2), grayscale=True, overwrite=args.overwrite)
    print(f"{args.output}: attention share {share.mean():.3f} of the pixels x blocks")
    return 0
