"""Training: recipes, schedule, EMA, data order, and real runs on real photos (tiny networks).

The runs use the project's CC0 photos and a CAMixerSR of 16 channels and one block, trained for
tens of iterations: enough to see the loss fall, a resume match an unbroken run bit for bit, and
two gloo processes match one.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, photo

from detailsr import load_model
from detailsr.data.paired import mix_seed
from detailsr.errors import ConfigError, TrainingError
from detailsr.imageio import read_image, write_image
from detailsr.train import load_config
from detailsr.train.config import DEFAULTS
from detailsr.train.ema import EMA
from detailsr.train.order import DataOrder
from detailsr.train.schedule import learning_rate
from detailsr.train.trainer import build_network, train
from detailsr.train.validation import validate

TINY_CAMIXER = {"arch": "camixersr", "config": {"n_feats": 16, "n_block": [1]}, "ratio": 0.5}


@pytest.fixture(scope="module")
def photo_sets(tmp_path_factory) -> dict[str, Path]:
    """Training images (coffee, and the grey photos as RGB) and a validation set (chelsea) from real photos."""
    root = tmp_path_factory.mktemp("photos")
    (root / "train").mkdir()
    (root / "val" / "HR").mkdir(parents=True)
    for name in ("coffee", "camera", "gravel"):
        pixels = read_image(photo(name)).pixels
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        write_image(root / "train" / f"{name}.png", pixels[..., :3])
    write_image(root / "val" / "HR" / "chelsea.png", read_image(photo("chelsea")).pixels[:96, :128, :3])
    return {"train": root / "train", "val": root / "val"}


def tiny_config(tmp_path: Path, photo_sets: dict, **changes) -> dict:
    """A complete config for a few seconds of training; `changes` are dotted keys."""
    config = {
        "name": "tiny", "output": str(tmp_path / "runs"), "scale": 4,
        "model": dict(TINY_CAMIXER),
        "data": {"train": [{"hr": str(photo_sets["train"]), "repeat": 8}], "patch": 16, "workers": 0,
                 "cache": str(tmp_path / "cache")},
        "val": {"datasets": [str(photo_sets["val"])]},
        "train": {"iterations": 12, "batch": 4, "optimizer": {"type": "adam", "lr": 2e-3},
                  "schedule": {"type": "cosine", "warmup": 2}, "ema": 0.9, "checkpoint_every": 4,
                  "log_every": 2, "threads": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                              for k, v in changes.items()])


def run_train(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "detailsr", "train", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def final_weights(run_dir: Path, iteration: int) -> dict:
    return torch.load(run_dir / "models" / f"net_g_{iteration}.pth", weights_only=True)


# ------------------------------------------------------------------------------------- config

def test_config_refuses_unknown_settings_and_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scale: 4\nmodel: {arch: camixersr}\ndata: {train: [x]}\ntrain: {iterations: 5, lerning_rate: 1}\n")
    with pytest.raises(ConfigError, match="unknown setting 'train.lerning_rate'"):
        load_config(path)
    path.write_text("scale: 4\nmodel: {arch: camixersr}\ndata: {train: [x]}\ntrain: {iterations: 5}\n")
    config = load_config(path, ["train.optimizer.lr=1e-3", "model.config.n_feats=12", "train.batch=8"])
    assert config["train"]["optimizer"]["lr"] == 1e-3 and config["train"]["batch"] == 8
    assert config["model"]["config"] == {"n_feats": 12}
    assert config["name"] == "c" and config["train"]["optimizer"]["type"] == DEFAULTS["train"]["optimizer"]["type"]
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["train.batch"])
    with pytest.raises(ConfigError, match="train.iterations must be a positive integer"):
        load_config(path, ["train.iterations=0"])
    with pytest.raises(ConfigError, match="unknown setting 'train.nope'"):
        load_config(path, ["train.nope.x=1"])


# ----------------------------------------------------------------------------------- schedule

def test_multistep_with_warmup_matches_torch_schedulers():
    """Warm-up as BasicSR (lr * i / warmup), then torch's MultiStepLR stepped once per update."""
    schedule = {"type": "multistep", "milestones": [30, 60], "gamma": 0.5, "warmup": 10}
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    reference = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60], gamma=0.5)
    for i in range(1, 80):
        ours = learning_rate(i, 1.0, schedule, 80)
        expected = i / 10 if i <= 10 else opt.param_groups[0]["lr"]
        assert ours == pytest.approx(expected), i
        opt.step()
        reference.step()


