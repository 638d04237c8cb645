"""Routing maps: which pixels took the expensive path (the embedded model on crops of a project photo)."""

import cv2
import numpy as np
import pytest
import torch
from conftest import default_model_file, photo, run_cli

import detailsr
from detailsr.errors import ConfigError
from detailsr.models.record import MixerRecord
from detailsr.models.registry import build_untrained


@pytest.fixture(scope="module")
def net():
    return detailsr.load_model()  # the embedded CAMixerSR-S x4


def lr_image(h=48, w=64):
    """RGB crop of a real photo: the cat's eye, fur and whiskers, busy in some windows, smoother in others."""
    img = cv2.imread(str(photo("chelsea")))[:, :, ::-1]
    return np.ascontiguousarray(img[40 : 40 + h, 60 : 60 + w])


def test_map_follows_the_ratio(net):
    img = lr_image()  # 3 x 4 windows of 16 px, no padding
    for ratio in (0.0, 1.0):
        assert np.all(detailsr.routing_maps(net, img, ratio=ratio) == ratio)
    share = detailsr.routing_maps(net, img, ratio=0.5)
    assert share.shape == (48, 64)
    assert share.mean() == pytest.approx(0.5)  # K = 6 of 12 windows in every block
    # constant inside each window, and some windows attended more often than others
    blocks = share.reshape(3, 16, 4, 16)
    assert np.all(blocks == blocks[:, :1, :, :1])
    assert share.max() > share.min()


def test_padded_input_is_cropped(net):
    share = detailsr.routing_maps(net, lr_image(37, 53), ratio=0.25)
    assert share.shape == (37, 53)
    assert 0 <= share.min() <= share.max() <= 1


def test_shifted_windows_map_back_to_their_pixels():
    keep = torch.tensor([[0]])  # window (0, 0) of a 2 x 2 grid of 4-pixel windows, shifted by 2
    m = MixerRecord(keep=keep, grid=(2, 2), window=4, shift=2).pixel_mask()[0]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:6, 2:6] = True
    assert torch.equal(m, expected)


def test_models_without_routing_are_refused():
    with pytest.raises(ConfigError, match="routes nothing"):
        detailsr.routing_maps(build_untrained("esc-light-x2"), lr_image(16, 16))


def test_mask_command_writes_the_map(tmp_path):
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), lr_image()[:, :, ::-1])
    out = tmp_path / "map.png"
    result = run_cli("mask", src, "-o", out, "-m", default_model_file(), "--ratio", "0.5")
    assert result.returncode == 0, result.stderr
    gray = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert gray.shape == (48, 64) and gray.dtype == np.uint8
    assert abs(gray.mean() / 255 - 0.5) < 0.01
