"""Routing maps: which pixels took the expensive path (the embedded model on crops of a project photo)."""

import cv2
import numpy as np
import pytest
import torch
from conftest import default_model_file, photo, run_cli

import detailsr
from detailsr.errors import ConfigError
from detailsr.models.record import MixerRecord, mixer_records
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


def window_logits(net, img, ratio=0.5):
    """The window logits (B, N, 2) of every routed mixer in one forward: the output of each
    predictor's last Linear, before its softmax."""
    found = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: found.append(out))
             for name, m in net.named_modules() if name.endswith("route.out_mask.2")]
    try:
        detailsr.routing_maps(net, img, ratio=ratio)
    finally:
        for h in hooks:
            h.remove()
    return found


def test_saturated_scores_do_not_decide_the_routing(net):
    """The real checkpoint saturates: in some layers more windows than K score exactly p = 1.0. The
    windows attended are then the K largest logit margins, not the first K in raster order."""
    img = np.ascontiguousarray(cv2.imread(str(photo("coffee")))[:, :, ::-1][100:196, 100:228])  # 6 x 8 windows
    logits = window_logits(net, img)
    records = mixer_records(net, routed_only=True)
    assert len(logits) == len(records)
    saturated_layers = 0
    for scores, record in zip(logits, records, strict=True):
        p_hard = torch.softmax(scores, dim=-1)[0, :, 0]
        margin = scores[0, :, 0] - scores[0, :, 1]
        k = record.keep.shape[1]
        assert torch.equal(record.keep[0], torch.sort(margin, descending=True, stable=True).indices[:k])
        if int((p_hard == 1.0).sum()) > k:
            saturated_layers += 1
            tied = (p_hard == 1.0).nonzero()[:, 0]
            assert not torch.equal(record.keep[0].sort().values, tied[:k])  # not the raster-order ties
    assert saturated_layers >= 1  # the case this test is about occurs on this image


def test_auto_ratio_maps_follow_the_content_when_flipped(net):
    """The map of a vertically flipped image, flipped back, nearly equals the image's own map."""
    img = lr_image(96, 128)
    own = detailsr.routing_maps(net, img, ratio="auto")
    flipped = detailsr.routing_maps(net, np.ascontiguousarray(img[::-1]), ratio="auto")[::-1]
    assert 1 - np.abs(own - flipped).mean() > 0.9
    assert 0.2 < own.mean() < 0.8  # the predictor chose, neither all windows nor none


def test_auto_ratio_counts_per_image_and_batches_split(net):
    """K of every layer is floor(sum of p_hard + 0.5) for that image; a batch runs image by image."""
    img = lr_image(48, 64)
    logits = window_logits(net, img, ratio="auto")
    for scores, record in zip(logits, mixer_records(net, routed_only=True), strict=True):
        expected = int(np.floor(float(torch.softmax(scores, dim=-1)[0, :, 0].sum()) + 0.5))
        assert record.keep.shape[1] == expected
    x = torch.from_numpy(np.stack([img, img[::-1]])).permute(0, 3, 1, 2).float().contiguous() / 255
    with torch.no_grad():
        net.set_ratio("auto")
        try:
            assert torch.equal(net(x), torch.cat([net(x[:1]), net(x[1:])]))
        finally:
            net.set_ratio(0.5)


def test_ratio_auto_is_the_default_and_only_for_predictor_models(net):
    assert detailsr.load_model().ratio == "auto"
    assert detailsr.load_model(ratio=0.25).ratio == 0.25
    with pytest.raises(ConfigError, match="auto"):
        build_untrained("esc-light-x4").set_ratio("auto")
    with pytest.raises(ConfigError, match="auto"):
        detailsr.load_model(ratio="half")
