"""The channels-last inference paths of CAMixerSR and CAMixerOSR against the plain modules (the oracle).

Real weights (the embedded CAMixerSR-S) on real photos: the same output within 1e-5 and the same
routing (every mixer attends the same windows), at every ratio, with Pure-Pass routing, the
official stochastic draw, a batch of two, and sizes that need padding. CAMixerOSR (seeded weights)
on a real panorama with its latitude condition: the same, with shifted windows and deformable convs.
"""

import numpy as np
import pytest
import torch
from conftest import photo, shared_file
from PIL import Image

from detailsr import load_model
from detailsr.imageio import read_image, to_tensor
from detailsr.models.camixer_fast import _deform_conv, _weighted_rows, _weighted_rows_by_gathers
from detailsr.models.camixersr import DCNv2Pack, fast_path_applies, latitude_condition
from detailsr.models.registry import build_untrained


@pytest.fixture(scope="module")
def net():
    return load_model()


def crop(name: str, h: int, w: int, flip: bool = False) -> torch.Tensor:
    pixels = read_image(photo(name)).pixels[:h, :w, :3]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return to_tensor(pixels[::-1].copy() if flip else pixels)


def both_paths(net, *inputs: torch.Tensor, seed: int | None = None):
    """[(output, each mixer's attended windows)] of the plain modules, then of the fast path."""
    results = []
    for fast in (False, True):
        net.fast_path = fast
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            y = net(*inputs)
        results.append((y, [m.record.keep.clone() for m in net.mixers()]))
    net.fast_path = True
    return results


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.0])
def test_fast_path_equals_the_modules(net, one_thread, ratio):
    net.set_ratio(ratio)
    (plain, plain_keep), (fast, fast_keep) = both_paths(net, crop("coffee", 80, 112))
    assert all(torch.equal(a, b) for a, b in zip(plain_keep, fast_keep, strict=True))
    assert (plain - fast).abs().max() <= 1e-5
    net.set_ratio(0.5)


def test_fast_path_with_purepass_stochastic_batches_and_padding(net, one_thread):
    net.set_ratio(0.5)
    net.set_routing("purepass", 0.5)
    try:
        (plain, pk), (fast, fk) = both_paths(net, crop("chelsea", 70, 100))  # padded to 80 x 112
        assert all(torch.equal(a, b) for a, b in zip(pk, fk, strict=True))
        assert (plain - fast).abs().max() <= 1e-5
    finally:
        net.set_routing("learned")
    batch = torch.cat((crop("coffee", 64, 96), crop("coffee", 64, 96, flip=True)))
    (plain, pk), (fast, fk) = both_paths(net, batch)
    assert all(torch.equal(a, b) for a, b in zip(pk, fk, strict=True))
    assert (plain - fast).abs().max() <= 1e-5
    for m in net.mixers():
        m.stochastic = True
    try:
        (plain, pk), (fast, fk) = both_paths(net, crop("coffee", 64, 96), seed=0)
        assert all(torch.equal(a, b) for a, b in zip(pk, fk, strict=True))
        assert (plain - fast).abs().max() <= 1e-5
    finally:
        for m in net.mixers():
            m.stochastic = False


def test_training_and_the_dense_reference_keep_the_module_path(net):
    x = crop("coffee", 32, 32)
    mixer = net.mixers()[0]
    mixer.dense_reference = True
    try:
        assert not fast_path_applies(net)
    finally:
        mixer.dense_reference = False
    assert fast_path_applies(net)
    net.train()
    try:
        assert not fast_path_applies(net)
        net(x)
        assert mixer.record.hard_fraction is not None
    finally:
        net.eval()


# ------------------------------------------------------------------------- CAMixerOSR (360° panoramas)


@pytest.fixture(scope="module")
def odi_net():
    """CAMixerOSR x4 (seeded weights: no ODI checkpoint is stored here) whose deformable convs get
    real offsets and masks: a fresh DCNv2Pack's offset conv is all zero."""
    net = build_untrained("camixersr-odi-x4")
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, DCNv2Pack):
            with torch.no_grad():
                module.conv_offset.weight.normal_(0, 0.05, generator=generator)
                module.conv_offset.bias.normal_(0, 2.0, generator=generator)  # some taps land outside
    return net


def erp_crop(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A real panorama resized to width x height, and its latitude condition."""
    pixels = read_image(shared_file("datasets/ODI/street_equirec2perspec.jpg")).pixels[..., :3]
    small = np.array(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
    return to_tensor(small), latitude_condition(height, width)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.0])
def test_odi_fast_path_equals_the_modules(odi_net, one_thread, ratio):
    odi_net.set_ratio(ratio)
    x, condition = erp_crop(48, 96)
    (plain, plain_keep), (fast, fast_keep) = both_paths(odi_net, x, condition)
    assert all(torch.equal(a, b) for a, b in zip(plain_keep, fast_keep, strict=True))
    assert [m.record.shift for m in odi_net.mixers()][:2] == [0, 8]  # shifted windows are exercised
    assert (plain - fast).abs().max() <= 1e-5
    odi_net.set_ratio(0.5)


def test_odi_fast_path_with_a_batch_and_the_official_draw(odi_net, one_thread):
    x, condition = erp_crop(32, 64)
    batch = torch.cat((x, x.flip(-1)))
    (plain, pk), (fast, fk) = both_paths(odi_net, batch, condition)
    assert all(torch.equal(a, b) for a, b in zip(pk, fk, strict=True))
    assert (plain - fast).abs().max() <= 1e-5
    for m in odi_net.mixers():
        m.stochastic = True
    try:
        (plain, pk), (fast, fk) = both_paths(odi_net, x, condition, seed=0)
        assert all(torch.equal(a, b) for a, b in zip(pk, fk, strict=True))
        assert (plain - fast).abs().max() <= 1e-5
    finally:
        for m in odi_net.mixers():
            m.stochastic = False


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 2, 2)])
def test_deform_conv_equals_the_module(one_thread, stride, padding, dilation):
    """The channels-last deformable conv against `DCNv2Pack`, offsets reaching past every border."""
    torch.manual_seed(0)
    dcn = DCNv2Pack(12, 10, 3, stride=stride, padding=padding, dilation=dilation)
    with torch.no_grad():
        dcn.conv_offset.weight.normal_(0, 0.5)
        dcn.conv_offset.bias.normal_(0, 4.0)
    x, _ = erp_crop(24, 40)
    features = torch.cat([x] * 4, dim=1)  # 12 channels of real image content
    feature = torch.roll(features, 3, dims=-1)
    with torch.inference_mode():
        expected = dcn(features, feature)
        got = _deform_conv(dcn, features.permute(0, 2, 3, 1).contiguous(), feature).permute(0, 3, 1, 2)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-5


def test_weighted_rows_by_gathers_equals_embedding_bag(one_thread):
    """The sampling sum devices without `embedding_bag` run (MPS), against the one CPU runs."""
    x, _ = erp_crop(16, 32)
    table = x[0].permute(1, 2, 0).reshape(-1, 3)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, table.shape[0], (500, 4), generator=generator)
    weights = torch.rand(500, 4, generator=generator)
    assert torch.allclose(_weighted_rows_by_gathers(table, rows, weights), _weighted_rows(table, rows, weights),
                          atol=1e-6)
