"""CAMixer-ATD-light: ATD-light whose window attention CAMixer routes (spec papers.md §2.11)."""

import logging

import cv2
import numpy as np
import pytest
import torch
from conftest import photo

import detailsr as ds
from detailsr.errors import CheckpointError
from detailsr.flops import executed_macs
from detailsr.models import camixer_atd
from detailsr.models.atd import ATDLight, WindowAttention, relative_position_index, shift_window_mask
from detailsr.models.camixer import deterministic_k
from detailsr.models.camixer_atd import CAMixerATDLight, RoutedWindowAttention
from detailsr.models.record import mixer_records

# A tiny ATD-light: 2 groups x 2 layers, 8x8 windows (a 32x48 input has 4 x 6 = 24 windows).
TINY = dict(embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=8, category_size=32, num_tokens=8,
            reducted_dim=4)
LAYERS = 4
WINDOWS = 24
ATD_LIGHT_PARAMS = {2: 753_204, 3: 759_699, 4: 768_792}  # arch-atd.md §8
# per layer (§2.11): in_conv + LN 715, out_mask 4,146, CA 672, SA 118, conv_sptial 960; global predictor 538
ROUTING_PARAMS = 24 * (715 + 4_146 + 672 + 118 + 960) + (48 * 8 + 8) + (8 * 2 * 9 + 2)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


def chelsea(h=32, w=48) -> torch.Tensor:
    """A crop of the cat: fur and a smooth background (1 x 3 x h x w in [0, 1])."""
    rgb = cv2.imread(str(photo("chelsea")), cv2.IMREAD_COLOR)[40 : 40 + h, 90 : 90 + w, ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


def atd_light_weights(seed=0, **config) -> dict:
    """A tiny ATD-light's seeded init with every float tensor moved off its structured init."""
    torch.manual_seed(seed)
    sd = ATDLight(scale=2, **{**TINY, **config}).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in sd.items()}


def tiny(seed=0, **flags) -> CAMixerATDLight:
    """A tiny CAMixer-ATD-light with every float tensor moved off its init (the routing is content-aware)."""
    torch.manual_seed(seed)
    net = CAMixerATDLight(scale=2, **TINY, **flags)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


def set_dense_reference(net: CAMixerATDLight, dense: bool) -> None:
    for m in net.routed_attention():
        m.dense_reference = dense


# --------------------------------------------------------------------------------------------------
# Structure: parameters and keys.


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parameter_count_is_atd_light_plus_the_routing(scale):
    net = CAMixerATDLight(scale=scale)
    assert ROUTING_PARAMS == 159_202
    assert sum(p.numel() for p in net.parameters()) == ATD_LIGHT_PARAMS[scale] + ROUTING_PARAMS
    if scale == 4:
        assert sum(p.numel() for p in net.parameters()) == 927_994  # the spec's "≈ 928K"
    # deformable adds the offsets head: c4 -> c8 -> 2 convs (13*6+6 + 6*2+2 = 98) per layer
    deformable = CAMixerATDLight(scale=scale, deformable=True)
    assert sum(p.numel() for p in deformable.parameters()) == ATD_LIGHT_PARAMS[scale] + ROUTING_PARAMS + 24 * 98


def test_keys_are_atd_light_keys_plus_the_routing_keys():
    torch.manual_seed(0)
    net, base = CAMixerATDLight(scale=4), ATDLight(scale=4)
    keys, base_keys, new = set(net.state_dict()), set(base.state_dict()), net.new_parameter_keys()
    assert keys == base_keys | set(new) and not base_keys & set(new)
    assert len(new) == 24 * 16 + 4  # route: in_conv.0/1, out_mask.0/2, out_CA.1, out_SA.0; conv_sptial.0/1
    assert all(k.startswith("global_predictor.") or ".attn_win.route." in k or ".attn_win.conv_sptial." in k
               for k in new)
    assert not any("out_offsets" in k for k in keys)  # deformable=False: the offsets head is omitted
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert all(shapes[k] == v.shape for k, v in base.state_dict().items())


