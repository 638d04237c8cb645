"""Devices, precision and batching: --device auto, --precision fp32/fp16/bf16, --batch N.

Real runs of the embedded CAMixerSR-S on crops of the project's photos; the CLI in a subprocess.
"""

import argparse
import json

import numpy as np
import pytest
import torch
from conftest import photo
from conftest import run_cli as detailsr
from PIL import Image

import detailsr as library
from detailsr.cli.main import build_parser
from detailsr.cli.options import use_device
from detailsr.cli.upscale import batch_dependence
from detailsr.errors import ConfigError
from detailsr.imageio import read_image, to_tensor
from detailsr.inference import run
from detailsr.precision import precision_supported

pytestmark = pytest.mark.usefixtures("one_thread")

# bf16 vs fp32, measured on this CPU (torch 2.13) with the embedded CAMixerSR-S, max / mean abs
# difference of the [0, 1] output: the strip below (chelsea rows 40-64, 24 x 226) 0.030 / 0.0014;
# whole photos: chelsea 0.039 / 0.0014, coffee 0.15 / 0.0023, camera 0.18 / 0.0022 (a few pixels:
# the deformable warp's sampling grid is computed in bf16). Tolerances: about 3x the strip's.
BF16_MAX_ABS = 0.1
BF16_MEAN_ABS = 0.005


@pytest.fixture(scope="module")
def net():
    return library.load_model()


