"""`detailsr eval`, `flops` and `bench` end to end on real data."""

import json
import shutil

import pytest
from conftest import run_cli as detailsr
from conftest import shared_file


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
    # a dataset with HR only: LR is made by MATLAB bicubic, which reproduces the shipped files
    data = tmp_path / "Mini"
    (data / "HR").mkdir(parents=True)
    shutil.copy(shared_file("datasets/Set5/HR/butterfly.png"), data / "HR")
    shipped = tmp_path / "Shipped"
    (shipped / "HR").mkdir(parents=True)
    (shipped / "LR_bicubic" / "X4").mkdir(parents=True)
    shutil.copy(shared_file("datasets/Set5/HR/butterfly.png"), shipped / "HR")
    shutil.copy(shared_file("datasets/Set5/LR_bicubic/X4/butterflyx4.png"), shipped / "LR_bicubic" / "X4")
    outputs = []
    for folder in (data, shipped):
        report = tmp_path / f"{folder.name}.json"
        result = detailsr("eval", "-m", shared_file("weights/CAMixerSR_S.pth"), "-d", folder, "-s", "4",
                          "--ratio", "0", "--json", report, "-q")
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(report.read_text())["datasets"][folder.name]["psnr"])
    assert outputs[0] == outputs[1]


def test_eval_bad_arguments(tmp_path):
    model = shared_file("weights/CAMixerSR_S.pth")
    wrong_scale = detailsr("eval", "-m", model, "-d", shared_file("datasets/Set5"), "-s", "2")
    assert wrong_scale.returncode == 1 and "upscales by 4, not 2" in wrong_scale.stderr
    no_hr = detailsr("eval", "-m", model, "-d", tmp_path, "-s", "4")
    assert no_hr.returncode == 1 and "has no HR/ folder" in no_hr.stderr


def test_flops_command():
    result = detailsr("flops", "-m", shared_file("weights/CAMixerSR_S.pth"), "--size", "32x32", "--ratio", "0.5")
    assert result.returncode == 0, result.stderr
    assert "351,238" in result.stdout
    assert "nominal      0.6535 GFLOPs" in result.stdout  # 653.5M, spec section 9
    image = detailsr("flops", "-m", shared_file("weights/CAMixerSR_S.pth"),
                     "--image", shared_file("datasets/Set5/LR_bicubic/X4/butterflyx4.png"))
    assert image.returncode == 0 and "64x64 LR -> 256x256" in image.stdout


def test_bench_command_interleaves_cases(tmp_path):
    report = tmp_path / "b.json"
    result = detailsr("bench", "-m", shared_file("weights/CAMixerSR_S.pth"), "--size", "32x32",
                      "--ratio", "1", "0", "--runs", "2", "--threads", "1", "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert [c["ratio"] for c in data["cases"]] == [1.0, 0.0]
    for case in data["cases"]:
        assert case["runs"] == 2 and case["min_s"] <= case["median_s"] <= case["max_s"]
        assert case["peak_memory_mib"] >= 0
    assert "1.00x" in result.stdout