def test_flags():
    assert all(m.shift_size == 0 for m in CAMixerATDLight(**TINY).modules() if hasattr(m, "shift_size"))
    shifted = [m.shift_size for m in CAMixerATDLight(shift=True, **TINY).modules() if hasattr(m, "shift_size")]
    assert shifted == [0, 4, 0, 4]  # ATD's alternate half-window shift
    net = CAMixerATDLight(ratio=0.25, **TINY)
    assert net.ratio == 0.25 and all(m.ratio == 0.25 for m in net.routed_attention())
    assert net.config["shift"] is False and net.config["deformable"] is False


# --------------------------------------------------------------------------------------------------
# Loading: derived from ATD-light, and its own state dicts.


def test_derived_from_atd_light_loads_the_shared_keys_and_reports_the_new_ones(caplog):
    sd = atd_light_weights()
    torch.manual_seed(7)
    reference = CAMixerATDLight(scale=2, **{**TINY, "category_size": 128}).state_dict()  # the loader's build
    torch.manual_seed(7)
    with caplog.at_level(logging.WARNING, logger="detailsr.models.registry"):
        net = ds.load_model(sd, arch="camixer-atd-light")
    assert net.arch == "camixer_atd_light" and not net.training
    new = net.new_parameter_keys()
    assert net.initialised_keys == new and len(new) == LAYERS * 16 + 4
    assert f"{len(new)} keys of camixer_atd_light" in caplog.text
    loaded = net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())  # every ATD-light key, exactly
    assert all(torch.equal(loaded[k], reference[k]) for k in new)  # the routing: at its initialisation
    # Pure-Pass stays strict, with nothing to initialise
    assert ds.load_model(sd, arch="pp-atd-light").initialised_keys == []


def test_derived_loading_is_strict_about_everything_else():
    sd = atd_light_weights()
    with pytest.raises(CheckpointError, match="missing"):
        ds.load_model({k: v for k, v in sd.items() if k != "norm.weight"}, arch="camixer-atd-light")
    with pytest.raises(CheckpointError, match="unexpected"):
        ds.load_model({**sd, "layers.0.extra.weight": torch.zeros(1)}, arch="camixer-atd-light")
    assert ds.load_model(sd).arch == "atd_light"  # detection still finds ATD-light for its own weights


@pytest.mark.parametrize("deformable", [False, True])
def test_own_state_dict_is_detected_and_loads_strictly(deformable):
    net = tiny(deformable=deformable)
    sd = net.state_dict()
    arch, config = camixer_atd.detect(sd)
    assert arch == "camixer_atd_light" and config["deformable"] is deformable
    assert camixer_atd.detect(atd_light_weights()) is None
    again = ds.load_model(sd, category_size=TINY["category_size"], ratio=net.ratio)  # loads take "auto" else
    assert again.arch == "camixer_atd_light" and not hasattr(again, "initialised_keys")
    x = chelsea()
    with torch.no_grad():
        assert torch.equal(again(x), net(x))


# --------------------------------------------------------------------------------------------------
# Routing: the gather path against the dense oracle.


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
@torch.no_grad()
def test_gather_path_equals_the_dense_oracle(ratio, shift):
    net = tiny(shift=shift, ratio=ratio)
    x = chelsea()
    y = net(x)
    keeps = [r.keep for r in mixer_records(net, routed_only=True)]
    set_dense_reference(net, True)
    y_dense = net(x)
    assert (y - y_dense).abs().max() <= 1e-5
    assert all(torch.equal(a, r.keep) for a, r in zip(keeps, mixer_records(net, routed_only=True), strict=True))
    k = deterministic_k(WINDOWS, ratio)
    assert [tuple(keep.shape) for keep in keeps] == [(1, k)] * LAYERS


