"""The model zoo: cache lookup, hash check, and the offline message."""

import shutil

import pytest
from conftest import shared_file

import detailsr
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
    files = [e.file for e in zoo.ENTRIES]
    assert len(set(files)) == len(files)  # no two entries share a cache file


@pytest.mark.parametrize("name, n_feats, scale", [
    ("camixersr-s-x4", 36, 4), ("camixersr-m-x4", 48, 4), ("camixersr-b-x4", 60, 4),
    ("camixersr-light-x2", 60, 2), ("camixersr-light-x3", 60, 3),
])
def test_entry_parameter_counts_match_the_architecture(name, n_feats, scale):
    entry = zoo.get(name)
    assert entry.scale == scale
    assert sum(p.numel() for p in CAMixerSR(n_feats=n_feats, scale=scale).parameters()) == entry.params


def test_cached_file_is_used_and_verified(cache):
    entry = zoo.get("camixersr-s-x4")
    target = cache / entry.file
    target.parent.mkdir(parents=True)
    shutil.copy(shared_file("weights/CAMixerSR_S.pth"), target)
    net = detailsr.load_model("camixersr-s-x4")
    assert net.config["n_feats"] == 36
    assert detailsr.load_model(None).config["n_feats"] == 36  # the default model


def test_offline_message_says_where_to_put_the_file(cache):
    with pytest.raises(ModelNotFoundError) as info:
        detailsr.load_model("camixersr-b-x4")
    message = str(info.value)
    assert str(cache / "camixersr/LargeSR/CAMixerSR_B.pth") in message
    assert "https://github.com/icandle/CAMixerSR/raw/" in message


def test_hash_mismatch_is_an_error(cache):
    entry = zoo.get("camixersr-s-x4")
    target = cache / entry.file
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(CheckpointError, match="does not match the published sha256"):
        detailsr.load_model("camixersr-s-x4")


def test_every_entry_builds_its_architecture_untrained():
    from detailsr.models.registry import build_untrained

    for entry in zoo.ENTRIES:
        net = build_untrained(entry.name)
        assert (net.arch, net.scale) == (entry.arch, entry.scale), entry.name
        assert sum(p.numel() for p in net.parameters()) == entry.params, entry.name
