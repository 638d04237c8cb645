"""`detailsr.upscale`: input kinds, any size, any output scale, and tiling without seams."""

import cv2
import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image

import detailsr
from detailsr.errors import ConfigError
from detailsr.inference import resize_output, run, tile_origins


@pytest.fixture(scope="module")
def net():
    return detailsr.load_model(ratio=0.5)  # the embedded CAMixerSR-S x4


def real_crop(h, w, name="chelsea"):
    """The top-left h x w of a project photo (chelsea: fur, whiskers, a smooth background), RGB uint8."""
    img = cv2.imread(str(photo(name)), cv2.IMREAD_COLOR)[:, :, ::-1]
    return np.ascontiguousarray(img[:h, :w])


def test_tile_origins_cover_the_axis_with_the_overlap():
    assert tile_origins(100, 40, 8) == [0, 32, 60]
    assert tile_origins(40, 40, 8) == [0]
    assert tile_origins(30, 40, 8) == [0]


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_tiled_output_matches_whole_image_without_seams(net, ratio):
    lr = real_crop(96, 128)
    whole = detailsr.upscale(lr, net, ratio=ratio)
    tiled = detailsr.upscale(lr, net, ratio=ratio, tile=48, tile_overlap=16)
    diff = np.abs(whole.astype(np.float64) - tiled.astype(np.float64)).mean(axis=2)
    assert diff.mean() <= 0.5
    # Seams: along every tile border, the mean difference in a band of 8 output pixels either side is at
    # most twice the mean in the strips beside the band (8 to 32 pixels away). The reference is local
    # because the whole-vs-tiled difference follows the content (fur differs more than the smooth
    # background, wherever the borders lie); a seam is a local excess.
    s, band, flank = net.scale, 8, 32
    for axis, length in ((0, 96), (1, 128)):
        profile = diff.mean(axis=1 - axis)
        starts = tile_origins(length, 48, 16)
        for b in sorted({o * s for o in starts[1:]} | {(o + 48) * s for o in starts[:-1]}):
            beside = np.r_[profile[max(0, b - flank) : b - band], profile[b + band : b + flank]]
            assert profile[b - band : b + band].mean() <= 2 * beside.mean(), (axis, b)


def test_feathered_blend_differs_from_plain_averaging(net):
    x = torch.from_numpy(real_crop(40, 56)).permute(2, 0, 1)[None].float() / 255
    feather = run(net, x, ratio=1.0, tile=24, tile_overlap=8, blend="feather")
    average = run(net, x, ratio=1.0, tile=24, tile_overlap=8, blend="average")
    assert feather.shape == average.shape == (1, 3, 160, 224)
    assert (feather - average).abs().max() > 0


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (5, 3), (15, 16), (17, 2)])
def test_tiny_images(net, h, w):
    out = detailsr.upscale(real_crop(h, w), net)
    assert out.shape == (h * 4, w * 4, 3)
    assert out.dtype == np.uint8


def test_input_kinds_give_the_same_kind_back(net):
    rgb = real_crop(20, 24)
    as_array = detailsr.upscale(rgb, net)
    as_pil = detailsr.upscale(Image.fromarray(rgb), net)
    as_tensor = detailsr.upscale(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, net)
    assert isinstance(as_pil, Image.Image) and as_pil.size == (96, 80)
    assert np.array_equal(np.asarray(as_pil), as_array)
    assert as_tensor.shape == (3, 80, 96)
    assert np.abs(np.round(as_tensor.permute(1, 2, 0).numpy() * 255) - as_array).max() <= 1


def test_uint16_gray_and_alpha_arrays(net):
    rgb = real_crop(20, 24)
    deep = detailsr.upscale(rgb.astype(np.uint16) * 257, net)
    assert deep.dtype == np.uint16
    assert np.abs(deep.astype(np.int64) / 257 - detailsr.upscale(rgb, net)).max() <= 1
    gray = detailsr.upscale(rgb[:, :, 1], net)
    assert gray.shape == (80, 96)
    rgba = np.dstack([rgb, np.linspace(0, 255, 24, dtype=np.uint8)[None].repeat(20, 0)])
    out = detailsr.upscale(rgba, net)
    assert out.shape == (80, 96, 4)
    assert np.array_equal(out[:, :, :3], detailsr.upscale(rgb, net))


def test_ratio_is_restored_after_the_call(net):
    net.set_ratio(0.5)
    detailsr.upscale(real_crop(16, 16), net, ratio=0.0)
    assert all(m.route.ratio == 0.5 for m in net.mixers())


