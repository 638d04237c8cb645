"""Named checkpoints: where each official file comes from, what it is, what its authors report.

The default model is embedded in the package (`detailsr/weights/`): it needs no network. Other
files are downloaded on first use into the user cache folder (`$DETAILSR_CACHE`, else
`$XDG_CACHE_HOME/detailsr`, else `~/.cache/detailsr`). With `DETAILSR_OFFLINE=1`, or when the
download fails, the error says where to put the file by hand; a failed download leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
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
    config: dict = field(default_factory=dict)  # hyper-parameters: builds the architecture without the file
    embedded: str | None = None  # file in the package's weights/ folder: no download


_CAMIXER_WIDTH = {351_238: 36, 534_558: 48}  # S and M; every other CAMixerSR file has 60 channels


def _camixer(name, path, scale, params, metrics, sha256=None, notes="", arch="camixersr", embedded=None):
    n_feats = _CAMIXER_WIDTH.get(params, 60)
    config = {"n_feats": n_feats, "n_block": [4, 4, 6, 6], "scale": scale}
    if arch == "camixerosr":
        config["n_block"] = [6, 6, 6, 6]
    if arch == "classsr_camixersr":
        config["n_feats"] = [60, 60, 60]
    return ZooEntry(
        name=name, file="camixersr/" + path, url=_CAMIXER_RAW + path, arch=arch, scale=scale, params=params,
        licence="Apache-2.0", source=_CAMIXER_SOURCE, sha256=sha256, ratio=0.5, metrics=metrics, notes=notes,
        config=config, embedded=embedded,
    )


_ATD_FOLDER = "https://drive.google.com/drive/folders/1D3BvTS1xBcaU1mp50k3pBzUWb7qjRvmB"
_ATD_SOURCE = "LabShuHangGU/Adaptive-Token-Dictionary (official, CVPR 2024 release, Google Drive)"
_ATD_Y = "PSNR/SSIM-Y Set5/Set14/B100/Urban100/Manga109"


def _atd(name, file, arch, scale, params, metrics, drive_id=None, notes=""):
    """An official ATD / ATD-light file: a Drive file where its id is known, else the release folder."""
    url = f"https://drive.google.com/uc?export=download&id={drive_id}" if drive_id else _ATD_FOLDER
    if not drive_id:
        notes += "; no Drive file id known: download it by hand from the release folder"
    return ZooEntry(
        name=name, file="atd/" + file, url=url, arch=arch, scale=scale, params=params, licence="Apache-2.0",
        source=_ATD_SOURCE, metrics={_ATD_Y: metrics}, notes=notes, config={"scale": scale},
    )


def _pp_atd_light(base: ZooEntry) -> ZooEntry:
    """Pure-Pass on an official ATD-light file: the same file and weights, training-free."""
    return dataclasses.replace(
        base, name="pp-" + base.name, arch="pp_atd_light", metrics={},
        notes="Pure-Pass (training-free) on the weights of " + base.name + "; no published numbers",
    )


_ESC_RELEASE = "https://github.com/dslisleedh/ESC/releases/download/1.0.0/"
_ESC_SOURCE = "dslisleedh/ESC (official, GitHub release 1.0.0)"
_ESC_Y = "PSNR/SSIM-Y Set5/Set14/B100/Urban100/Manga109"
_ESC_COST = "latency ms / memory MB / FLOPs G (1280x720 output, the paper's GPU)"


def _esc(name, file, arch, scale, params, metrics=None, cost=None, sha256=None, notes=""):
    """An official ESC-family release file (spec arch-esc.md; metrics from its section 11)."""
    reported = {_ESC_Y: metrics} if isinstance(metrics, str) else dict(metrics or {})
    if cost:
        reported[_ESC_COST] = cost
    return ZooEntry(
        name=name, file="esc/" + file, url=_ESC_RELEASE + file, arch=arch, scale=scale, params=params,
        licence="MIT", source=_ESC_SOURCE, sha256=sha256, metrics=reported, notes=notes,
        config={**_esc_variant(name, arch), "scale": scale},
    )


def _esc_variant(name: str, arch: str) -> dict:
    from .esc import VARIANTS

    for variant in ("esc-light", "esc-xl", "esc-fp", "esc-real"):
        if name.startswith(variant):
            return VARIANTS[variant][1]
    return VARIANTS["esc"][1]


_ATD_LIGHT = (
    _atd("atd-light-x2", "101_ATD_light_SRx2_scratch.pth", "atd_light", 2, 753_204,
         "38.29/0.9616, 34.10/0.9217, 32.39/0.9023, 33.27/0.9375, 39.52/0.9789",
         drive_id="1ZxK7gMJXgeyHgeOaKbzpXtoElDmRWKkU", notes="ATD-light, DIV2K, trained from scratch"),
    _atd("atd-light-x3", "102_ATD_light_SRx3_finetune.pth", "atd_light", 3, 759_699,
         "34.74/0.9300, 30.68/0.8485, 29.32/0.8109, 29.17/0.8709, 34.60/0.9506",
         drive_id="1mPcWMyDO9lOUD6DrrmNxFR67sGqnOJxp", notes="ATD-light, DIV2K, fine-tuned from x2"),
    _atd("atd-light-x4", "103_ATD_light_SRx4_finetune.pth", "atd_light", 4, 768_792,
         "32.63/0.8998, 28.89/0.7886, 27.79/0.7440, 26.97/0.8107, 31.48/0.9198",
         drive_id="1CxzxLWMIHDHip2nDF6A2sLBTkpypI8GU", notes="ATD-light, DIV2K, fine-tuned from x2"),
)
_LARGE = "PSNR-RGB F2K/Test2K/Test4K/Test8K (64x64 tiles, overlap 4)"
ENTRIES: tuple[ZooEntry, ...] = (
    _camixer(
        "camixersr-s-x4", "LargeSR/CAMixerSR_S.pth", 4, 351_238,
        {_LARGE + " ratio 1": "29.12/26.26/27.73/33.66", _LARGE + " ratio 0.5": "29.08/26.24/27.70/33.63",
         "FLOPs per 32x32 LR (ratio 1/0.5)": "894M/652M"},
        sha256="49ffcfbb59583b4512ed7f4290b6f480b4bac50afb3d1db1553687bbdeff3076",
        notes="large-image SR, DIV2K; embedded in the package (its params_ema as safetensors)",
        embedded="camixersr-s-x4.safetensors",
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
    *_ATD_LIGHT,
    *(_pp_atd_light(e) for e in _ATD_LIGHT),
    _atd("atd-x2", "001_ATD_SRx2_finetune.pth", "atd", 2, 20_113_217,
         "38.61/0.9629, 34.92/0.9275, 32.64/0.9054, 34.73/0.9476, 40.35/0.9810",
         notes="ATD, DF2K, fine-tuned at 96x96 patches"),
    _atd("atd-x3", "002_ATD_SRx3_finetune.pth", "atd", 3, 20_297_857,
         "35.15/0.9331, 31.15/0.8556, 29.58/0.8175, 30.52/0.8924, 35.64/0.9558",
         notes="ATD, DF2K, fine-tuned from x2"),
    _atd("atd-x4", "003_ATD_SRx4_finetune.pth", "atd", 4, 20_260_929,
         "33.14/0.9061, 29.25/0.7976, 28.02/0.7524, 28.22/0.8414, 32.65/0.9308",
         drive_id="1J9kR9OyrOxtJ5Ygbr_W116BLBwnD4VNL", notes="ATD, DF2K, fine-tuned from x2"),
    _esc("esc-x2", "ESC_DIV2K_X2.pth", "esc", 2, 946_728,
         "38.35/0.9619, 34.11/0.9223, 32.41/0.9027, 33.46/0.9395, 39.54/0.9790", "120.9/831/592.0",
         notes="ESC, DIV2K"),
    _esc("esc-x3", "ESC_DIV2K_X3.pth", "esc", 3, 955_383,
         "34.84/0.9308, 30.74/0.8493, 29.34/0.8118, 29.28/0.8739, 34.66/0.9512", "41.4/385/267.6",
         notes="ESC, DIV2K, initialised from x2"),
    _esc("esc-x4", "ESC_DIV2K_X4.pth", "esc", 4, 967_500,
         "32.68/0.9011, 28.93/0.7902, 27.80/0.7447, 27.07/0.8144, 31.54/0.9207", "21.9/215/149.2",
         notes="ESC, DIV2K, initialised from x2"),
    _esc("esc-light-x2", "ESC_light_X2.pth", "esc", 2, 603_600,
         "38.24/0.9615, 33.98/0.9211, 32.35/0.9020, 33.05/0.9363, 39.33/0.9786", "73.2/830/359.4",
         notes="ESC-light (ESC-lt in the paper), DIV2K"),
    _esc("esc-light-x3", "ESC_light_X3.pth", "esc", 3, 612_255,
         "34.61/0.9295, 30.52/0.8475, 29.26/0.8102, 28.93/0.8679, 34.33/0.9495", "25.2/384/162.8",
         notes="ESC-light (ESC-lt in the paper), DIV2K, initialised from x2"),
    _esc("esc-light-x4", "ESC_light_X4.pth", "esc", 4, 624_372,
         "32.52/0.8995, 28.87/0.7878, 27.72/0.7423, 26.76/0.8058, 31.26/0.9173", "13.3/213/91.0",
         notes="ESC-light (ESC-lt in the paper), DIV2K, initialised from x2"),
    _esc("esc-fp-x2", "ESC_FP_X2.pth", "esc_fp", 2, 523_675,
         "38.27/0.9617, 34.09/0.9219, 32.37/0.9022, 33.22/0.9375, 39.40/0.9784", "94.3/627/239.8",
         notes="ESC-FP, DIV2K"),
    _esc("esc-fp-x3", "ESC_FP_X3.pth", "esc_fp", 3, 530_170,
         "34.72/0.9300, 30.67/0.8483, 29.30/0.8107, 29.12/0.8706, 34.56/0.8706", "34.8/291/110.0",
         notes="ESC-FP, DIV2K, initialised from x2; the Manga109 SSIM 0.8706 is as printed in the paper"),
    _esc("esc-fp-x4", "ESC_FP_X4.pth", "esc_fp", 4, 539_263,
         "32.56/0.8897, 28.87/0.7889, 27.75/0.7435, 26.90/0.8098, 31.40/0.9192", "21.7/158/60.8",
         notes="ESC-FP, DIV2K, initialised from x2; the Set5 SSIM 0.8897 is as printed in the paper"),
    _esc("esc-dflip-x2", "ESC_DFLIP_X2.pth", "esc", 2, 946_728,
         "38.34/0.9618, 34.42/0.9235, 32.50/0.9036, 33.86/0.9424, 39.73/0.9795", "120.9/831/592.0",
         notes="ESC trained on DFLIP (DIV2K + Flickr2K + LSDIR + DiverSeg-IP)"),
    _esc("esc-dflip-x3", "ESC_DFLIP_X3.pth", "esc", 3, 955_383,
         "34.85/0.9312, 30.97/0.8511, 29.41/0.8135, 29.70/0.8799, 34.94/0.9525", "41.4/385/267.6",
         notes="ESC trained on DFLIP (DIV2K + Flickr2K + LSDIR + DiverSeg-IP)"),
    _esc("esc-dflip-x4", "ESC_DFLIP_X4.pth", "esc", 4, 967_500,
         "32.79/0.9025, 29.06/0.7927, 27.85/0.7466, 27.45/0.8229, 31.87/0.9239", "21.9/215/149.2",
         notes="ESC trained on DFLIP (DIV2K + Flickr2K + LSDIR + DiverSeg-IP)"),
    _esc("esc-xl-x2-pt", "ESC_XL_DF2K_X2_PT.pth", "esc", 2, 12_455_916,
         notes="ESC-XL, DF2K, x2 pre-training stage (the test configs use the _FT files); no reported metrics"),
    _esc("esc-xl-x2", "ESC_XL_DF2K_X2_FT.pth", "esc", 2, 12_455_916,
         notes="ESC-XL, DF2K, fine-tuned; no metrics in the material read"),
    _esc("esc-xl-x3", "ESC_XL_DF2K_X3_FT.pth", "esc", 3, 12_481_851,
         notes="ESC-XL, DF2K, fine-tuned; no metrics in the material read"),
    _esc("esc-xl-x4", "ESC_XL_DF2K_X4_FT.pth", "esc", 4, 12_518_160,
         notes="ESC-XL, DF2K, fine-tuned; no metrics in the material read"),
    _esc("esc-real-x4-mse", "ESC_Real_X4_MSE.pth", "esc_real", 4, 2_265_307,
         sha256="ba22ae75b5f77382b1046e68634f58a53fc7ff5ffa46714133bfba30811ad943",
         notes="ESC-Real, real-world x4, L1/MSE stage; sha256 as reported by a third party (not verified)"),
    _esc("esc-real-x4-gan", "ESC_Real_X4_GAN.pth", "esc_real", 4, 2_265_307,
         {"RealLQ250 NIQE/MANIQA/MUSIQ/CLIPIQA": "4.0556/0.3553/62.98/0.5796",
          "RealSRSet NIQE/MANIQA/MUSIQ/CLIPIQA": "5.0181/0.3952/64.58/0.6156",
          "RealSR PSNR/SSIM/LPIPS/DISTS/FID": "24.52/0.7503/0.2622/0.1671/66.81",
          "DRealSR PSNR/SSIM/LPIPS/DISTS/FID": "26.76/0.79534/0.2795/0.1503/21.35",
          "HD output latency ms / memory MB (README, RTX 4090)": "59.9/715.9"},
         sha256="d6932bd01e29c9335f5f678b0e9b31ede906a42244887ab8888b1d39a8667f2d",
         notes="ESC-Real, real-world x4, GAN stage (from the MSE weights); sha256 as reported by a third party "
               "(not verified)"),
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


def fetch(entry: ZooEntry, progress: bool | None = None) -> Path:
    """Local path of a zoo checkpoint: the embedded file, or the cached one (downloaded when missing).

    progress: a download progress bar (None: only when stderr is a terminal).
    """
    if entry.embedded is not None:
        return Path(str(resources.files("detailsr") / "weights" / entry.embedded))
    path = cache_dir() / entry.file
    if not path.is_file():
        if os.environ.get("DETAILSR_OFFLINE", "") not in ("", "0"):
            raise ModelNotFoundError(_missing_message(entry, path, "offline mode (DETAILSR_OFFLINE is set)"))
        _download(entry, path, sys.stderr.isatty() if progress is None else progress)
    _verify(entry, path)
    return path


def _download(entry: ZooEntry, path: Path, progress: bool) -> None:
    log.info("downloading %s from %s", entry.name, entry.url)
    created = _make_parents(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as response:
                _copy(response, out, entry, path, progress)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except (OSError, ValueError) as e:  # ValueError: a malformed URL
        _remove_empty(created)
        raise ModelNotFoundError(_missing_message(entry, path, f"download failed: {e}")) from e
    except BaseException:
        _remove_empty(created)
        raise


def _copy(response, out, entry: ZooEntry, path: Path, progress: bool) -> None:
    first = response.read(1 << 20)
    if first.lstrip()[:1] == b"<":
        # e.g. Google Drive answers large files with a confirmation page, not the file
        raise ModelNotFoundError(_missing_message(entry, path, "the server sent a web page"))
    from tqdm import tqdm

    size = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    with tqdm(total=int(size) if size else None, unit="B", unit_scale=True, desc=entry.name,
              disable=not progress, leave=False) as bar:
        while first:
            out.write(first)
            bar.update(len(first))
            first = response.read(1 << 20)


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return those created, deepest first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another download) or already gone
            break


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
