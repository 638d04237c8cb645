"""`detailsr models`: the model zoo."""

from __future__ import annotations

import argparse


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("models", parents=[common], help="list the model zoo",
                       description="List the named models: architecture, scale, parameters, source, "
                       "licence and the metrics their authors report.")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..models import zoo

    rows = [("name", "arch", "scale", "params", "licence", "local", "source")]
    for e in zoo.ENTRIES:
        cached = "embedded" if e.embedded else "cached" if (zoo.cache_dir() / e.file).is_file() else "no"
        rows.append((e.name, e.arch, f"x{e.scale}", f"{e.params:,}", e.licence, cached, e.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print("\nreported by the authors (not re-measured):")
    for e in zoo.ENTRIES:
        ratio = f", evaluated at ratio {e.ratio}" if e.ratio is not None else ""
        print(f"  {e.name}: {e.notes}{ratio}")
        for k, v in e.metrics.items():
            print(f"      {k}: {v}")
    print(f"\ncache folder: {zoo.cache_dir()}   default model: {zoo.DEFAULT_MODEL}")
    return 0