def test_classsr_branch_ratios_are_restored_after_the_call():
    from detailsr.models.camixersr import CLASSSR_RATIOS, ClassSRCAMixerSR

    torch.manual_seed(0)
    classsr = ClassSRCAMixerSR(n_feats=[8, 8, 8], n_block=(1,), scale=2).eval()
    assert classsr.ratio is None and classsr.branch_ratios == CLASSSR_RATIOS
    detailsr.upscale(real_crop(32, 32), classsr, ratio=1.0)
    assert classsr.ratio is None and classsr.branch_ratios == CLASSSR_RATIOS
    classsr.set_ratio(0.4)
    detailsr.upscale(real_crop(32, 32), classsr, ratio=1.0)
    assert classsr.ratio == 0.4 and classsr.branch_ratios == (0.4, 0.4, 0.4)


@pytest.mark.parametrize("outscale, size", [(2, (40, 48)), (3.5, (70, 84)), (4, (80, 96)), (0.5, (10, 12))])
def test_outscale_resizes_every_kind_of_input(net, outscale, size):
    rgb = real_crop(20, 24)
    full = detailsr.upscale(rgb, net)
    out = detailsr.upscale(rgb, net, outscale=outscale)
    assert out.shape == (*size, 3) and out.dtype == np.uint8
    if outscale == 4:
        assert np.array_equal(out, full)  # the network's own scale: no resize
    if outscale == 2:  # area averaging of the x4 result: each pixel the mean of a 2 x 2 block
        blocks = full.astype(np.float64).reshape(40, 2, 48, 2, 3).mean(axis=(1, 3))
        assert np.abs(blocks - out).max() <= 0.5 + 1e-9
    pil = detailsr.upscale(Image.fromarray(rgb), net, outscale=outscale)
    assert pil.size == size[::-1] and np.array_equal(np.asarray(pil), out)
    gray_alpha = detailsr.upscale(np.dstack([rgb[:, :, 1], rgb[:, :, 0]]), net, outscale=outscale)
    assert gray_alpha.shape == (*size, 2)
    tensor = detailsr.upscale(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255, net, outscale=outscale)
    assert tensor.shape == (3, *size) and 0 <= tensor.min() and tensor.max() <= 1
    assert np.abs(tensor.permute(1, 2, 0).numpy() * 255 - out).max() <= 1.5


def test_resize_output_enlarges_with_lanczos_and_keeps_16_bits():
    deep = real_crop(20, 24).astype(np.uint16) * 257
    up = resize_output(deep, 50, 60)
    assert up.dtype == np.uint16 and up.shape == (50, 60, 3)
    reference = cv2.resize(deep, (60, 50), interpolation=cv2.INTER_LANCZOS4)
    assert np.array_equal(up, reference)


def test_bad_arguments(net):
    with pytest.raises(ConfigError, match="tile"):
        run(net, torch.rand(1, 3, 8, 8), tile=0)
    with pytest.raises(ConfigError, match="larger than the tile overlap"):
        run(net, torch.rand(1, 3, 40, 40), tile=16, tile_overlap=16)
    with pytest.raises(ConfigError, match="blend"):
        run(net, torch.rand(1, 3, 8, 8), tile=4, blend="max")
    with pytest.raises(ConfigError, match="uint8 or uint16"):
        detailsr.upscale(np.zeros((4, 4, 3), np.float32), net)
    with pytest.raises(ConfigError, match="outscale"):
        detailsr.upscale(real_crop(4, 4), net, outscale=0)


def test_odi_network_gets_the_latitude_of_the_whole_panorama():
    from detailsr.models.camixersr import CAMixerOSR, latitude_condition

    torch.manual_seed(0)
    net = CAMixerOSR(n_feats=12, n_block=(1, 1), scale=2).eval()
    erp = cv2.resize(real_crop(200, 300, "coffee"), (64, 32), interpolation=cv2.INTER_AREA)  # 2:1, as a panorama
    x = torch.from_numpy(erp).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = net(x, latitude_condition(32, 64)).clamp(0, 1)
        zero_condition = net(x).clamp(0, 1)
    assert torch.allclose(detailsr.upscale(x, net), expected, atol=1e-6)
    assert not torch.allclose(zero_condition, expected, atol=1e-3)
    # a tile sees its own rows of the panorama's latitude map
    tiled = run(net, x, tile=16, tile_overlap=0)
    with torch.no_grad():
        corner = net(x[:, :, 16:32, 48:64], latitude_condition(32, 64)[:, :, 16:32, 48:64]).clamp(0, 1)
    assert torch.allclose(tiled[:, :, 32:64, 96:128], corner, atol=1e-6)


def test_tiling_a_whole_image_model_warns(caplog):
    from detailsr.models.registry import build_untrained

    net = build_untrained("esc-light-x2")
    with caplog.at_level("WARNING", logger="detailsr.inference"):
        out = run(net, torch.rand(1, 3, 20, 24), tile=12, tile_overlap=4)
    assert out.shape == (1, 3, 40, 48)
    assert "looks at the whole image" in caplog.text
