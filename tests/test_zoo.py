"""The model zoo: cache lookup, hash check, and the offline message."""

import dataclasses

import pytest
from conftest import shared_file

import detailsr
from detailsr.checkpoint import read_state_dict
from detailsr.errors import CheckpointError, ModelNotFoundError
from detailsr.models import zoo
from detailsr.models.camixersr import CAMixerSR


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETAILSR_CACHE", str(tmp_path))
    monkeypatch.setenv("DETAILSR_OFFLINE", "1")
    return tmp_path


def test_every_official_camixersr_file_has_an_entry():
    names = zoo.names()
    assert len(names) == len(set(names))
    for name in ["camixersr-s-x4", "camixersr-m-x4", "camixersr-b-x4", "camixersr-classsr-x4",
                 "camixersr-light-x2", "camixersr-light-x2-df2k", "camixersr-light-x3", "camixersr-light-x4",
                 "camixersr-light-x4-df2k", "camixersr-odi-x2", "camixersr-odi-x4"]:
        entry = zoo.get(name)
        assert entry is not None, name
        assert entry.url.startswith("https://") and entry.url.endswith(".pth")
        assert entry.licence == "Apache-2.0"
    from detailsr.models.registry import DERIVED

    files = [e.file for e in zoo.ENTRIES if e.arch not in DERIVED]  # derived ones reuse their base's file
    assert len(set(files)) == len(files)  # no two entries share a cache file


@pytest.mark.parametrize("name, n_feats, scale", [
    ("camixersr-s-x4", 36, 4), ("camixersr-m-x4", 48, 4), ("camixersr-b-x4", 60, 4),
    ("camixersr-light-x2", 60, 2), ("camixersr-light-x3", 60, 3),
])
def test_entry_parameter_counts_match_the_architecture(name, n_feats, scale):
    entry = zoo.get(name)
    assert entry.scale == scale
    assert sum(p.numel() for p in CAMixerSR(n_feats=n_feats, scale=scale).parameters()) == entry.params


def test_the_default_model_is_embedded_and_needs_no_network(cache):
    entry = zoo.get(zoo.DEFAULT_MODEL)
    path = zoo.fetch(entry)
    assert path.suffix == ".safetensors" and path.parent.name == "weights"
    assert (path.parent / "LICENSE-camixersr-s-x4.txt").read_text().startswith(" " * 33 + "Apache License")
    net = detailsr.load_model()
    assert (net.arch, net.config["n_feats"], net.scale) == ("camixersr", 36, 4)
    assert list(cache.iterdir()) == []  # nothing was cached or downloaded


def test_the_embedded_weights_are_the_official_params_ema():
    import torch

    official = torch.load(shared_file("weights/CAMixerSR_S.pth"), map_location="cpu", weights_only=True)
    embedded = read_state_dict(zoo.fetch(zoo.get("camixersr-s-x4")))
    assert embedded.keys() == official["params_ema"].keys()
    assert all(torch.equal(embedded[k], v) for k, v in official["params_ema"].items())


def _entry_at(url: str):
    """camixersr-m-x4 as if it were published at `url` (file:// URLs download without a network)."""
    return dataclasses.replace(zoo.get("camixersr-m-x4"), url=url)


def test_a_download_lands_in_the_cache_and_is_used(cache, monkeypatch):
    monkeypatch.delenv("DETAILSR_OFFLINE")
    source = zoo.fetch(zoo.get("camixersr-s-x4"))
    entry = _entry_at(source.as_uri())
    path = zoo.fetch(entry, progress=False)
    assert path == cache / entry.file
    assert path.read_bytes() == source.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert zoo.fetch(entry) == path  # the cached copy, no second download


@pytest.mark.parametrize("what", ["missing", "web page"])
def test_a_failed_download_leaves_nothing_behind(cache, monkeypatch, tmp_path_factory, what):
    monkeypatch.delenv("DETAILSR_OFFLINE")
    served = tmp_path_factory.mktemp("server") / "CAMixerSR_M.pth"
    if what == "web page":
        served.write_text("<!DOCTYPE html><html>Google Drive can't scan this file for viruses</html>")
    with pytest.raises(ModelNotFoundError, match="download" if what == "missing" else "web page"):
        zoo.fetch(_entry_at(served.as_uri()), progress=False)
    assert list(cache.iterdir()) == []  # not even an empty folder


def test_offline_message_says_where_to_put_the_file(cache):
    with pytest.raises(ModelNotFoundError) as info:
        detailsr.load_model("camixersr-b-x4")
    message = str(info.value)
    assert str(cache / "camixersr/LargeSR/CAMixerSR_B.pth") in message
    assert "https://github.com/icandle/CAMixerSR/raw/" in message
    assert list(cache.iterdir()) == []


def test_hash_mismatch_is_an_error(cache):
    entry = zoo.get("esc-real-x4-mse")
    target = cache / entry.file
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(CheckpointError, match="does not match the published sha256"):
        detailsr.load_model("esc-real-x4-mse")


def test_every_entry_builds_its_architecture_untrained():
    from detailsr.models.registry import build_untrained

    for entry in zoo.ENTRIES:
        net = build_untrained(entry.name)
        assert (net.arch, net.scale) == (entry.arch, entry.scale), entry.name
        assert sum(p.numel() for p in net.parameters()) == entry.params, entry.name
