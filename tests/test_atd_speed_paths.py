"""ATD's inference paths against its plain (autograd) path: bitwise the same outputs.

Outside autograd, `models/atd.py` computes the naive backend's attention a few windows / groups
at a time (`blocked_attention`), gathers the (shifted) windows and the category order with one
`index_select` each way (`window_order`, `take_tokens`), and caches the relative-position bias
(per weights) and the shift mask (per size). None of it may change a bit of the output: the plain
path, taken whenever autograd records, is the one checked against the official network
(tests/test_atd.py). These tests compare outputs only; they time nothing.
"""

import pytest
import torch

from detailsr.models import atd
from detailsr.models.atd import (
    ATD,
    ATDLight,
    CategoryAttention,
    WindowAttention,
    relative_position_index,
    shift_window_mask,
    take_tokens,
    window_order,
)
from detailsr.models.layers import gather_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def plain(module, *args):
    """The module's autograd path (what the fast paths must reproduce), detached."""
    with torch.enable_grad():
        args = [a.detach().requires_grad_() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        return module(*args).detach()


def fast(module, *args):
    with torch.inference_mode():
        return module(*args)


def test_take_tokens_is_gather_tokens():
    x, index = torch.randn(3, 50, 7), torch.stack([torch.randperm(50)[:40] for _ in range(3)])
    assert torch.equal(take_tokens(x, index), gather_tokens(x, index))
    assert take_tokens(x, index).is_contiguous()


@pytest.mark.parametrize("shift", [0, 8])
def test_window_order_is_roll_then_window_split(shift):
    h, w, ws = 32, 48, 16
    x = torch.randn(2, h, w, 5)
    rolled = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    windows = rolled.view(2, h // ws, ws, w // ws, ws, 5).permute(0, 1, 3, 2, 4, 5).reshape(2, h * w, 5)
    order, inverse = window_order(h, w, ws, shift, x.device)
    assert torch.equal(take_tokens(x.view(2, h * w, 5), order), windows)
    assert torch.equal(take_tokens(windows, inverse), x.view(2, h * w, 5))


@pytest.mark.parametrize("block", [None, 4 * 2 * 256 * 256 * 4])  # default; 4 windows: across images
def test_window_attention_inference_path_is_bitwise_the_plain_path(monkeypatch, block):
    if block is not None:
        monkeypatch.setattr(atd, "SCORE_BLOCK_BYTES", block)  # blocks straddle the two images
    torch.manual_seed(0)
    mixer = WindowAttention(24, 16, 2).eval()
    torch.nn.init.normal_(mixer.relative_position_bias_table, std=1.0)
    size = (48, 48)  # 9 windows per image: blocks of 4 straddle the images with different masks
    qkv = torch.randn(2, 48 * 48, 72)
    rpi = relative_position_index(16)
    mask = shift_window_mask(*size, 16)
    for shift in (0, 8):
        expected = plain(mixer, qkv, size, shift, rpi, mask)
        assert torch.equal(fast(mixer, qkv, size, shift, rpi, mask), expected)
        with torch.no_grad():
            assert torch.equal(mixer(qkv, size, shift, rpi, mask), expected)


@pytest.mark.parametrize("n", [256, 300, 100])  # exact groups, padded last group, a single short group
def test_category_attention_inference_path_is_bitwise_the_plain_path(n):
    torch.manual_seed(0)
    mixer = CategoryAttention(24, 2, 128)
    with torch.no_grad():
        mixer.logit_scale.fill_(5.0)  # above ln 100: the clamp acts
    qkv, sim = torch.randn(2, n, 72), torch.rand(2, n, 16)
    with torch.enable_grad():
        expected = mixer(qkv.requires_grad_(), sim).detach()
    assert torch.equal(fast(mixer, qkv.detach(), sim), expected)


def perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float parameter moved off its structured init (as the reference test does)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return net


@pytest.mark.parametrize("make", [
    lambda: ATDLight(scale=2),
    lambda: ATD(scale=2, embed_dim=24, depths=(2, 2), num_heads=(3, 3), num_tokens=16, reducted_dim=4,
                category_size=64, upsampler="pixelshuffle"),
], ids=["atd_light", "atd_small"])
@pytest.mark.parametrize("shape", [(1, 3, 40, 36), (2, 3, 19, 27)])
def test_network_inference_path_is_bitwise_the_plain_path(make, shape):
    torch.manual_seed(0)
    net = perturbed(make()).eval()
    x = torch.rand(shape)
    with torch.enable_grad():  # parameters require grad: every mixer takes its plain path
        expected = net(x).detach()
    assert torch.equal(fast(net, x), expected)
    assert torch.equal(fast(net, x), expected)  # again, from the caches


def test_caches_follow_weights_sizes_and_dtype():
    torch.manual_seed(0)
    net = perturbed(ATDLight(scale=2)).eval()
    a, b = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 36, 20)
    fast(net, a)
    fast(net, b)  # another size: another mask
    with torch.enable_grad():
        assert torch.equal(fast(net, a), net(a).detach())

    # a weight change (load_state_dict copies in place) reaches the cached position bias
    table = "layers.0.residual_group.layers.1.attn_win.relative_position_bias_table"
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd[table] = sd[table] + 0.5
    before = fast(net, a)
    net.load_state_dict(sd)
    after = fast(net, a)
    assert not torch.equal(after, before)
    fresh = perturbed(ATDLight(scale=2)).eval()
    fresh.load_state_dict(sd)
    assert torch.equal(after, fast(fresh, a))

    # .to() drops the caches: float64 runs on float64 bias and mask
    net64 = net.to(torch.float64)
    y64 = fast(net64, a.double())
    assert y64.dtype == torch.float64
    with torch.enable_grad():
        assert torch.equal(y64, net64(a.double()).detach())


def test_caches_made_in_inference_mode_serve_a_training_forward():
    torch.manual_seed(0)
    net = ATDLight(scale=2).eval()
    x = torch.rand(1, 3, 20, 24)
    fast(net, x)  # fills the bias, mask and window-order caches under inference_mode
    net.train()
    net(x).mean().backward()  # plain path with autograd: nothing cached may be an inference tensor
    grad = net.layers[0].residual_group.layers[1].attn_win.relative_position_bias_table.grad
    assert grad is not None and grad.abs().sum() > 0
