"""Draw the trade-offs of benchmarks/results/*.json as PNGs under docs/plots/, shown in docs/results.md.

    pip install matplotlib   # once; not a dependency of detailsr itself
    python benchmarks/plot.py      # draws, then renders docs/results.md (benchmarks/report.py)

- `psnr_vs_gflops.png`: PSNR-Y against executed GFLOPs per image, one panel per dataset (quality.json):
  every model with weights on this machine, at every measured ratio including "auto".
- `latency_vs_ratio.png`: CPU latency against the ratio (the official comparisons and cost.json),
  each series relative to its own ratio-1 time, so that runs of different sizes share one axis.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from common import RESULTS, ROOT  # noqa: E402
from report import main as render_report  # noqa: E402

PLOTS = ROOT / "docs" / "plots"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def psnr_vs_gflops(quality: dict) -> None:
    datasets = list(dict.fromkeys(r["dataset"] for r in quality["rows"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        rows = [r for r in quality["rows"] if r["dataset"] == dataset]
        for model in dict.fromkeys(r["model"] for r in rows):
            own = [r for r in rows if r["model"] == model]
            fixed = sorted((r for r in own if not isinstance(r["ratio"], str)), key=lambda r: r["executed_gflops"])
            ax.plot([r["executed_gflops"] for r in fixed], [r["psnr_y"] for r in fixed], "o-", label=f"{model}")
            for r in fixed:
                ax.annotate(f"{r['ratio']:g}", (r["executed_gflops"], r["psnr_y"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
            for r in (r for r in own if r["ratio"] == "auto"):
                ax.plot(r["executed_gflops"], r["psnr_y"], "*", markersize=12, label=f"{model} auto")
        ax.set_title(f"{dataset} x{rows[0]['scale']}")
        ax.set_xlabel("executed GFLOPs per image")
        ax.set_ylabel("PSNR-Y (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    _save(fig, "psnr_vs_gflops.png")


def latency_vs_ratio() -> None:
    series = []
    for path in sorted(RESULTS.glob("official_camixersr_*.json")):
        data = json.loads(path.read_text())
        rows = sorted(data["rows"], key=lambda r: r["ratio"])
        base = {r["ratio"]: r for r in rows}.get(1.0)
        if base is None:
            continue
        rule = "official K" if "official_k" in path.stem else "K = ratio x N"
        for who in ("detailsr", "official"):
            series.append((f"{who} ({rule}), {data['size']}", [r["ratio"] for r in rows],
                           [r[f"{who}_s"] / base[f"{who}_s"] for r in rows]))
    cost = _load("cost")
    if cost is not None:
        for (model, threads) in dict.fromkeys((r["model"], r["threads"]) for r in cost["latency"]):
            rows = sorted((r for r in cost["latency"] if (r["model"], r["threads"]) == (model, threads)
                           and isinstance(r["ratio"], float)), key=lambda r: r["ratio"])
            base = {r["ratio"]: r for r in rows}.get(1.0)
            if base is not None and len(rows) > 1:
                series.append((f"{model}, {threads} thread(s)", [r["ratio"] for r in rows],
                               [r["median_s"] / base["median_s"] for r in rows]))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, ratios, relative in series:
        ax.plot(ratios, relative, "o-", label=label)
    ax.set_xlabel("ratio (share of windows attended)")
    ax.set_ylabel("latency / latency at ratio 1")
    ax.set_title("CAMixerSR-S x4, CPU latency against the ratio")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, "latency_vs_ratio.png")


def _save(fig, name: str) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # fixed metadata: the same data draws the same bytes
    fig.savefig(PLOTS / name, dpi=110, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {PLOTS / name}")


def main() -> None:
    quality = _load("quality")
    if quality is not None:
        psnr_vs_gflops(quality)
    latency_vs_ratio()
    render_report()


if __name__ == "__main__":
    main()
