"""Parameters, nominal FLOPs in the papers' convention, executed FLOPs following the routing.

The real-image count uses the embedded default model on a crop of a project photo.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import photo

import detailsr
from detailsr.flops import cost_report, count_parameters, executed_macs, nominal_flops
from detailsr.imageio import read_image, to_tensor
from detailsr.models.camixersr import CAMixerSR


@pytest.mark.parametrize("n_feats, expected", [
    # spec arch-camixer.md section 9: the official counter, 32x32 LR input, x4, ratios 1 / 0.5 / 0.25 / 0
    (36, (895.3, 653.5, 532.5, 411.6)),
    (48, (1379.6, 1033.6, 860.6, 687.6)),
    (60, (1957.2, 1495.1, 1264.1, 1033.1)),
])
def test_nominal_flops_reproduce_the_official_counter(n_feats, expected):
    net = CAMixerSR(n_feats=n_feats)
    got = [nominal_flops(net, 32, 32, r) / 1e6 for r in (1, 0.5, 0.25, 0)]
    assert got == pytest.approx(expected, abs=0.05)
    # the paper's table 2 (S: 894M / 652M / 532M / 410M) is 1-2M below the faithful count
    if n_feats == 36:
        assert all(0 <= g - paper < 2.0 for g, paper in zip(got, (894, 652, 532, 410), strict=True))


# The predictor's offset convs (c4 = 10 -> c8 = 5 -> 2 channels for S) cost this many MACs per pixel;
# the fast inference path runs them only in attended windows, the modules everywhere.
OFFSET_MACS_PER_PIXEL = 10 * 5 + 5 * 2


def test_executed_count_matches_an_op_level_count_of_the_dense_network():
    # spec section 9: torch's op counter on S at 32x32 gives 1272.1M FLOPs at ratio 1, 410.9M at 0
    net = CAMixerSR(n_feats=36).eval()
    x = torch.rand(1, 3, 32, 32)
    net.fast_path = False  # the module path computes what the official code computes
    for ratio, expected in ((1.0, 1272.1), (0.0, 410.9)):
        assert cost_report(net, x, ratio).executed_flops / 1e6 == pytest.approx(expected, abs=0.05)
    net.fast_path = True  # the same, less the offsets of the windows that do not attend
    skipped = 2 * OFFSET_MACS_PER_PIXEL * 32 * 32 * 20 / 1e6
    for ratio, expected in ((1.0, 1272.1), (0.0, 410.9 - skipped)):
        assert cost_report(net, x, ratio).executed_flops / 1e6 == pytest.approx(expected, abs=0.05)


def test_executed_flops_of_a_real_image_lie_between_ratio_0_and_1():
    net = detailsr.load_model()  # the embedded CAMixerSR-S x4
    pixels = read_image(photo("chelsea")).pixels[40:104, 60:124]  # 64x64: the cat's eye and fur
    x = to_tensor(pixels)
    assert x.shape == (1, 3, 64, 64)
    low, mid, high = (cost_report(net, x, r).executed_macs for r in (0.0, 0.5, 1.0))
    assert low < mid < high
    # each attended 16x16 window costs 2 matmuls of 256 x 256 x C plus its q/k projections and,
    # in the fast path, the predictor's offsets of its 256 pixels
    per_window = 2 * 256 * 256 * 36 + 2 * 256 * 36 * 36 + 256 * OFFSET_MACS_PER_PIXEL
    assert high - low == 20 * 16 * per_window  # 20 blocks, 64x64 LR = 16 windows
    assert mid - low == 20 * 8 * per_window


def test_sdpa_on_cpu_is_counted():
    q = torch.rand(2, 4, 64, 16)
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

    class Attend(torch.nn.Module):
        def forward(self, x):
            return F.scaled_dot_product_attention(x, x, x)

    expected = 2 * 2 * 4 * 64 * 64 * 16  # two matmuls, MACs
    from torch.utils.flop_counter import FlopCounterMode

    from detailsr.flops import _custom_counts

    with FlopCounterMode(display=False, custom_mapping=_custom_counts()) as counter:
        Attend()(q)
        if flash is not None:
            flash(q, q, q)
    assert counter.get_total_flops() // 2 == expected * (2 if flash is not None else 1)


def test_parameters():
    assert count_parameters(CAMixerSR(n_feats=36)) == 351_238


def test_executed_count_through_upscale_padding():
    net = CAMixerSR(n_feats=36).eval()
    net.set_ratio(1.0)
    # 20x20 is padded to 32x32 inside the network: the count is that of the padded size
    assert executed_macs(net, torch.rand(1, 3, 20, 20)) * 2 / 1e6 == pytest.approx(1272.1, abs=0.05 * 1272 / 100)


def test_onednn_inference_ops_are_counted(monkeypatch):
    """ESC's 1x1 convs run as oneDNN GEMMs and its ConvFFN convs with a fused GELU: the executed
    count is the one of the standard ops."""
    from detailsr.models import layers
    from detailsr.models.registry import build_untrained

    net = build_untrained("esc-light-x4").eval()
    x = to_tensor(read_image(photo("chelsea")).pixels[40:104, 60:124])
    fused = executed_macs(net, x)
    monkeypatch.setattr(layers, "_ONEDNN", False)
    assert fused == executed_macs(net, x)
