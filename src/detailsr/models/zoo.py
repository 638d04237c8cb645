"""Named checkpoints: where each official file comes from, what it is, what its authors report.

Files are downloaded on first use into the user cache folder (`$DETAILSR_CACHE`, else
`$XDG_CACHE_HOME/detailsr`, else `~/.cache/detailsr`). With `DETAILSR_OFFLINE=1`, or when the
download fails, the error says where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, ModelNotFoundError

log = logging.getLogger(__name__)

_CAMIXER_RAW = (
    "https://github.com/icandle/CAMixerSR/raw/d690b12bb2a0a185dc0049538b377d569f520497/pretrained_models/"
)
_CAMIXER_SOURCE = "icandle/CAMixerSR (official)"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    file: str  # path inside the cache folder
    url: str
    arch: str
    scale: int
    params: int
    licence: str
    source: str
    sha256: str | None = None  # None where unknown: the hash is logged after download
    ratio: float | None = None  # the ratio the authors evaluate with (content-aware models)
    metrics: dict[str, str] = field(default_factory=dict)  # as reported by the authors, not re-measured
    notes: str = ""


def _camixer(name, path, scale, params, metrics, sha256=None, notes="", arch="camixersr"):
    return ZooEntry(
        name=name, file="camixersr/" + path, url=_CAMIXER_RAW + path, arch=arch, scale=scale, params=params,
        licence="Apache-2.0", source=_CAMIXER_SOURCE, sha256=sha256, ratio=0.5, metrics=metrics, notes=notes,
    )


_LARGE = "PSNR-RGB F2K/Test2K/Test4K/Test8K (64x64 tiles, overlap 4)"
ENTRIES: tuple[ZooEntry, ...] = (
    _camixer(
        "camixersr-s-x4", "LargeSR/CAMixerSR_S.pth", 4, 351_238,
        {_LARGE + " ratio 1": "29.12/26.26/27.73/33.66", _LARGE + " ratio 0.5": "29.08/26.24/27.70/33.63",
         "FLOPs per 32x32 LR (ratio 1/0.5)": "894M/652M"},
        sha256="49ffcfbb59583b4512ed7f4290b6f480b4bac50afb3d1db1553687bbdeff3076",
        notes="large-image SR, DIV2K",
    ),
    _camixer(
        "camixersr-m-x4", "LargeSR/CAMixerSR_M.pth", 4, 534_558,
        {_LARGE + " ratio 1": "29.20/26.32/27.80/33.72", _LARGE + " ratio 0.5": "29.18/26.30/27.79/33.71",
         "FLOPs per 32x32 LR (ratio 1/0.5)": "1.37G/1.03G"},
        notes="large-image SR, DIV2K",
    ),
    _camixer(
        "camixersr-b-x4", "LargeSR/CAMixerSR_B.pth", 4, 765_322,
        {_LARGE + " ratio 1": "29.31/26.39/27.89/33.81", _LARGE + " ratio 0.5": "29.30/26.38/27.87/33.81",
         "FLOPs per 32x32 LR (ratio 1/0.5)": "1.96G/1.49G"},
        notes="large-image SR, DIV2K; the same file as camixersr-light-x4",
    ),
    _camixer(
        "camixersr-classsr-x4", "LargeSR/CAMixerSR_ClassSR.pth", 4, 2_356_001,
        {"PSNR-RGB F2K/Test2K/Test4K/Test8K (+ClassSR)": "29.18/26.28/27.76/33.65"},
        arch="classsr_camixersr",
        notes="ClassSR classifier + 3 CAMixerSR branches; which branch layout the file holds is unverified",
    ),
    _camixer("camixersr-light-x2", "LightSR/CAMixerSRx2.pth", 2, 745_846, {}, notes="lightweight SR, DIV2K"),
    _camixer("camixersr-light-x2-df2k", "LightSR/CAMixerSRx2_DF.pth", 2, 745_846, {}, notes="lightweight SR, DF2K"),
    _camixer("camixersr-light-x3", "LightSR/CAMixerSRx3.pth", 3, 753_961, {}, notes="lightweight SR, DIV2K"),
    _camixer(
        "camixersr-light-x4", "LightSR/CAMixerSRx4.pth", 4, 765_322, {},
        notes="lightweight SR, DIV2K; the same file as camixersr-b-x4",
    ),
    _camixer(
        "camixersr-light-x4-df2k", "LightSR/CAMixerSRx4_DF.pth", 4, 765_322,
        {"PSNR/SSIM-Y Set5/Set14/B100/Urban100/Manga109 (ratio 0.5)":
         "32.51/0.8988, 28.82/0.7870, 27.72/0.7416, 26.63/0.8012, 31.18/0.9166"},
        notes="lightweight SR, DF2K (the README does not say which x4 file its table uses)",
    ),
    _camixer(
        "camixersr-odi-x2", "ODISR/CAMixerSRx2.pth", 2, 1_305_147,
        {"ODI-SR PSNR/SSIM/WS-PSNR/WS-SSIM": "30.46/0.8789/29.83/0.8747",
         "SUN360 PSNR/SSIM/WS-PSNR/WS-SSIM": "31.04/0.8810/31.60/0.9020"},
        arch="camixerosr", notes="360° (ERP) SR, fisheye degradation",
    ),
    _camixer(
        "camixersr-odi-x4", "ODISR/CAMixerSRx4.pth", 4, 1_324_623,
        {"ODI-SR PSNR/SSIM/WS-PSNR/WS-SSIM": "27.19/0.7691/26.49/0.7538",
         "SUN360 PSNR/SSIM/WS-PSNR/WS-SSIM": "27.48/0.7736/27.36/0.7916"},
        arch="camixerosr", notes="360° (ERP) SR, fisheye degradation",
    ),
)

# The model `detailsr upscale` uses when none is named.
DEFAULT_MODEL = "camixersr-s-x4"


def names() -> list[str]:
    return [e.name for e in ENTRIES]


def get(name: str) -> ZooEntry | None:
    key = name.lower()
    return next((e for e in ENTRIES if e.name == key), None)


def cache_dir() -> Path:
    if os.environ.get("DETAILSR_CACHE"):
        return Path(os.environ["DETAILSR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "detailsr"


def fetch(entry: ZooEntry) -> Path:
    """Local path of a zoo checkpoint, downloading it into the cache when missing."""
    path = cache_dir() / entry.file
    if not path.is_file():
        if os.environ.get("DETAILSR_OFFLINE", "") not in ("", "0"):
            raise ModelNotFoundError(_missing_message(entry, path, "offline mode (DETAILSR_OFFLINE is set)"))
        _download(entry, path)
    _verify(entry, path)
    return path


def _download(entry: ZooEntry, path: Path) -> None:
    log.info("downloading %s from %s", entry.name, entry.url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        raise ModelNotFoundError(_missing_message(entry, path, f"download failed: {e}")) from e


def _verify(entry: ZooEntry, path: Path) -> None:
    digest = sha256_of(path)
    if entry.sha256 is None:
        log.info("%s: sha256 %s (no published hash to compare with)", path, digest)
    elif digest != entry.sha256:
        raise CheckpointError(
            f"{path} does not match the published sha256 of {entry.name} ({digest} != {entry.sha256}); "
            "delete it to download again"
        )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _missing_message(entry: ZooEntry, path: Path, why: str) -> str:
    return f"model {entry.name} is not in the cache ({why}); download {entry.url} and save it as {path}"
