"""`detailsr eval`, `flops` and `bench` end to end: the official Set5 numbers on ../shared's data and
checkpoint; the mechanics on a tiny dataset made from a project photo, with the embedded model."""

import json
from pathlib import Path

import cv2
import pytest
from conftest import default_model_file, photo, shared_file
from conftest import run_cli as detailsr

from detailsr.resize import bicubic_downscale


def _photo_crop(path: Path):
    """A 64x64 crop of a real photo (the cup's rim and the coffee), BGR, written to `path` as PNG."""
    crop = cv2.imread(str(photo("coffee")), cv2.IMREAD_COLOR)[30:94, 90:154]
    assert crop.shape == (64, 64, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), crop)
    return crop


def _mini_dataset(folder: Path, shipped_lr: bool = False) -> Path:
    """A one-image x4 dataset: HR/cup.png (64x64, a multiple of 4), with shipped_lr also
    LR_bicubic/X4/cupx4.png made by MATLAB-compatible bicubic, as benchmark sets ship it."""
    hr = _photo_crop(folder / "HR" / "cup.png")
    if shipped_lr:
        (folder / "LR_bicubic" / "X4").mkdir(parents=True)
        assert cv2.imwrite(str(folder / "LR_bicubic" / "X4" / "cupx4.png"), bicubic_downscale(hr, 4))
    return folder


@pytest.mark.slow
def test_eval_prints_the_official_set5_psnr(tmp_path):
    report = tmp_path / "r.json"
    result = detailsr("eval", "-m", shared_file("weights/CAMixerSR_S.pth"), "-d", shared_file("datasets/Set5"),
                      "-s", "4", "--ratio", "1.0", "--json", report, "-q")
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("Set5"))
    assert row.split()[1:3] == ["5", "32.33"]
    data = json.loads(report.read_text())
    assert data["scale"] == 4 and data["model"].endswith("CAMixerSR_S.pth")
    set5 = data["datasets"]["Set5"]
    assert set5["psnr"] == pytest.approx(32.3298, abs=1e-3)
    assert set5["ssim"] == pytest.approx(0.8969, abs=1e-4)  # spec section 11
    assert set(set5["images"]) == {f"{n}.png" for n in ("baby", "bird", "butterfly", "head", "woman")}
    assert set5["images"]["baby.png"]["psnr"] == pytest.approx(33.831, abs=1e-3)
    assert all(i["gflops"] > 0 for i in set5["images"].values())


def test_eval_makes_lr_from_hr_when_not_shipped(tmp_path):
    # a dataset with HR only: LR is made by MATLAB bicubic, the recipe of the shipped files
    data = _mini_dataset(tmp_path / "Mini")
    shipped = _mini_dataset(tmp_path / "Shipped", shipped_lr=True)
    outputs = []
    for folder in (data, shipped):
        report = tmp_path / f"{folder.name}.json"
        result = detailsr("eval", "-m", default_model_file(), "-d", folder, "-s", "4",
                          "--ratio", "0", "--json", report, "-q")
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(report.read_text())["datasets"][folder.name]["psnr"])
    assert outputs[0] == outputs[1]


def test_eval_bad_arguments(tmp_path):
    model = default_model_file()
    wrong_scale = detailsr("eval", "-m", model, "-d", _mini_dataset(tmp_path / "Mini"), "-s", "2")
    assert wrong_scale.returncode == 1 and "upscales by 4, not 2" in wrong_scale.stderr
    no_hr = detailsr("eval", "-m", model, "-d", tmp_path, "-s", "4")
    assert no_hr.returncode == 1 and "has no HR/ folder" in no_hr.stderr


def test_flops_command(tmp_path):
    result = detailsr("flops", "-m", default_model_file(), "--size", "32x32", "--ratio", "0.5")
    assert result.returncode == 0, result.stderr
    assert "351,238" in result.stdout
    assert "nominal      0.6535 GFLOPs" in result.stdout  # 653.5M, spec section 9
    _photo_crop(tmp_path / "lr.png")
    image = detailsr("flops", "-m", default_model_file(), "--image", tmp_path / "lr.png")
    assert image.returncode == 0 and "64x64 LR -> 256x256" in image.stdout


def test_bench_command_interleaves_cases(tmp_path):
    report = tmp_path / "b.json"
    result = detailsr("bench", "-m", default_model_file(), "--size", "32x32",
                      "--ratio", "1", "0", "--runs", "2", "--threads", "1", "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert [c["ratio"] for c in data["cases"]] == [1.0, 0.0]
    for case in data["cases"]:
        assert case["runs"] == 2 and case["min_s"] <= case["median_s"] <= case["max_s"]
        assert case["peak_memory_mib"] >= 0
    assert "1.000x" in result.stdout