def test_cosine_after_warmup_matches_torch_cosine_annealing():
    schedule = {"type": "cosine", "warmup": 5, "min_lr": 1e-3}
    total = 45
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 1 - 5, eta_min=1e-3)
    for i in range(6, total + 1):
        assert learning_rate(i, 0.1, schedule, total) == pytest.approx(opt.param_groups[0]["lr"]), i
        opt.step()
        reference.step()
    assert learning_rate(3, 0.1, schedule, total) == pytest.approx(0.1 * 3 / 5)


# ----------------------------------------------------------------------------------------- EMA

def test_ema_follows_the_decay_formula():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3)
    ema = EMA(net, 0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net)
    for k, v in ema.network.state_dict().items():
        torch.testing.assert_close(v, 0.9 * start[k] + 0.1 * (start[k] + 1.0))
    assert not any(p.requires_grad for p in ema.network.parameters())


# ---------------------------------------------------------------------------------- data order

def test_data_order_splits_global_batches_over_processes():
    one = DataOrder(50, 8, world=1, rank=0, seed=3)
    two = [DataOrder(50, 8, world=2, rank=r, seed=3) for r in (0, 1)]
    for epoch in (0, 1):
        batches = one.batches(epoch)
        assert len(batches) == 6 and all(len(b) == 8 for b in batches)
        assert len(set(sum(batches, []))) == 48  # a permutation, remainder dropped
        for b, (first, second) in enumerate(zip(two[0].batches(epoch), two[1].batches(epoch), strict=True)):
            assert first + second == batches[b]
    assert one.batches(0) != one.batches(1)
    assert one.batches(1, start=4) == one.batches(1)[4:]
    assert one.position(1) == (0, 0) and one.position(7) == (1, 0) and one.position(9) == (1, 2)
    with pytest.raises(ConfigError, match="does not split evenly"):
        DataOrder(50, 7, world=2)
    with pytest.raises(ConfigError, match="fewer than train.batch"):
        DataOrder(5, 8)


# ------------------------------------------------------------------------------------ real runs

