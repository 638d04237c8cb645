"""`detailsr eval` and `detailsr upscale` under torchrun: two CPU processes (gloo) share the inputs.

The real command under `python -m torch.distributed.run`, against the same command in one process,
on small crops of the project's photos with the embedded model.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import photo
from conftest import run_cli as detailsr
from PIL import Image

from detailsr.sharding import World, shard, unshard

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # both runs: the same kernels, and no oversubscription


def torchrun(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "detailsr", *map(str, args)]
    env = {**os.environ, "DETAILSR_OFFLINE": "1", **ONE_THREAD}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def three_images(folder):
    """Three small crops of different photos and sizes (an odd count: the ranks get 2 and 1)."""
    folder.mkdir(parents=True)
    Image.open(photo("chelsea")).convert("RGB").crop((40, 20, 80, 52)).save(folder / "cat.png")
    Image.open(photo("coffee")).convert("RGB").crop((150, 100, 186, 128)).save(folder / "cup.png")
    Image.open(photo("gravel")).convert("RGB").crop((0, 0, 32, 32)).save(folder / "gravel.png")
    return folder


def test_shard_and_unshard_are_inverse():
    items = list(range(7))
    parts = [shard(items, World(3, r, r)) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert unshard(parts) == items
    assert shard(items) == items  # a single process takes everything


@pytest.mark.slow
def test_eval_under_torchrun_equals_one_process(tmp_path):
    data = three_images(tmp_path / "tiny" / "HR").parent
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    single = detailsr("eval", "-d", data, "-s", "4", "--json", one, env=ONE_THREAD)
    sharded = torchrun("eval", "-d", data, "-s", "4", "--json", two)
    assert single.returncode == 0, single.stderr
    assert sharded.returncode == 0, sharded.stderr
    assert sharded.stdout.count("dataset ") == 1  # only rank 0 prints the table
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert {k: v for k, v in a.items() if k != "datasets"} == {k: v for k, v in b.items() if k != "datasets"}
    da, db = a["datasets"]["tiny"], b["datasets"]["tiny"]
    assert list(da["images"]) == list(db["images"]) == ["cat.png", "cup.png", "gravel.png"]
    for key in ("psnr", "ssim"):
        assert db[key] == pytest.approx(da[key], abs=1e-9)
        for name in da["images"]:
            assert db["images"][name][key] == pytest.approx(da["images"][name][key], abs=1e-9)


@pytest.mark.slow
def test_upscale_under_torchrun_writes_each_output_once(tmp_path):
    src = three_images(tmp_path / "in")
    one, two = tmp_path / "one", tmp_path / "two"
    single = detailsr("upscale", src, "-o", one, env=ONE_THREAD)
    sharded = torchrun("upscale", src, "-o", two, "--debug")
    assert single.returncode == 0, single.stderr
    # No --overwrite: an output written by a second rank would fail ("exists") and exit 1.
    assert sharded.returncode == 0, sharded.stderr
    assert "rank 0 of 2 upscales 2 of the 3 inputs" in sharded.stderr
    assert "rank 1 of 2 upscales 1 of the 3 inputs" in sharded.stderr
    names = sorted(p.name for p in two.iterdir())
    assert names == sorted(p.name for p in one.iterdir()) == ["cat_x4.png", "cup_x4.png", "gravel_x4.png"]
    for name in names:
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


@pytest.mark.slow
def test_an_error_under_torchrun_says_which_rank_it_is(tmp_path):
    data = three_images(tmp_path / "in")
    missing = tmp_path / "no-such-model.pth"
    result = torchrun("upscale", data, "-o", tmp_path / "out", "-m", missing)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("detailsr: error:")]
    assert sorted(line.split(":")[2].strip() for line in lines) == ["rank 0", "rank 1"], result.stderr
    assert all(str(missing) in line for line in lines)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
