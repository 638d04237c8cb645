"""The real `detailsr` command in a subprocess, on the project's own photos, with the embedded default model."""

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import default_model_file, photo
from conftest import run_cli as detailsr
from PIL import Image


def crop(name="chelsea", h=24, w=20, top=40, left=60):
    return Image.open(photo(name)).crop((left, top, left + w, top + h))


def make_inputs(folder):
    """One small file per supported kind, cut from the project's photos."""
    rgb = crop()
    arr = np.asarray(rgb)
    gray = crop("camera")
    rgb.save(folder / "rgb8.png")
    cv2.imwrite(str(folder / "rgb16.png"), (arr[:, :, ::-1].astype(np.uint16) * 257))
    gray.save(folder / "gray8.png")
    cv2.imwrite(str(folder / "gray16.png"), np.asarray(gray).astype(np.uint16) * 257)
    rgb.quantize(32).save(folder / "palette.png")
    pal = rgb.quantize(32)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_trns.png", transparency=0)
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    alpha = Image.fromarray(np.linspace(0, 255, 20 * 24).astype(np.uint8).reshape(24, 20))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba.save(folder / "rgba.png")
    rgb.save(folder / "photo.jpg", quality=95)
    rgb.save(folder / "photo.webp", lossless=True)
    rgb.save(folder / "photo.tif")
    cv2.imwrite(str(folder / "photo16.tif"), (arr[:, :, ::-1].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rgb.save(folder / "rotated.jpg", exif=exif, quality=95)
    rgb.crop((0, 0, 1, 1)).save(folder / "one_pixel.png")


def files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_folder_of_every_format(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_inputs(src)
    out = tmp_path / "out"
    result = detailsr("upscale", src, "-o", out, "-q")  # no -m: the embedded default model
    assert result.returncode == 0, result.stderr
    written = {p.name for p in out.iterdir()}
    assert written == {p.stem + "_x4" + p.suffix for p in src.iterdir()}

    def read(name):
        return cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)

    assert read("rgb8_x4.png").shape == (96, 80, 3) and read("rgb8_x4.png").dtype == np.uint8
    assert read("rgb16_x4.png").dtype == np.uint16 and read("rgb16_x4.png").shape == (96, 80, 3)
    assert read("gray8_x4.png").shape == (96, 80)
    assert read("gray16_x4.png").dtype == np.uint16 and read("gray16_x4.png").ndim == 2
    assert read("palette_x4.png").shape == (96, 80, 3)
    assert read("palette_trns_x4.png").shape == (96, 80, 4)
    assert read("cmyk_x4.jpg").shape == (96, 80, 3)
    rgba = read("rgba_x4.png")
    assert rgba.shape == (96, 80, 4)
    assert rgba[0, 0, 3] < 30 and rgba[-1, -1, 3] > 225  # the alpha ramp survives
    assert read("photo_x4.webp").shape == (96, 80, 3)
    assert read("photo_x4.tif").shape == (96, 80, 3)
    assert read("photo16_x4.tif").dtype == np.uint16
    assert read("rotated_x4.jpg").shape == (80, 96, 3)  # EXIF orientation applied
    assert read("one_pixel_x4.png").shape == (4, 4, 3)
    # 8-bit and 16-bit versions of the same picture agree
    assert np.abs(read("rgb16_x4.png") / 257.0 - read("rgb8_x4.png")).max() <= 1.0
    assert not list(out.glob(".*"))  # no temporary files left


def test_one_file_to_a_named_output_and_overwrite(tmp_path):
    src = tmp_path / "a.png"
    crop().save(src)
    dst = tmp_path / "result.png"
    model = default_model_file()
    assert detailsr("upscale", src, "-o", dst, "-m", model, "-s", "4", "--ratio", "0.25", "-q").returncode == 0
    before = dst.read_bytes()
    again = detailsr("upscale", src, "-o", dst, "-q")
    assert again.returncode == 1
    assert "exists; use --overwrite" in again.stderr
    assert dst.read_bytes() == before
    forced = detailsr("upscale", src, "-o", dst, "--overwrite", "--ratio", "1", "-q")
    assert forced.returncode == 0
    assert cv2.imread(str(dst)).shape == (96, 80, 3)


def test_outscale_resizes_the_models_output(tmp_path):
    src = tmp_path / "a.png"
    crop(h=30, w=20).save(src)
    result = detailsr("upscale", src, "--outscale", "2", "-q")
    assert result.returncode == 0, result.stderr
    x2 = cv2.imread(str(tmp_path / "a_x2.png"))
    assert x2.shape == (60, 40, 3)
    # the x4 output shrunk by area averaging: each output pixel is the mean of a 2x2 block
    assert detailsr("upscale", src, "-o", tmp_path / "x4.png", "-q").returncode == 0
    x4 = cv2.imread(str(tmp_path / "x4.png")).astype(np.float64)
    blocks = x4.reshape(60, 2, 40, 2, 3).mean(axis=(1, 3))
    assert np.abs(blocks - x2).max() <= 0.5 + 1e-9
    odd = detailsr("upscale", src, "--outscale", "3.5", "-o", tmp_path / "odd.png", "-q")
    assert odd.returncode == 0, odd.stderr
    assert cv2.imread(str(tmp_path / "odd.png")).shape == (105, 70, 3)


def test_a_scale_the_model_lacks_names_outscale(tmp_path):
    src = tmp_path / "a.png"
    crop().save(src)
    result = detailsr("upscale", src, "-s", "2")
    assert result.returncode == 1
    assert "upscales by 4, not 2" in result.stderr and "--outscale 2" in result.stderr
    assert files(tmp_path) == ["a.png"]


def test_glob_input_next_to_the_inputs_with_suffix(tmp_path):
    for name in ("x.png", "y.png", "z.jpg"):
        crop(h=16, w=16).save(tmp_path / name)
    result = detailsr("upscale", str(tmp_path / "*.png"), "--suffix=-big", "--tile", "16", "--tile-overlap", "4", "-q")
    assert result.returncode == 0, result.stderr
    assert files(tmp_path) == ["x-big.png", "x.png", "y-big.png", "y.png", "z.jpg"]


def test_a_rerun_never_takes_its_own_outputs_and_can_skip_existing(tmp_path):
    for name in ("a.png", "b.png"):
        crop(h=16, w=16).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image\n")
    assert detailsr("upscale", tmp_path, "-q").returncode == 0
    assert files(tmp_path) == ["a.png", "a_x4.png", "b.png", "b_x4.png", "notes.txt"]
    # a rerun: the outputs exist; nothing is written, and the message names both ways forward
    again = detailsr("upscale", tmp_path, "-q")
    assert again.returncode == 1
    assert "a_x4.png exists" in again.stderr and "--skip-existing" in again.stderr
    crop(h=16, w=16).save(tmp_path / "c.png")
    resumed = detailsr("upscale", tmp_path, "--skip-existing", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert files(tmp_path) == ["a.png", "a_x4.png", "b.png", "b_x4.png", "c.png", "c_x4.png", "notes.txt"]
    # a glob treats the text file and the earlier outputs as the folder does
    glob = detailsr("upscale", str(tmp_path / "*"), "--skip-existing", "-q")
    assert glob.returncode == 0, glob.stderr
    assert "a_x4_x4" not in " ".join(files(tmp_path)) and len(files(tmp_path)) == 7
    # with another suffix, files named with it are outputs too
    other = detailsr("upscale", tmp_path, "--suffix", "_big", "-q")
    assert other.returncode == 0, other.stderr
    assert detailsr("upscale", tmp_path, "--suffix", "_big", "--skip-existing", "-q").returncode == 0
    assert files(tmp_path) == ["a.png", "a_big.png", "a_x4.png", "b.png", "b_big.png", "b_x4.png", "c.png",
                               "c_big.png", "c_x4.png", "notes.txt"]


def test_an_explicitly_named_output_is_still_an_input(tmp_path):
    crop(h=16, w=16).save(tmp_path / "a.png")
    crop(h=16, w=16).save(tmp_path / "a_x4.png")
    result = detailsr("upscale", tmp_path / "a_x4.png", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a_x4_x4.png").exists()


def test_recursive_folders_mirror_their_tree(tmp_path):
    src = tmp_path / "in"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / ".hidden").mkdir()
    for name in ("top.png", "sub/mid.jpg", "sub/deeper/low.png", ".hidden/secret.png"):
        crop(h=16, w=16).save(src / name)
    flat = detailsr("upscale", src, "-o", tmp_path / "flat", "-q")
    assert flat.returncode == 0, flat.stderr
    assert files(tmp_path / "flat") == ["top_x4.png"]
    deep = detailsr("upscale", src, "-r", "-o", tmp_path / "deep", "-q")
    assert deep.returncode == 0, deep.stderr
    assert files(tmp_path / "deep") == ["sub/deeper/low_x4.png", "sub/mid_x4.jpg", "top_x4.png"]
    # an output folder inside the input folder is not read back on a rerun
    inside = detailsr("upscale", src, "-r", "-o", src / "big", "-q")
    assert inside.returncode == 0, inside.stderr
    rerun = detailsr("upscale", src, "-r", "-o", src / "big", "--skip-existing", "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert files(src / "big") == ["sub/deeper/low_x4.png", "sub/mid_x4.jpg", "top_x4.png"]


def test_standard_input_and_output(tmp_path):
    png = (photo("camera")).read_bytes()
    piped = subprocess.run([sys.executable, "-m", "detailsr", "upscale", "-", "-q"], input=png,
                           capture_output=True, timeout=300, cwd=tmp_path)
    assert piped.returncode == 0, piped.stderr
    out = cv2.imdecode(np.frombuffer(piped.stdout, np.uint8), cv2.IMREAD_UNCHANGED)
    assert out.shape == (512, 512)  # grayscale in, grayscale PNG out
    assert files(tmp_path) == []  # nothing written beside
    src = tmp_path / "a.png"
    crop().save(src)
    to_stdout = subprocess.run([sys.executable, "-m", "detailsr", "upscale", str(src), "-o", "-", "--ext", "jpg",
                                "-q"], capture_output=True, timeout=300)
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert to_stdout.stdout[:3] == b"\xff\xd8\xff"  # a JPEG
    assert cv2.imdecode(np.frombuffer(to_stdout.stdout, np.uint8), cv2.IMREAD_COLOR).shape == (96, 80, 3)
    garbage = subprocess.run([sys.executable, "-m", "detailsr", "upscale", "-", "-q"], input=b"not an image",
                             capture_output=True, timeout=300, cwd=tmp_path)
    assert garbage.returncode == 1 and garbage.stdout == b""
    assert garbage.stderr.decode().strip().splitlines() == [
        "detailsr: error: standard input: not an image file (or a format that cannot be read)"]


def _bad_inputs(tmp_path):
    good = tmp_path / "good.png"
    crop(h=16, w=16).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    full = photo("chelsea").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    text = tmp_path / "text.png"
    text.write_text("hello\n")
    ckpt = tmp_path / "bad.pth"
    ckpt.write_text("not weights")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    return {
        "empty": (["upscale", empty], "empty"),
        "truncated": (["upscale", truncated], "truncated"),
        "not an image": (["upscale", text], "text.png"),
        "bomb": (["upscale", good, "--max-pixels", "100"], "limit"),
        "missing": (["upscale", tmp_path / "nope.png"], "does not exist"),
        "bad checkpoint": (["upscale", good, "-m", ckpt], "bad.pth"),
        "an image as checkpoint": (["upscale", good, "-m", text], "text.png is not a PyTorch (.pth) or safetensors"),
        "unknown model": (["upscale", good, "-m", "no-such-model"], "zoo model"),
        "wrong scale": (["upscale", good, "-s", "2"], "upscales by 4, not 2"),
        "unwritable": (["upscale", good, "-o", blocker / "out.png"], "afile"),
        "bad extension": (["upscale", good, "-o", tmp_path / "out.xyz"], "xyz"),
        "no gpu here": (["upscale", good, "--device", "cuda"], "device cuda is not available"),
    }


@pytest.mark.parametrize("case", [
    "empty", "truncated", "not an image", "bomb", "missing", "bad checkpoint", "an image as checkpoint",
    "unknown model", "wrong scale", "unwritable", "bad extension", "no gpu here",
])
def test_bad_input_one_line_nonzero_and_nothing_written(tmp_path, case):
    if case == "no gpu here" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    args, fragment = _bad_inputs(tmp_path)[case]
    before = {p.name for p in tmp_path.rglob("*")}
    result = detailsr(*args, "-q")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("detailsr: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr
    assert {p.name for p in tmp_path.rglob("*")} == before


# Every flag's impossible value: (command, arguments, what the one error line names).
USAGE_ERRORS = [
    ("upscale", ["-s", "0"], "--scale"),
    ("upscale", ["--ratio", "2"], "--ratio"),
    ("upscale", ["--ratio", "x"], "--ratio"),
    ("upscale", ["--tile", "-3"], "--tile"),
    ("upscale", ["--tile-overlap", "-3"], "--tile-overlap"),
    ("upscale", ["--tile", "8"], "--tile 8 must be larger than --tile-overlap 16"),
    ("upscale", ["--tile", "8", "--tile-overlap", "4"], "below the smallest input"),
    ("upscale", ["--outscale", "0"], "--outscale"),
    ("upscale", ["--outscale", "nan"], "--outscale"),
    ("upscale", ["--ext", "gif"], "--ext"),
    ("upscale", ["--max-pixels", "0"], "--max-pixels"),
    ("upscale", ["--device", "gpu"], "unknown device 'gpu'"),
    ("upscale", ["--threads", "0"], "--threads"),
    ("upscale", ["--attn", "fast"], "--attn"),
    ("upscale", ["--overwrite", "--skip-existing"], "not allowed with"),
    ("upscale", ["-", "-"], "standard input (-) can be read only once"),
    ("eval", ["-d", "DATA", "-s", "0"], "--scale"),
    ("eval", ["-d", "DATA", "-s", "4", "--protocol", "z"], "--protocol"),
    ("eval", ["-d", "DATA", "-s", "4", "--tile-overlap", "-1"], "--tile-overlap"),
    ("eval", ["-d", "DATA", "-s", "4", "--blend", "max"], "--blend"),
    ("eval", ["-d", "DATA", "-s", "4", "--tile", "16"], "--tile 16 must be larger than --tile-overlap 16"),
    ("flops", ["--size", "0x4"], "--size"),
    ("flops", ["--size", "big"], "--size"),
    ("flops", ["--size", "8x8", "--image", "IMG"], "--size or --image"),
    ("bench", ["--size", "8x8", "--runs", "0"], "--runs"),
    ("bench", ["--size", "8x8", "--warmup", "-1"], "--warmup"),
    ("bench", ["--size", "8x8", "--device", "gpu"], "unknown device"),
    ("bench", ["--size", "8x8", "--untrained"], "--untrained needs -m"),
    ("mask", ["IMG", "-o", "OUT", "--ratio", "1.5"], "--ratio"),
]


@pytest.mark.parametrize("command, args, fragment", USAGE_ERRORS)
def test_usage_errors_exit_2_with_one_line(tmp_path, command, args, fragment):
    src = tmp_path / "a.png"
    crop(h=16, w=16).save(src)
    replace = {"DATA": str(tmp_path), "IMG": str(src), "OUT": str(tmp_path / "m.png")}
    args = [replace.get(a, a) for a in args]
    result = detailsr(command, *([src] if command == "upscale" and "-" not in args else []), *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detailsr: error: "), result.stderr
    assert fragment in lines[0]
    assert files(tmp_path) == ["a.png"]


def test_help_and_version_answer_without_importing_torch():
    probe = ("import sys\nfrom detailsr.cli.main import main\n"
             "for argv in (['--help'], ['upscale', '--help'], ['--version']):\n"
             "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
             "print('torch' in sys.modules, 'cv2' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "detailsr 0.1.0" in result.stdout and "--outscale" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "False False"


def test_debug_shows_the_traceback(tmp_path):
    text = tmp_path / "text.png"
    text.write_text("hello\n")
    result = detailsr("--debug", "upscale", text)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ImageError" in result.stderr


def test_one_bad_file_in_a_batch(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    crop(h=16, w=16).save(src / "a.png")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    crop(h=16, w=16).save(src / "c.png")
    out = tmp_path / "out"
    result = detailsr("upscale", src, "-o", out, "-q")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "b.png" in lines[0]
    assert lines[-1] == "detailsr: 1 of 3 images failed; the others were written"
    assert files(out) == ["a_x4.png", "c_x4.png"]


def test_models_lists_the_zoo():
    result = detailsr("models")
    assert result.returncode == 0
    for fragment in ("camixersr-s-x4", "351,238", "Apache-2.0", "embedded", "camixersr-odi-x4",
                     "29.12/26.26/27.73/33.66"):
        assert fragment in result.stdout


def test_every_command_runs_offline_on_the_embedded_default(tmp_path):
    """No -m, an empty cache, downloads forbidden: upscale, eval, flops, bench and mask all work."""
    env = {"DETAILSR_CACHE": str(tmp_path / "cache"), "DETAILSR_OFFLINE": "1"}
    hr = np.asarray(crop(h=32, w=32))
    (tmp_path / "set" / "HR").mkdir(parents=True)
    Image.fromarray(hr).save(tmp_path / "set" / "HR" / "a.png")
    lr = tmp_path / "lr.png"
    crop(h=16, w=16).save(lr)
    runs = {
        "upscale": detailsr("upscale", lr, "-q", env=env),
        "eval": detailsr("eval", "-d", tmp_path / "set", "-s", "4", "-q", env=env),
        "flops": detailsr("flops", "--size", "16x16", env=env),
        "bench": detailsr("bench", "--size", "16x16", "--runs", "1", "--warmup", "0", env=env),
        "mask": detailsr("mask", lr, "-o", tmp_path / "mask.png", env=env),
    }
    for name, result in runs.items():
        assert result.returncode == 0, (name, result.stderr)
    assert "351,238" in runs["flops"].stdout and "default" in runs["bench"].stdout
    assert (tmp_path / "lr_x4.png").exists() and (tmp_path / "mask.png").exists()
    assert not (tmp_path / "cache").exists()