def test_tiny_run_lowers_validation_l1_and_writes_loadable_checkpoints(tmp_path, photo_sets):
    config = tiny_config(tmp_path, photo_sets, **{"train.iterations": 40, "train.checkpoint_every": 20,
                                                   "val.every": 20})
    torch.manual_seed(mix_seed(config["seed"], 0))  # the trainer's start: the same initial weights
    before = validate(build_network(config), config["val"]["datasets"], 4)[0]
    run_dir = train(config, progress=False)

    rows = list(csv.DictReader((run_dir / "val.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [20, 40]
    after = float(rows[-1]["l1"])
    assert after < 0.8 * before["l1"], (before, rows)
    losses = [float(r["loss"]) for r in csv.DictReader((run_dir / "train.csv").open())]
    assert len(losses) == 20 and np.mean(losses[-5:]) < np.mean(losses[:5])
    # BasicSR layout: params and params_ema; load_model takes params_ema, as the official tools do.
    saved = final_weights(run_dir, 40)
    assert set(saved) == {"params", "params_ema"}
    net = load_model(run_dir / "models" / "net_g_40.pth")
    assert net.arch == "camixersr" and net.config["n_feats"] == 16
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, saved["params_ema"][k], rtol=0, atol=0)
    assert float(validate(net, config["val"]["datasets"], 4)[0]["l1"]) == pytest.approx(after, rel=1e-6)
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == ["net_g_20.pth", "net_g_40.pth"]


def test_fresh_start_refuses_a_run_folder_with_checkpoints(tmp_path, photo_sets):
    config = tiny_config(tmp_path, photo_sets, **{"train.iterations": 4, "val.datasets": []})
    train(config, progress=False)
    with pytest.raises(ConfigError, match="pass --resume"):
        train(config, progress=False)
    config["train"]["iterations"] = 6  # --resume continues, here past the old end
    run_dir = train(config, resume=True, progress=False)
    assert (run_dir / "training_states" / "6.state").is_file()


def test_kill_and_resume_equals_an_unbroken_run(tmp_path, photo_sets):
    """kill -9 after a checkpoint, --resume: the final weights and EMA equal an unbroken run's exactly.

    CAMixer draws Gumbel noise in training, so this also checks that the random state is restored;
    the resumed run reads its patches through a DataLoader worker, the unbroken one in-process.
    """
    config = tiny_config(tmp_path, photo_sets, **{"train.iterations": 60, "train.checkpoint_every": 10,
                                                   "val.datasets": [], "train.keep_checkpoints": 0})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    unbroken = run_train("-c", path, "name=unbroken", "-q")
    assert unbroken.returncode == 0, unbroken.stderr

    proc = subprocess.Popen([sys.executable, "-m", "detailsr", "train", "-c", str(path), "name=killed", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = tmp_path / "runs" / "killed" / "training_states" / "20.state"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    states = sorted(int(p.stem) for p in marker.parent.glob("*.state"))
    assert 20 <= states[-1] < 60

    resumed = run_train("-c", path, "name=killed", "data.workers=1", "--resume", "-q")
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_weights(tmp_path / "runs" / "unbroken", 60), final_weights(tmp_path / "runs" / "killed", 60)
    for part in ("params", "params_ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    logged = [int(r["iteration"]) for r in csv.DictReader((tmp_path / "runs/killed/train.csv").open())]
    assert logged == list(range(2, 61, 2))  # rows after the checkpoint were dropped, then logged again


@pytest.mark.slow
def test_two_gloo_processes_equal_one_with_the_same_global_batch(tmp_path, photo_sets):
    """torchrun, 2 CPU processes x batch 2 vs 1 process x batch 4. The network must draw no random
    numbers in training for the runs to be comparable (CAMixer's Gumbel noise is drawn per process):
    ESC-light's layout at a tiny width. Tolerance: float rounding of the gradient all-reduce, 1e-5."""
    model = {"arch": "esc", "config": {"dim": 16, "pdim": 8, "n_blocks": 1, "conv_blocks": 1, "num_heads": 1,
                                       "window_size": 16}}
    config = tiny_config(tmp_path, photo_sets, **{"model": model, "train.iterations": 6,
                                                   "val.datasets": [str(photo_sets["val"])]})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    single = run_train("-c", path, "name=single", "-q")
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "detailsr.train", "-c", str(path), "name=ddp", "-q"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = final_weights(tmp_path / "runs" / "single", 6), final_weights(tmp_path / "runs" / "ddp", 6)
    worst = max(float((a["params"][k] - b["params"][k]).abs().max()) for k in a["params"])
    assert worst <= 1e-5
    first = list(csv.DictReader((tmp_path / "runs/single/val.csv").open()))[-1]
    second = list(csv.DictReader((tmp_path / "runs/ddp/val.csv").open()))[-1]
    assert float(second["psnr"]) == pytest.approx(float(first["psnr"]), abs=1e-3)


def expected_attended_share(net, x: torch.Tensor) -> float:
    """The share of windows CAMixer's Gumbel draw sends to attention, in expectation: the draw picks
    "attend" with probability sigmoid(p0 - p1) for the predictor's probabilities p (its logits)."""
    found = []
    def on_logits(_m, _i, out):  # out_mask's last Linear gives the window logits; p is their softmax
        p = torch.softmax(out, dim=-1)
        found.append(torch.sigmoid(p[..., 0] - p[..., 1]))

    hooks = [m.register_forward_hook(on_logits) for name, m in net.named_modules() if name.endswith("route.out_mask.2")]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return float(torch.cat([f.flatten() for f in found]).mean())


def test_camixer_training_moves_the_attended_share_toward_the_ratio(tmp_path, photo_sets):
    """Start from weights whose predictor favours attention; the ratio loss pulls the predicted share
    r toward 0.5, and with it the share the official inference attends, 2 * ratio * r, toward the
    configured ratio (0.25 here)."""
    torch.manual_seed(0)
    net = build_network(tiny_config(tmp_path, photo_sets))
    state = net.state_dict()
    state["body.0.body.0.mixer.route.out_mask.2.bias"] = torch.tensor([1.0, -1.0])
    torch.save({"params": state}, tmp_path / "biased.pth")
    config = tiny_config(tmp_path, photo_sets, **{
        "model.init": str(tmp_path / "biased.pth"), "model.ratio": 0.25, "train.iterations": 40, "data.patch": 32,
        "train.batch": 8, "train.losses.ratio": 50.0, "train.optimizer.lr": 5e-3, "val.datasets": [],
        "train.ema": None})
    image = torch.from_numpy(read_image(photo("chelsea")).pixels[:, :, :3].copy()).permute(2, 0, 1)[None] / 255.0

    def official_share(weights) -> float:
        return 2 * 0.25 * expected_attended_share(load_model(weights), image)

    start = official_share({"params": state})
    run_dir = train(config, progress=False)
    end = official_share(run_dir / "models" / "net_g_40.pth")
    assert start > 0.3 and abs(end - 0.25) < 0.5 * abs(start - 0.25), (start, end)
    shares = [float(r["attended"]) for r in csv.DictReader((run_dir / "train.csv").open())]
    assert abs(np.mean(shares[-10:]) - 0.5) < abs(shares[0] - 0.5), shares  # the logged training share


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tmp_path, photo_sets):
    """The learning rate jumps to 1e27 after iteration 4: the weights blow up and the loss with them."""
    config = tiny_config(tmp_path, photo_sets, **{
        "train.iterations": 30, "train.checkpoint_every": 2, "val.datasets": [], "train.keep_checkpoints": 0,
        "train.schedule": {"type": "multistep", "milestones": [4], "gamma": 1e30}, "train.optimizer.lr": 1e-3})
    with pytest.raises(TrainingError, match=r"not finite at iteration \d+ .*last good checkpoint is .*net_g_\d+\.pth"):
        train(config, progress=False)
    run_dir = tmp_path / "runs" / "tiny"
    kept = sorted(int(p.stem) for p in (run_dir / "training_states").glob("*.state"))
    assert kept, "no checkpoint before the loss broke"
    weights = final_weights(run_dir, kept[-1])
    assert all(torch.isfinite(v).all() for v in weights["params"].values())


def test_cli_reports_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: 4\nmodel: {arch: camixersr}\ntrain: {iterations: 3}\n")
    result = run_train("-c", bad, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["detailsr: error: data.train lists no training dataset"]
    result = run_train("-c", tmp_path / "missing.yaml", timeout=120)
    assert result.returncode == 1 and "cannot read the config" in result.stderr


# ------------------------------------------------------------------------------------- recipes

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_there_is_a_recipe_per_family():
    names = {p.stem for p in CONFIGS}
    for expected in ("cpu-quick-x4", "camixersr-light-x4", "camixersr-large-s-x4", "camixersr-odi-x4", "esc-x4",
                     "esc-light-x4", "esc-fp-x4", "atd-light-x2", "pp-atd-light-x4", "camixer-atd-light-x4"):
        assert expected in names


def _weights_here(source: str) -> bool:
    """Whether a recipe's `model.init` is on this machine (a file, the embedded model or a cached
    download); nothing is downloaded."""
    from detailsr.models import zoo

    entry = zoo.get(source)
    if entry is None:
        return Path(source).is_file()
    return bool(entry.embedded) or (zoo.cache_dir() / entry.file).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_recipe_builds_and_trains_one_step(path, tmp_path, photo_sets):
    """Each recipe as written, on the project's photos: one step of batch 2 on small patches.

    Where its weights to start from are not here (zoo downloads, earlier runs) the recipe starts from
    random weights, which still checks the network, optimizer, losses and data; the fine-tune of the
    embedded model loads its real weights."""
    recipe = load_config(path)
    erp = recipe["data"]["train"][0].get("type") == "erp"
    overrides = [f"output={tmp_path / 'runs'}", "train.iterations=1", "train.batch=2", "val.datasets=[]",
                 "data.workers=0", f"data.cache={tmp_path / 'cache'}", "train.threads=1",
                 "data.patch=32" if erp else "data.patch=16"]
    if erp:
        overrides.append(f"data.train=[{{type: erp, hr: {photo_sets['train']}, erp_size: [128, 256]}}]")
    else:
        overrides.append(f"data.train=[{{hr: {photo_sets['train']}}}]")
    if recipe["model"]["init"] is not None and not _weights_here(recipe["model"]["init"]):
        overrides.append("model.init=null")
    config = load_config(path, overrides)
    run_dir = train(config, progress=False)
    saved = final_weights(run_dir, 1)
    net = load_model(run_dir / "models" / "net_g_1.pth", arch=config["model"]["arch"])
    assert net.scale == recipe["scale"] and set(saved["params"]) == set(net.state_dict())


def test_tensorboard_logs_need_the_optional_package(tmp_path, photo_sets):
    config = tiny_config(tmp_path, photo_sets, **{"train.iterations": 2, "train.tensorboard": True,
                                                   "val.datasets": []})
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:  # the [tensorboard] extra is not installed: one clear error, before training
        with pytest.raises(ConfigError, match=r"tensorboard package .*detailsr\[tensorboard\]"):
            train(config, progress=False)
        return
    run_dir = train(config, progress=False)
    assert any((run_dir / "tensorboard").glob("events.out.tfevents.*"))
