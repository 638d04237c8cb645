"""Memory-bounded tiling: streamed tiles equal the in-memory tiler, and the budget picks the tile."""

import math
import re

import numpy as np
import pytest
from conftest import photo

from detailsr import load_model
from detailsr.errors import ConfigError
from detailsr.imageio import from_tensor, read_image, to_tensor
from detailsr.inference import run, tile_origins
from detailsr.models.registry import build_untrained
from detailsr.sizes import parse_bytes
from detailsr.tiling import (
    activation_cost,
    cache_pixels,
    cache_tile,
    last_level_cache,
    plan_tile,
    streamed_tiles,
    working_set,
)


@pytest.fixture(scope="module")
def net():
    return load_model()


def test_parse_bytes():
    assert parse_bytes("512M") == 512 << 20 and parse_bytes("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_bytes("2g") == 2 << 30 and parse_bytes("4096") == 4096
    for bad in ("lots", "-1G", "0", "1X"):
        with pytest.raises(ConfigError, match="memory size"):
            parse_bytes(bad)


@pytest.mark.parametrize("blend", ["feather", "average"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_streamed_tiles_equal_the_in_memory_tiler(net, one_thread, blend, dtype):
    x = to_tensor(read_image(photo("coffee")).pixels[:70, :100, :3].copy())
    expected = from_tensor(run(net, x, tile=32, tile_overlap=8, blend=blend), dtype)
    got = streamed_tiles(net, x, 32, 8, blend, dtype)
    assert got.dtype == dtype and np.array_equal(got, expected)


def test_the_plan_fits_the_budget_and_whole_images_that_fit_are_not_tiled(net, one_thread):
    per_pixel, fixed = activation_cost(net)
    assert per_pixel > 0 and activation_cost(net) == (per_pixel, fixed)  # measured once
    assert plan_tile(net, 100, 150, 1 << 34) is None
    budget = math.ceil(working_set(net, 208, 208, 1920))  # far below what a 1080 x 1920 image needs
    tile = plan_tile(net, 1080, 1920, budget)
    assert tile % 16 == 0 and 32 < tile < 1080
    assert working_set(net, tile, tile, 1920) <= budget < working_set(net, tile + 16, tile + 16, 1920)
    with pytest.raises(ConfigError, match="even 48-pixel tiles"):
        plan_tile(net, 1080, 1920, 1 << 20)


def test_a_network_that_needs_the_whole_image_refuses_a_budget_it_cannot_meet(one_thread):
    esc = build_untrained("esc-light-x4")
    assert not esc.tile_safe
    with pytest.raises(ConfigError, match="looks at the whole image.*--max-memory.*--tile"):
        plan_tile(esc, 1080, 1920, 64 << 20)
    assert plan_tile(esc, 48, 48, 1 << 34) is None


def test_cli_tiles_to_fit_the_budget_and_matches_the_whole_image(tmp_path, net, one_thread):
    """A budget below what the whole image needs: tiled, with the tile the command planned, and the
    same pixels as `--tile` with that tile. (How close tiles come to the whole image is measured on
    8K frames with large tiles, `benchmarks/large_image.py`; seams are tested in test_inference.py.)"""
    from conftest import run_cli

    src = tmp_path / "coffee.png"
    from detailsr.imageio import write_image

    write_image(src, read_image(photo("coffee")).pixels[:120, :160])
    budget = math.ceil(working_set(net, 96, 96, 160))
    assert plan_tile(net, 120, 160, budget) == 96
    budgeted = run_cli("upscale", src, "-o", tmp_path / "budget.png", "--max-memory", str(budget), "--threads", "1",
                       "--ratio", "1", "--debug")
    assert budgeted.returncode == 0, budgeted.stderr
    # the command measured the network's memory itself: read the tile it chose
    tile = int(re.search(r"tiles of (\d+) px for a 160x120 image", budgeted.stderr).group(1))
    assert 48 <= tile < 120
    explicit = run_cli("upscale", src, "-o", tmp_path / "tile.png", "--tile", tile, "--threads", "1", "--ratio", "1")
    assert explicit.returncode == 0, explicit.stderr
    assert np.array_equal(read_image(tmp_path / "budget.png").pixels, read_image(tmp_path / "tile.png").pixels)


def test_cli_refuses_a_whole_image_network_over_budget_in_one_line(tmp_path, one_thread):
    import torch
    from conftest import run_cli

    from detailsr.imageio import write_image

    weights = tmp_path / "esc.pth"
    torch.save({"params": build_untrained("esc-light-x4").state_dict()}, weights)
    src = tmp_path / "in.png"
    write_image(src, read_image(photo("coffee")).pixels[:96, :96])
    out = tmp_path / "out.png"
    result = run_cli("upscale", src, "-o", out, "-m", weights, "--max-memory", "1M")
    assert result.returncode == 1 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "looks at the whole image" in lines[0] and "--max-memory" in lines[0]
    bad = run_cli("upscale", src, "-o", out, "--max-memory", "lots")
    assert bad.returncode == 2 and "memory size" in bad.stderr and not out.exists()


def test_the_cpu_cache_size_is_the_one_lscpu_reports():
    import shutil
    import subprocess

    if shutil.which("lscpu") is None:
        pytest.skip("lscpu is not installed")
    listing = subprocess.run(["lscpu", "-C=NAME,ONE-SIZE,TYPE,LEVEL", "-B"], capture_output=True, text=True)
    if listing.returncode:
        pytest.skip("this lscpu does not list caches (-C)")
    table = listing.stdout.splitlines()[1:]  # below the header: L1d 49152 Data 1, ...
    sizes = {int(level): int(size) for _, size, kind, level in map(str.split, table) if kind != "Instruction"}
    assert last_level_cache() == sizes[max(sizes)]


def test_tiles_on_the_cpu_stay_within_the_cache(net):
    """CAMixerSR-S's 36-channel maps: an image whose map fits the last-level cache runs whole; a
    larger one is tiled even when the budget would take it whole, in tiles whose map fills at most
    two thirds of the cache, of the side that covers it with the least work (within 5 %); a tighter
    budget still wins."""
    cache = last_level_cache()
    if cache is None:
        pytest.skip("this system does not report its cache sizes")
    channel_bytes = net.config["n_feats"] * 4
    assert cache_pixels(net) == cache // channel_bytes
    tile = cache_tile(net)
    assert tile % 16 == 0 and channel_bytes * tile**2 <= 2 / 3 * cache < channel_bytes * (tile + 16) ** 2
    plenty = 1 << 40
    side = math.isqrt(cache_pixels(net))
    assert plan_tile(net, side, side, plenty) is None
    for height, width in ((side + 1, side + 1), (1080, 1920)):
        planned = plan_tile(net, height, width, plenty)
        assert 48 <= planned <= tile

        def work(t, height=height, width=width):
            th, tw = min(t, height), min(t, width)
            return len(tile_origins(height, th, 16)) * th * len(tile_origins(width, tw, 16)) * tw

        least = min(work(t) for t in range(48, tile + 1, 16))
        assert work(planned) <= 1.05 * least  # and every larger side takes more
        assert all(work(t) > 1.05 * least for t in range(planned + 16, tile + 1, 16))
    smaller = max(48, tile // 32 * 16)  # a budget that takes only half the cache tile's side
    tight = math.ceil(working_set(net, smaller, smaller, 1920))
    assert plan_tile(net, 1080, 1920, tight) <= smaller < tile
    assert cache_tile(build_untrained("esc-light-x4")) is None  # never tiled unasked
