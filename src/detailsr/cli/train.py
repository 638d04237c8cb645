"""`detailsr train`: train or fine-tune a network from a YAML recipe (also under torchrun)."""

from __future__ import annotations

import argparse
import logging
import os


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "train", parents=[common], help="train or fine-tune a network from a YAML recipe",
        description="Train from a recipe in configs/ (see docs/training.md). Settings can be overridden "
        "as key=value, e.g. train.iterations=2000 data.workers=2. Checkpoints, logs and the config go to "
        "<output>/<name>/. For several processes: torchrun --nproc_per_node N -m detailsr.train -c CONFIG.",
    )
    p.add_argument("-c", "--config", required=True, metavar="YAML", help="the training recipe")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint of the run folder (start when there is none)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings that replace the recipe's")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.config import load_config
    from ..train.trainer import train

    config = load_config(args.config, args.overrides)
    main_process = os.environ.get("RANK", "0") == "0"
    logging.getLogger("detailsr.train").setLevel(logging.INFO if main_process else logging.WARNING)
    run_dir = train(config, resume=args.resume, progress=None if not args.quiet else False)
    if main_process:
        print(f"trained {config['train']['iterations']} iterations; weights and logs in {run_dir}")
    return 0
