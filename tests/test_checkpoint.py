"""Safe checkpoint reading: formats, wrappers, and every way a file can be wrong.

The real weights are those of the embedded default model (read by safetensors itself); only the
official `.pth`'s own wrapping (`params` next to `params_ema`) is read from ../shared.
"""

import functools
import pickle

import pytest
import torch
from conftest import default_model_file, shared_file
from safetensors.torch import load_file

import detailsr
from detailsr.checkpoint import read_state_dict, save_state_dict
from detailsr.errors import CheckpointError, ConfigError
from detailsr.models.camixersr import CAMixerSR


@pytest.fixture(scope="module")
def official():
    return torch.load(shared_file("weights/CAMixerSR_S.pth"), weights_only=True)


@functools.lru_cache(maxsize=1)
def _real_weights() -> dict:
    """A real CAMixerSR-S x4 state dict: the embedded default model's tensors."""
    return load_file(default_model_file())


@pytest.fixture
def real() -> dict:
    return dict(_real_weights())


def _truncated_pth(path) -> None:
    """A real zip-format .pth of the real weights, cut off after 100 kB."""
    torch.save(_real_weights(), path)
    path.write_bytes(path.read_bytes()[:100_000])


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_params_ema_is_preferred(official):
    sd = read_state_dict(shared_file("weights/CAMixerSR_S.pth"))
    assert _same(sd, official["params_ema"])
    assert not _same(sd, official["params"])


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"params": sd},
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
])
def test_wrappers_and_module_prefix_are_unwrapped(tmp_path, real, wrap):
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(real), path)
    assert _same(read_state_dict(path), real)
    assert detailsr.load_model(path).config["n_feats"] == 36


def test_safetensors_round_trip(tmp_path, real):
    path = tmp_path / "s.safetensors"
    save_state_dict(real, path, {"arch": "camixersr"})
    net = detailsr.load_model(path)
    assert _same(net.state_dict(), real)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "is empty"),
    (_truncated_pth, "corrupt or truncated"),
    (lambda p: p.write_text("not a checkpoint at all\n"), r"not a PyTorch \(\.pth\) or safetensors file"),
    (lambda p: p.write_bytes(pickle.dumps({"params": _Evil()})), "refusing to unpickle"),
    (lambda p: torch.save({"note": "no tensors"}, p), "contains no tensors"),
    (lambda p: torch.save([torch.zeros(2)], p), "not a state dict"),
])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message) as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        read_state_dict(path)


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(default_model_file().read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="not a valid safetensors") as info:
        read_state_dict(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_unknown_name():
    with pytest.raises(CheckpointError, match="does not exist"):
        detailsr.load_model("no/such/file.pth")
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a zoo model"):
        detailsr.load_model("camixersr-xxl")


def test_state_dict_in_memory():
    net = CAMixerSR(n_feats=24, n_block=(1, 2), scale=3)
    loaded = detailsr.load_model(net.state_dict())
    assert loaded.config == {"n_feats": 24, "n_block": [1, 2], "scale": 3}
    assert _same(loaded.state_dict(), net.state_dict())


def test_an_unknown_hyper_parameter_is_named_before_building():
    with pytest.raises(ConfigError, match="camixersr has no hyper-parameter window; it takes n_feats"):
        detailsr.load_model(default_model_file(), window=8)


def test_an_error_inside_a_constructor_is_not_taken_for_another_family(monkeypatch):
    """A bug in a network's constructor surfaces as itself, not as "no builder" or a bad setting."""
    from detailsr.models import camixersr

    class Broken(camixersr.CAMixerSR):
        def __init__(self, **config):
            super().__init__(**config)
            raise KeyError("a bug in the constructor")

    monkeypatch.setitem(camixersr.ARCHITECTURES, "camixersr", Broken)
    with pytest.raises(KeyError, match="a bug in the constructor"):
        detailsr.load_model(default_model_file())