def crop(name: str, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return to_tensor(read_image(photo(name)).pixels)[:, :, top : top + h, left : left + w].contiguous()


def test_device_auto_resolves_to_what_this_machine_has():
    args = argparse.Namespace(device="auto")
    use_device(args)
    mps = getattr(torch.backends, "mps", None)
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps and mps.is_available() else "cpu"
    assert args.device == expected
    explicit = argparse.Namespace(device="cpu")
    use_device(explicit)
    assert explicit.device == "cpu"


def test_every_model_command_takes_device_and_threads_and_three_take_precision():
    parser = build_parser()
    commands = {"upscale": ["x.png"], "eval": ["-d", "x", "-s", "4"], "flops": [], "bench": ["--size", "8x8"],
                "mask": ["x.png", "-o", "y.png"]}
    for command, rest in commands.items():
        args = parser.parse_args([command, *rest, "--threads", "1"])
        assert args.device == "auto" and args.threads == 1
        assert getattr(args, "precision", None) == ("fp32" if command in ("upscale", "eval", "bench") else None)


def test_bad_precision_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["upscale", "x.png", "--precision", "fp8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("detailsr: error: argument --precision: invalid choice: 'fp8'") and "\n" not in err


def test_fp16_on_cpu_is_refused_in_one_line_and_writes_nothing(tmp_path, net):
    Image.open(photo("gravel")).crop((0, 0, 24, 24)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = detailsr("upscale", tmp_path / "in.png", "-o", out, "--device", "cpu", "--precision", "fp16")
    assert result.returncode == 2  # a combination of options that cannot work: a usage error
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detailsr: error: --precision fp16 cannot run on cpu")
    assert "bf16" in lines[0] and not out.exists()
    # the library says the same, as a ConfigError
    assert precision_supported(net, "fp16", "cpu") is not None and precision_supported(net, "bf16", "cpu") is None
    with pytest.raises(ConfigError, match="precision fp16 on cpu"):
        library.upscale(np.zeros((8, 8, 3), np.uint8), net, precision="fp16")


def test_bf16_is_close_to_fp32_and_never_nan(net):
    # 226 px wide: torch's CPU bf16 grid_sample (CAMixer's warp) returns NaN at this width unless
    # `precision_guard` keeps it in float32
    x = crop("chelsea", 40, 0, 24, 226)
    y32 = run(net, x)
    y16 = run(net, x, precision="bf16")
    assert y16.dtype == torch.float32 and torch.isfinite(y16).all()
    diff = (y16 - y32).abs()
    assert diff.max().item() <= BF16_MAX_ABS and diff.mean().item() <= BF16_MEAN_ABS
    assert next(net.parameters()).dtype == torch.float32  # the caller's network is left as it was
    img = library.upscale(np.ascontiguousarray(read_image(photo("gravel")).pixels[:16, :16]), net, precision="bf16")
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)


def test_a_batch_of_two_equals_single_runs(net):
    a, b = crop("chelsea", 20, 40, 32, 40), crop("coffee", 100, 150, 32, 40)
    both = run(net, torch.cat([a, b]))
    assert (both[0] - run(net, a)[0]).abs().max().item() <= 1e-5
    assert (both[1] - run(net, b)[0]).abs().max().item() <= 1e-5
    assert batch_dependence(net) is None


def test_batch_dependent_families_run_one_at_a_time(net):
    from detailsr.models.registry import build_untrained

    # measured: ATD-light x4 (random weights, two 64 x 64 photo crops) differs by 7e-3 in a batch of 2
    assert "ATD" in batch_dependence(build_untrained("atd-light-x4"))
    stochastic = library.load_model(stochastic=True)
    assert "stochastic" in batch_dependence(stochastic)


def test_batch_cli_writes_what_single_runs_write(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    chelsea, coffee = Image.open(photo("chelsea")).convert("RGB"), Image.open(photo("coffee")).convert("RGB")
    chelsea.crop((40, 20, 80, 52)).save(src / "a.png")
    coffee.crop((150, 100, 190, 132)).save(src / "b.png")
    chelsea.crop((0, 0, 24, 20)).save(src / "c.png")  # another size: a batch of its own
    one, two = tmp_path / "one", tmp_path / "two"
    single = detailsr("upscale", src, "-o", one, "--threads", "1")  # --device auto: the CPU here
    batched = detailsr("upscale", src, "-o", two, "--batch", "2", "--precision", "fp32", "--threads", "1")
    assert single.returncode == 0 and batched.returncode == 0, single.stderr + batched.stderr
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) == ["a_x4.png", "b_x4.png", "c_x4.png"]
    for name in names:
        x, y = (np.asarray(Image.open(d / name)).astype(int) for d in (one, two))
        # A batch changes the float rounding of the convolutions (~5e-7): a value sitting on a
        # rounding boundary may land one 8-bit level apart (measured: 2 of 110,592 values).
        assert x.shape == y.shape and np.abs(x - y).max() <= 1 and np.mean(x != y) <= 1e-3, name


def test_bench_records_its_precision(tmp_path):
    report = tmp_path / "bench.json"
    result = detailsr("bench", "--size", "24x24", "--runs", "1", "--warmup", "0", "--precision", "bf16",
                      "--threads", "1", "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["precision"] == "bf16" and data["device"] in ("cpu", "cuda", "mps")
    assert all(np.isfinite(case["executed_gflops"]) for case in data["cases"])


@pytest.mark.slow
def test_a_compiled_network_gives_the_eager_output():
    from detailsr.compilation import compile_forward, eagerly
    from detailsr.models.registry import build_untrained

    net = build_untrained("esc-light-x4").eval()  # the smallest graph to compile: about a minute
    x = crop("chelsea", 40, 60, 32, 32)
    with torch.inference_mode():
        expected = net(x)
        compile_forward(net)
        outputs = [net(x) for _ in range(3)]  # the second call compiles again (filled caches)
        with eagerly(net):
            assert torch.equal(net(x), expected)
    assert net.compile_error is None
    for out in outputs:
        assert (out - expected).abs().max() < 1e-4


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(tmp_path):
    report = tmp_path / "bench.json"
    result = detailsr("bench", "-q", "-m", "esc-light-x4", "--untrained", "--size", "16x16", "--runs", "1",
                      "--compile", "--json", report, env={"CXX": str(tmp_path / "no-compiler")})
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("detailsr: WARNING: torch.compile")]
    assert len(warnings) == 1 and "running eagerly" in warnings[0] and "no-compiler" in warnings[0]
    data = json.loads(report.read_text())
    assert data["compiled"] is False and data["cases"][0]["median_s"] > 0
    assert "compile failed: eager" in result.stdout
