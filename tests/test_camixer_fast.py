"""The channels-last inference path of CAMixerSR against the plain modules (the oracle).

Real weights (the embedded CAMixerSR-S) on real photos: the same output within 1e-5 and the same
routing (every mixer attends the same windows), at every ratio, with Pure-Pass routing, the
official stochastic draw, a batch of two, and sizes that need padding.
"""

import numpy as np
import pytest
import torch
from conftest import photo

from detailsr import load_model
from detailsr.imageio import read_image, to_tensor


@pytest.fixture(scope="module")
def net():
    return load_model()


def crop(name: str, h: int, w: int, flip: bool = False) -> torch.Tensor:
    pixels = read_image(photo(name)).pixels[:h, :w, :3]
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return to_tensor(pixels[::-1].copy() if flip else pixels)


def both_paths(net, x: torch.Tensor, seed: int | None = None):
    results = []
    for fast in (False, True):
        net.fast_path = fast
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            y = net(x)
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
        assert not net._use_fast_path()
    finally:
        mixer.dense_reference = False
    assert net._use_fast_path()
    net.train()
    try:
        assert not net._use_fast_path()
        net(x)
        assert mixer.record.hard_fraction is not None
    finally:
        net.eval()
