"""Render docs/results.md from benchmarks/results/*.json.

    python benchmarks/report.py
"""

from __future__ import annotations

import json

from common import RESULTS, ROOT


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ratio(value) -> str:
    return "-" if value is None else value if isinstance(value, str) else f"{value:g}"


def quality_section(data: dict) -> list[str]:
    lines = ["## Quality", "", f"Protocol: {data['protocol']}. Command: `{data['command']}`. Deterministic "
             "routing: the windows with the largest predictor margin; K = floor(N * ratio + 0.5) per block, or "
             "with ratio auto the predictor's expected count per image and block. *attended*: the share of "
             "windows that took self-attention, over all blocks and images. Latency is in the cost section.", "",
             "| model | ratio | dataset | images | PSNR-Y | SSIM-Y | executed GFLOPs/img | attended |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        ratio = _ratio(r["ratio"])
        attended = "-" if r.get("attended") is None else f"{100 * r['attended']:.1f} %"
        lines.append(f"| {r['model']} | {ratio} | {r['dataset']} | {r['images']} | {r['psnr_y']:.4f} | "
                     f"{r['ssim_y']:.4f} | {r['executed_gflops']:.2f} | {attended} |")
    return lines


def cost_section(data: dict) -> list[str]:
    w, h = data["latency_lr_size"]
    lines = ["## Cost", "", f"Command: `{data['command']}` (torch {data['machine']['torch']}).", "",
             "FLOPs: *nominal* is the paper's analytic counter (CAMixerSR: 2 x MACs for convs and linears, "
             "attention as MACs) per 32x32 LR input; *executed* counts convs, linears, matmuls and "
             "attention op by op as run (FLOPs = 2 x MACs).", "",
             "| model | ratio | params | nominal MFLOPs (32x32) | executed MFLOPs (32x32) | "
             "executed GMACs (1280x720 out) |", "|---|---|---|---|---|---|"]
    for r in data["flops"]:
        nominal = "-" if r["nominal_mflops_32x32"] is None else f"{r['nominal_mflops_32x32']:.1f}"
        ratio = _ratio(r["ratio"])
        lines.append(f"| {r['model']} | {ratio} | {r['params']:,} | {nominal} | "
                     f"{r['executed_mflops_32x32']:.1f} | {r['executed_gmacs_1280x720_out']:.2f} |")
    lines += ["", f"Latency, CPU, {w}x{h} LR input, median of the runs; ratios of one model measured "
              "interleaved in one run (compare within a model and thread count)."
              + (f" {data['note']}" if data.get("note") else ""), "",
              "| model | threads | ratio | median s | min s | max s | output MP/s | peak MiB |",
              "|---|---|---|---|---|---|---|---|"]
    for r in data["latency"]:
        ratio = _ratio(r["ratio"])
        lines.append(f"| {r['model']} | {r['threads']} | {ratio} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
                     f"{r['max_s']:.3f} | {r['output_mpix_per_s']:.3f} | {r['peak_memory_mib']:.0f} |")
    return lines


def bench_section(name: str, data: dict) -> list[str]:
    """A `detailsr bench --json` file: the interleaved comparison it recorded."""
    w, h = data["size"]
    weights = ", untrained weights (speed does not depend on them)" if data.get("untrained") else ""
    command = data.get("command") or COMMANDS.get(name, "")
    lines = [f"### {name}", "", f"`{command}`: LR {w}x{h}, {data['threads']} thread(s), {data['device']}{weights}.",
             "", "| case | median s | min s | max s | output MP/s | peak MiB | vs first |",
             "|---|---|---|---|---|---|---|"]
    base = data["cases"][0]["median_s"]
    for c in data["cases"]:
        lines.append(f"| {c['label']} | {c['median_s']:.3f} | {c['min_s']:.3f} | {c['max_s']:.3f} | "
                     f"{c['output_mpix_per_s']:.3f} | {c['peak_memory_mib']:.0f} | {c['median_s'] / base:.2f}x |")
    return lines


def official_section(name: str, data: dict) -> list[str]:
    """`official_camixersr.py`: detailsr against the official code, interleaved."""
    lines = [f"### {name}", "", f"`{data['command']}` (torch {data['machine']['torch']}): CAMixerSR-S x4, LR "
             f"{data['size']} of {data['image']}, median of the interleaved runs, "
             f"{data.get('rule', 'detailsr with K = ratio x N')}.", "",
             "| ratio | official s | detailsr s | speed-up | detailsr vs its ratio 1 |", "|---|---|---|---|---|"]
    full = {r["ratio"]: r["detailsr_s"] for r in data["rows"]}
    for r in data["rows"]:
        relative = f"{r['detailsr_s'] / full[1.0]:.2f}" if 1.0 in full else "-"
        lines.append(f"| {r['ratio']:g} | {r['official_s']:.3f} | {r['detailsr_s']:.3f} | {r['speedup']:.2f}x | "
                     f"{relative} |")
    return lines


def official_atd_section(name: str, data: dict) -> list[str]:
    """`official_atd.py`: ATD-light against the official code, interleaved."""
    lines = [f"### {name}", "", f"`{data['command']}` (torch {data['machine']['torch']}, "
             f"{data['machine']['threads']} thread(s)): ATD-light x4, {data['weights']} weights, LR crops of "
             f"{data['image']}, `{data['backend']}` attention, median of the interleaved runs.", "",
             "| LR size | official s | detailsr s | speed-up | max abs difference |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['size']} | {r['official_s']:.3f} | {r['detailsr_s']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['max_abs_diff']:.1e} |")
    return lines


def fast_path_section(name: str, data: dict) -> list[str]:
    """`fast_path.py`: each channels-last inference path against its plain-module twin, interleaved."""
    lines = [f"### {name}", "", f"`{data['command']}` (torch {data['machine']['torch']}, "
             f"{data['machine']['threads']} thread(s)): the optimised path against the plain modules it is "
             "tested against, median of the interleaved runs.", "",
             "| model | ratio | plain s | fast s | speed-up |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['model']} | {r['ratio']:g} | {r['plain_s']:.3f} | {r['fast_s']:.3f} | "
                     f"{r['speedup']:.2f}x |")
    return lines


def large_image_section(data: dict) -> list[str]:
    lines = ["## An 8K frame", "", f"`{data['command']}`: {data['model']}, x4 from {data['input']} (7680x4320 "
             f"output), {data['threads']} thread(s), the real command in its own process.", "",
             "| run | seconds | peak RSS GiB | output MP/s |", "|---|---|---|---|"]
    for name, r in data["runs"].items():
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {r['output_mpix_per_s']:.3f} |")
    if "tiled_vs_whole_mean_abs_255" in data:
        lines += ["", f"Default budget (tiles) vs whole image: mean abs difference "
                  f"{data['tiled_vs_whole_mean_abs_255']:.3f}/255, max {data['tiled_vs_whole_max_abs_255']:.0f}/255."]
    return lines


def routing_section(data: dict) -> list[str]:
    """`routing.py`: how much the routing maps follow the content."""
    lines = ["## Routing", "", f"`{data['command']}`: {data['model']}, mean over the images. *attended*: share "
             "of windows that took self-attention; *flip agreement*: 1 - mean |map - map of the flipped image, "
             "flipped back| (1: the routing follows the content only).", "",
             "| dataset | ratio | images | attended | vertical flip agreement | horizontal flip agreement |",
             "|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['dataset']} | {_ratio(r['ratio'])} | {r['images']} | {100 * r['attended']:.1f} % | "
                     f"{r['vertical_flip_agreement']:.3f} | {r['horizontal_flip_agreement']:.3f} |")
    return lines


def plots_section() -> list[str]:
    """The PNGs `benchmarks/plot.py` drew from the same results."""
    drawn = [(name, title) for name, title in (("psnr_vs_gflops", "PSNR against executed GFLOPs"),
                                                ("latency_vs_ratio", "Latency against the ratio"))
             if (ROOT / "docs" / "plots" / f"{name}.png").is_file()]
    if not drawn:
        return []
    lines = ["## Plots", "", "Drawn by `python benchmarks/plot.py` (which then renders this page) from the same "
             "JSON files.", ""]
    for name, title in drawn:
        lines += [f"![{title}](plots/{name}.png)", ""]
    return lines


# Commands of bench files recorded before the JSON carried its own command line.
COMMANDS = {
    "esc_vs_atd_x4_256": "detailsr bench -m esc-light-x4 atd-light-x4 --untrained --size 256x256 --threads 1 "
                         "--runs 3 --json benchmarks/results/esc_vs_atd_x4_256.json",
}


def main() -> None:
    lines = ["# Results", "", "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; "
             "do not edit by hand.", ""]
    for name, render in (("quality", quality_section), ("routing", routing_section), ("cost", cost_section)):
        data = _load(name)
        if data is not None:
            lines += render(data) + [""]
    lines += plots_section()
    official = sorted(RESULTS.glob("official_camixersr_*.json")) + sorted(RESULTS.glob("official_atd_*.json"))
    if official:
        lines += ["## Against the official code", ""]
        for path in official:
            render = official_atd_section if path.stem.startswith("official_atd") else official_section
            lines += render(path.stem, json.loads(path.read_text())) + [""]
    fast = sorted(RESULTS.glob("fast_path_*.json"))
    if fast:
        lines += ["## Optimised paths against their oracles", ""]
        for path in fast:
            lines += fast_path_section(path.stem, json.loads(path.read_text())) + [""]
    large = _load("large_image")
    if large is not None:
        lines += large_image_section(large) + [""]
    comparisons = [p for p in sorted(RESULTS.glob("*.json")) if "cases" in json.loads(p.read_text())]
    if comparisons:
        lines += ["## Speed comparisons (`detailsr bench`)", ""]
        for path in comparisons:
            lines += bench_section(path.stem, json.loads(path.read_text())) + [""]
    extra = ROOT / "docs" / "results_notes.md"
    if extra.is_file():
        lines += [extra.read_text().rstrip(), ""]
    (ROOT / "docs" / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