@torch.no_grad()
def test_deformable_gather_path_equals_the_dense_oracle():
    net = tiny(deformable=True, ratio=0.5)
    x = chelsea(30, 45)  # padded to 32 x 48 inside the network
    y = net(x)
    set_dense_reference(net, True)
    assert (y - net(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("shift", [0, 4])
@torch.no_grad()
def test_all_windows_and_no_refinement_is_atd_window_attention(shift):
    """gamma = 1 attends every window; with the refinement convs at zero the routed branch is then
    ATD's plain (S)W-MSA on the same table and proj, for each image of a batch."""
    torch.manual_seed(0)
    routed = RoutedWindowAttention(12, 8, 2, ratio=1.0).eval()
    plain = WindowAttention(12, 8, 2)
    plain.load_state_dict({k: v for k, v in routed.state_dict().items() if k in plain.state_dict()})
    for p in routed.conv_sptial.parameters():
        p.zero_()
    h, w = 24, 32
    qkv, cond = torch.randn(2, h * w, 36), torch.randn(2, 2, h, w)
    rpi, mask = relative_position_index(8), shift_window_mask(h, w, 8)
    out = routed(qkv, (h, w), shift, rpi, mask, cond)
    assert (out - plain(qkv, (h, w), shift, rpi, mask)).abs().max() <= 1e-6
    assert torch.equal(routed.record.keep.sort(1).values, torch.arange(12).expand(2, -1))
    with pytest.raises(ValueError, match="global condition"):
        routed(qkv, (h, w), shift, rpi, mask)
    with pytest.raises(ValueError, match="no routing condition"):
        plain(qkv, (h, w), shift, rpi, mask, cond)


@torch.no_grad()
def test_shifted_network_at_full_ratio_without_refinement_is_atd_light():
    """Whole network: shift on, gamma = 1, refinement convs at zero -> ATD-light's output with the same
    weights (the global condition and the predictor then change nothing)."""
    sd = atd_light_weights()
    atd = ds.load_model(sd)
    net = ds.load_model(sd, arch="camixer-atd-light", shift=True, ratio=1.0)
    for m in net.routed_attention():
        for p in m.conv_sptial.parameters():
            p.zero_()
    x = chelsea()
    assert (net(x) - atd(x)).abs().max() <= 1e-5


# --------------------------------------------------------------------------------------------------
# Records, routing maps, executed work.


@pytest.mark.parametrize("shift", [False, True])
def test_records_and_routing_maps(shift):
    net = tiny(shift=shift, ratio=0.5)
    x = chelsea()
    share = ds.routing_maps(net, x)
    assert share.shape == (32, 48) and 0 <= share.min() and share.max() <= 1
    assert share.mean() == pytest.approx(0.5)  # 12 of 24 windows in every layer
    assert len(set(np.round(share.ravel() * LAYERS, 6))) > 1  # the windows differ between places
    records = mixer_records(net, routed_only=True)
    assert len(records) == LAYERS
    assert [r.shift for r in records] == ([0, 4, 0, 4] if shift else [0] * LAYERS)
    for r in records:
        assert r.grid == (4, 6) and r.window == 8 and tuple(r.keep.shape) == (1, 12)
        assert r.work.queries == 12 * 64 and r.work.groups == 12


def test_executed_work_falls_with_the_ratio():
    net = tiny()
    x = chelsea()
    macs, recorded = [], []
    for ratio in (0.0, 0.3, 0.5, 1.0):
        net.set_ratio(ratio)
        macs.append(executed_macs(net, x))
        recorded.append(sum(r.work.macs for r in mixer_records(net, routed_only=True)))
    assert macs == sorted(macs) and len(set(macs)) == 4
    # what the op counter saw change is exactly the attention the records say was (not) executed
    assert [m - macs[0] for m in macs] == [r - recorded[0] for r in recorded]
    per_window = LAYERS * 2 * 64 * 64 * TINY["embed_dim"]  # QK^T and AV of one 64-token window, all layers
    assert macs[-1] - macs[0] == WINDOWS * per_window


# --------------------------------------------------------------------------------------------------
# Training.


def test_training_returns_the_image_the_ratio_loss_comes_from_the_records_and_backpropagates():
    net = tiny(ratio=0.5).train()
    torch.manual_seed(3)
    y = net(chelsea())
    loss = net.auxiliary_losses()["ratio"]
    assert y.shape == (1, 3, 64, 96) and loss.dim() == 0
    fractions = torch.cat([m.record.hard_fraction for m in net.routed_attention()], dim=1)
    assert fractions.shape == (1, LAYERS) and set(fractions.unique().mul(WINDOWS).round().tolist()) <= set(
        range(WINDOWS + 1))
    assert torch.allclose(loss, 2 * 0.5 * (fractions.mean() - 0.5) ** 2)
    (y.abs().mean() + loss).backward()
    first = net.layers[0].residual_group.layers[0].attn_win
    for p in (net.global_predictor[0].weight, first.route.out_mask[0].weight, first.route.out_SA[0].weight,
              first.conv_sptial[0].weight, first.relative_position_bias_table, net.conv_first.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(m.record.keep is None for m in net.routed_attention())  # no eval routing in training
