"""ESC, ESC-light, ESC-XL, ESC-FP and ESC-Real against the spec (../shared/spec/arch-esc.md).

No official weights are available: networks are randomly initialised with fixed seeds, with
non-trivial values everywhere (the official init zeroes the dynamic-kernel head and nearly zeroes
the bias table, which would hide mistakes). Inputs are tiny; XL runs in one slow test only.
The last section compares every released variant and scale with outputs of the official code stored
in tests/data/esc_reference.safetensors (see `_compare_to_official` for how they were made).
"""

import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

import detailsr
from detailsr.errors import CheckpointError, ConfigError
from detailsr.inference import forward_any_size
from detailsr.models import camixersr, esc, zoo
from detailsr.models.esc import (
    ESC,
    ESCFP,
    ConvAttn,
    DecomposedConvAttn,
    ESCReal,
    WindowAttention,
    convert_output_layer,
    d4_symmetrize,
    relative_position_index,
)
from detailsr.models.layers import PointwiseConv, reflect_pad

pytestmark = pytest.mark.usefixtures("one_thread")


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial random weights: a visible bias table, LN affine away from identity, live dynamic kernels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "relative_position_bias" in name:
                p.copy_(noise * 0.5)
            elif re.search(r"(^|\.)ln\w*\.weight$|lns\.\d+\.weight$", name):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(noise * 0.05)
    return net


def small_esc(**kw) -> ESC:
    """A shrunk ESC (window 8) for fine-grained checks; same code paths as the released models."""
    cfg = dict(dim=16, pdim=8, kernel_size=5, n_blocks=2, conv_blocks=2, window_size=8, num_heads=2,
               exp_ratio=1.25, use_ln=False, scale=2)
    cfg.update(kw)
    return randomise(ESC(**cfg)).eval()


# --------------------------------------------------------------------------------------------------
# Spec section 1 (parameter counts) and architectures.md.

COUNTS = [
    ("esc", 2, 946_728), ("esc", 3, 955_383), ("esc", 4, 967_500),
    ("esc-light", 2, 603_600), ("esc-light", 3, 612_255), ("esc-light", 4, 624_372),
    ("esc-fp", 2, 523_675), ("esc-fp", 3, 530_170), ("esc-fp", 4, 539_263),
    ("esc-xl", 2, 12_455_916), ("esc-xl", 3, 12_481_851), ("esc-xl", 4, 12_518_160),
    ("esc-real", 4, 2_265_307),
]


@pytest.mark.parametrize("variant, scale, count", COUNTS)
def test_parameter_counts_equal_the_published_ones(variant, scale, count):
    net = esc.create(variant, scale)
    assert n_params(net) == count
    assert list(net.buffers()) == []  # spec: there are no buffers in any of these
    assert net.scale == scale and net.variant == variant


# --------------------------------------------------------------------------------------------------
# Spec section 10: the key lists, transcribed from the spec text (templates; {i} block, {j} layer).

SPEC_ESC = """
plk_filter (P, P, 13, 13)
proj.weight (D, 3, 3, 3)
proj.bias (D,)
blocks.{i}.ln_proj.weight (D,)
blocks.{i}.ln_proj.bias (D,)
blocks.{i}.proj.proj.weight (Hf, D, 1, 1)
blocks.{i}.proj.proj.bias (Hf,)
blocks.{i}.proj.dwc.weight (Hf, 1, 3, 3)
blocks.{i}.proj.dwc.bias (Hf,)
blocks.{i}.proj.aggr.weight (D, Hf, 1, 1)
blocks.{i}.proj.aggr.bias (D,)
blocks.{i}.ln_attn.weight (D,)
blocks.{i}.ln_attn.bias (D,)
blocks.{i}.attn.relative_position_bias (n, T)
blocks.{i}.attn.to_qkv.weight (3*D, D, 1, 1)
blocks.{i}.attn.to_qkv.bias (3*D,)
blocks.{i}.attn.to_out.weight (D, D, 1, 1)
blocks.{i}.attn.to_out.bias (D,)
XL blocks.{i}.lns.{j}.weight (D,)
XL blocks.{i}.lns.{j}.bias (D,)
blocks.{i}.pconvs.{j}.plk.dwc_proj.1.weight (Hd, P, 1, 1)
blocks.{i}.pconvs.{j}.plk.dwc_proj.1.bias (Hd,)
blocks.{i}.pconvs.{j}.plk.dwc_proj.3.weight (9*P, Hd, 1, 1)
blocks.{i}.pconvs.{j}.plk.dwc_proj.3.bias (9*P,)
blocks.{i}.pconvs.{j}.aggr.weight (D, D, 1, 1)
blocks.{i}.pconvs.{j}.aggr.bias (D,)
blocks.{i}.convffns.{j}.proj.weight (He, D, 1, 1)
blocks.{i}.convffns.{j}.proj.bias (He,)
blocks.{i}.convffns.{j}.dwc.weight (He, 1, 3, 3)
blocks.{i}.convffns.{j}.dwc.bias (He,)
blocks.{i}.convffns.{j}.aggr.weight (D, He, 1, 1)
blocks.{i}.convffns.{j}.aggr.bias (D,)
blocks.{i}.ln_out.weight (D,)
blocks.{i}.ln_out.bias (D,)
blocks.{i}.conv_out.weight (D, D, 3, 3)
blocks.{i}.conv_out.bias (D,)
last.weight (D, D, 3, 3)
last.bias (D,)
to_img.weight (3*s*s, D, 3, 3)
to_img.bias (3*s*s,)
"""

SPEC_FP = """
lk_channel (16, 16, 1, 1)
lk_spatial (16, 1, 13, 13)
proj.weight (48, 3, 3, 3)
proj.bias (48,)
blocks.{i}.ln_proj.weight (48,)
blocks.{i}.ln_proj.bias (48,)
blocks.{i}.proj.proj.weight (72, 48, 1, 1)
blocks.{i}.proj.proj.bias (72,)
blocks.{i}.proj.dwc.weight (72, 1, 3, 3)
blocks.{i}.proj.dwc.bias (72,)
blocks.{i}.proj.aggr.weight (48, 72, 1, 1)
blocks.{i}.proj.aggr.bias (48,)
blocks.{i}.ln_attn.weight (48,)
blocks.{i}.ln_attn.bias (48,)
blocks.{i}.attn.relative_position_bias (3, 3969)
blocks.{i}.attn.to_qkv.weight (144, 48, 1, 1)
blocks.{i}.attn.to_qkv.bias (144,)
blocks.{i}.attn.to_out.weight (48, 48, 1, 1)
blocks.{i}.attn.to_out.bias (48,)
blocks.{i}.lns.{j}.weight (48,)
blocks.{i}.lns.{j}.bias (48,)
blocks.{i}.pconvs.{j}.plk.proj.1.weight (4, 16, 1, 1)
blocks.{i}.pconvs.{j}.plk.proj.1.bias (4,)
blocks.{i}.pconvs.{j}.plk.proj.3.weight (144, 4, 1, 1)
blocks.{i}.pconvs.{j}.plk.proj.3.bias (144,)
blocks.{i}.pconvs.{j}.aggr.weight (48, 48, 1, 1)
blocks.{i}.pconvs.{j}.aggr.bias (48,)
blocks.{i}.convffns.{j}.proj.weight (60, 48, 1, 1)
blocks.{i}.convffns.{j}.proj.bias (60,)
blocks.{i}.convffns.{j}.dwc.weight (60, 1, 3, 3)
blocks.{i}.convffns.{j}.dwc.bias (60,)
blocks.{i}.convffns.{j}.aggr.weight (48, 60, 1, 1)
blocks.{i}.convffns.{j}.aggr.bias (48,)
blocks.{i}.ln_out.weight (48,)
blocks.{i}.ln_out.bias (48,)
blocks.{i}.conv_out.weight (48, 48, 3, 3)
blocks.{i}.conv_out.bias (48,)
ln_last.weight (48,)
ln_last.bias (48,)
last.weight (48, 48, 3, 3)
last.bias (48,)
to_img.weight (3*s*s, 48, 3, 3)
to_img.bias (3*s*s,)
"""

# 10.3: root keys around blocks that are 10.1's with `lns.j` present and He = 128.
SPEC_REAL_HEAD = """
plk_filter (16, 16, 13, 13)
proj.weight (64, 3, 3, 3)
proj.bias (64,)
"""
SPEC_REAL_TAIL = """
last.weight (64, 64, 3, 3)
last.bias (64,)
to_img.1.weight (64, 64, 3, 3)
to_img.1.bias (64,)
to_img.4.weight (64, 64, 3, 3)
to_img.4.bias (64,)
to_img.6.weight (64, 64, 3, 3)
to_img.6.bias (64,)
to_img.8.weight (3, 64, 3, 3)
to_img.8.bias (3,)
skip.0.weight (128, 3, 1, 1)
skip.0.bias (128,)
skip.1.weight (128, 1, 7, 7)
skip.1.bias (128,)
skip.3.weight (64, 128, 1, 1)
skip.3.bias (64,)
"""

# The table of 10.1 (and the ESC-Real line of 10.3): D P Hf He Hd n T blocks.
SPEC_TABLE = {
    "esc": dict(D=64, P=16, Hf=128, He=80, Hd=8, n=4, T=3969, blocks=5, XL=False),
    "esc-light": dict(D=64, P=16, Hf=128, He=80, Hd=8, n=4, T=3969, blocks=3, XL=False),
    "esc-xl": dict(D=192, P=48, Hf=384, He=240, Hd=24, n=12, T=9025, blocks=8, XL=True),
    "esc-real": dict(D=64, P=16, Hf=128, He=128, Hd=8, n=4, T=3969, blocks=10, XL=True),
}
SPEC_TOTAL_KEYS = {"esc": 402, "esc-light": 244, "esc-xl": 719, "esc-fp": 455, "esc-real": 909}


def parse(template: str, values: dict) -> tuple[list, list, list]:
    """The spec lines before the first block line, the block lines, and the lines after them."""
    lines = []
    for line in template.strip().splitlines():
        if line.startswith("XL "):
            if not values.get("XL"):
                continue
            line = line[3:]
        key, shape = line.split(" ", 1)
        lines.append((key, shape))
    in_block = [i for i, (key, _) in enumerate(lines) if "{i}" in key]
    if not in_block:
        return lines, [], []
    return lines[: in_block[0]], lines[in_block[0] : in_block[-1] + 1], lines[in_block[-1] + 1 :]


def expand(head, block, tail, values: dict, n_blocks: int, conv_blocks: int = 5) -> list[tuple[str, tuple]]:
    """(key, shape) in state-dict order: per block, a run of `.{j}.` lines of one ModuleList is j-major."""
    out: list[tuple[str, tuple]] = []

    def emit(key, shape, i=None, j=None):
        out.append((key.format(i=i, j=j), tuple(eval(shape, {}, values))))  # spec text, e.g. "(3*s*s, D, 3, 3)"

    for key, shape in head:
        emit(key, shape)
    for i in range(n_blocks):
        k = 0
        while k < len(block):
            key, shape = block[k]
            if "{j}" not in key:
                emit(key, shape, i)
                k += 1
                continue
            group = key.split("{j}")[0]
            run = []
            while k < len(block) and "{j}" in block[k][0] and block[k][0].split("{j}")[0] == group:
                run.append(block[k])
                k += 1
            for j in range(conv_blocks):
                for key_j, shape_j in run:
                    emit(key_j, shape_j, i, j)
    for key, shape in tail:
        emit(key, shape)
    return out


def spec_keys(variant: str, scale: int) -> list[tuple[str, tuple]]:
    if variant == "esc-fp":
        values = {"s": scale}
        return expand(*parse(SPEC_FP, values), values, 5)
    values = {**SPEC_TABLE[variant], "s": scale}
    head, block, tail = parse(SPEC_ESC, values)
    if variant == "esc-real":
        head, tail = parse(SPEC_REAL_HEAD, values)[0], parse(SPEC_REAL_TAIL, values)[0]
    return expand(head, block, tail, values, values["blocks"])


def official_state_dict(variant: str, scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the official layout, built from the spec's key list alone."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in spec_keys(variant, scale)}


@pytest.mark.parametrize("variant, scale", [(v, s) for v, s, _ in COUNTS])
def test_state_dict_keys_and_shapes_equal_the_spec_lists(variant, scale):
    expected = spec_keys(variant, scale)
    assert len(expected) == SPEC_TOTAL_KEYS[variant]  # the transcription itself agrees with the spec's totals
    net = esc.create(variant, scale)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == expected  # names, shapes and the official order


def test_spec_example_output_shapes():
    for scale, rows in ((4, 48), (2, 12), (3, 27)):
        assert esc.create("esc", scale).to_img.weight.shape == (rows, 64, 3, 3)


# --------------------------------------------------------------------------------------------------
# Detection and strict loading.

EXPECTED_CONFIG = {
    "esc": ("esc", dict(dim=64, pdim=16, kernel_size=13, n_blocks=5, conv_blocks=5, window_size=32, num_heads=4,
                        exp_ratio=1.25, use_ln=False)),
    "esc-light": ("esc", dict(dim=64, pdim=16, kernel_size=13, n_blocks=3, conv_blocks=5, window_size=32,
                              num_heads=4, exp_ratio=1.25, use_ln=False)),
    "esc-xl": ("esc", dict(dim=192, pdim=48, kernel_size=13, n_blocks=8, conv_blocks=5, window_size=48,
                           num_heads=12, exp_ratio=1.25, use_ln=True)),
    "esc-fp": ("esc_fp", dict(dim=48, pdim=16, kernel_size=13, n_blocks=5, conv_blocks=5, window_size=32,
                              num_heads=3, exp_ratio=1.25)),
    "esc-real": ("esc_real", dict(dim=64, pdim=16, kernel_size=13, n_blocks=10, conv_blocks=5, window_size=32,
                                  num_heads=4, exp_ratio=2.0)),
}


@pytest.mark.parametrize("variant, scale", [(v, s) for v, s, _ in COUNTS])
def test_official_layout_is_detected_and_loads_strictly(variant, scale):
    sd = official_state_dict(variant, scale)
    arch, hyper = EXPECTED_CONFIG[variant]
    found = esc.detect(sd)
    assert found == (arch, {**hyper, "scale": scale})
    assert camixersr.detect(sd) is None  # CAMixerSR's detector must not claim ESC weights
    net = esc.build(*found)
    net.load_state_dict(sd, strict=True)
    assert net.variant == variant
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k  # plk_filter is stored raw, as loaded


@pytest.mark.parametrize("variant, scale", [("esc-light", 2), ("esc-fp", 3), ("esc-real", 4), ("esc", 4)])
def test_load_model_from_an_official_state_dict(variant, scale):
    sd = official_state_dict(variant, scale, seed=1)
    wrapped = {"params": {k: v + 1 for k, v in sd.items()}, "params_ema": {"module." + k: v for k, v in sd.items()}}
    net = detailsr.load_model(wrapped, attn_type="naive")
    arch, hyper = EXPECTED_CONFIG[variant]
    assert (net.arch, net.config, net.scale) == (arch, {**hyper, "scale": scale}, scale)
    assert not net.training
    assert all(m.attn_type == "naive" for m in net.modules() if isinstance(m, WindowAttention))
    assert torch.equal(net.state_dict()["proj.weight"], sd["proj.weight"])  # params_ema, not params
    assert not net.tile_safe and net.pipeline_multiple == 32 and net.min_size == 1


def test_camixersr_state_dicts_are_not_esc():
    sd = camixersr.CAMixerSR(n_feats=12, n_block=(1, 1), scale=2).state_dict()
    assert esc.detect(sd) is None
    assert camixersr.detect(sd)[0] == "camixersr"


def test_flashbias_checkpoints_are_refused_clearly():
    sd = official_state_dict("esc-light", 2)
    for i in range(3):
        table = sd.pop(f"blocks.{i}.attn.relative_position_bias")
        sd[f"blocks.{i}.attn.flashbias_q"] = torch.zeros(table.shape[0], 1024, 48)
        sd[f"blocks.{i}.attn.flashbias_k"] = torch.zeros(table.shape[0], 1024, 48)
    with pytest.raises(CheckpointError, match="FlashBias"):
        detailsr.load_model(sd)


def test_the_early_three_conv_esc_real_upsampler_is_refused_clearly():
    """The March 2025 official esc_real_arch.py had to_img = [up, conv, act, up, conv, act, conv->3]."""
    sd = ESCReal(dim=8, pdim=4, n_blocks=1, conv_blocks=1, window_size=8, num_heads=2).state_dict()
    sd["to_img.6.weight"], sd["to_img.6.bias"] = sd.pop("to_img.8.weight"), sd.pop("to_img.8.bias")
    with pytest.raises(CheckpointError, match="3-conv upsampler"):
        detailsr.load_model(sd)


def test_missing_weights_fail_strict_loading():
    sd = official_state_dict("esc-light", 2)
    del sd["blocks.1.pconvs.2.aggr.weight"]
    with pytest.raises(CheckpointError, match="missing"):
        detailsr.load_model(sd)


# --------------------------------------------------------------------------------------------------
# Window attention (3.2) against an explicit reference written from the spec.


def test_relative_position_index_is_key_minus_query():
    ws = 3
    index = relative_position_index(ws)
    for qr in range(ws):
        for qc in range(ws):
            for kr in range(ws):
                for kc in range(ws):
                    expected = (kr - qr + ws - 1) * (2 * ws - 1) + (kc - qc + ws - 1)
                    assert index[qr * ws + qc, kr * ws + kc] == expected
    assert relative_position_index(32).shape == (1024, 1024)
    assert relative_position_index(32).max() == 63 * 63 - 1


def reference_window_attention(m: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Spec 3.2 step by step with python loops over windows, heads and token pairs."""
    b, c, h, w = x.shape
    ws, heads, d = m.window_size, m.num_heads, m.head_dim
    xp = F.pad(x, (0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws), mode="reflect")
    qkv = m.to_qkv(xp)
    out = torch.zeros(b, c, *xp.shape[-2:])
    table = m.relative_position_bias
    bias = torch.empty(heads, ws * ws, ws * ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            qr, qc, kr, kc = i // ws, i % ws, j // ws, j % ws
            bias[:, i, j] = table[:, (kr - qr + ws - 1) * (2 * ws - 1) + (kc - qc + ws - 1)]
    for bi in range(b):
        for wr in range(xp.shape[2] // ws):
            for wc in range(xp.shape[3] // ws):
                win = qkv[bi, :, wr * ws:(wr + 1) * ws, wc * ws:(wc + 1) * ws].reshape(3 * c, ws * ws)
                for hd in range(heads):
                    q = win[0 * c + hd * d: 0 * c + (hd + 1) * d].T
                    k = win[1 * c + hd * d: 1 * c + (hd + 1) * d].T
                    v = win[2 * c + hd * d: 2 * c + (hd + 1) * d].T
                    a = torch.softmax(q @ k.T / math.sqrt(d) + bias[hd], dim=-1) @ v
                    out[bi, hd * d:(hd + 1) * d, wr * ws:(wr + 1) * ws, wc * ws:(wc + 1) * ws] = a.T.reshape(d, ws, ws)
    return m.to_out(out[:, :, :h, :w])


@pytest.mark.parametrize("backend", ["naive", "sdpa", "flex"])
@torch.no_grad()
def test_window_attention_matches_the_spec_reference(backend):
    torch.manual_seed(0)
    m = randomise(WindowAttention(dim=8, window_size=4, num_heads=2, attn_type=backend), seed=3)
    x = torch.randn(2, 8, 6, 11)  # pads to 8 x 12: 2 x 3 windows per image, reflect on both sides
    ref = reference_window_attention(m, x)
    assert torch.allclose(m(x), ref, atol=1e-5, rtol=0)
    # the layers after a LayerNorm get channels-last data; the result keeps that layout
    out = m(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_bias_sign_matters():
    """With an asymmetric table, Swin's query-minus-key index would give another result."""
    m = randomise(WindowAttention(dim=8, window_size=4, num_heads=2), seed=4)
    x = torch.randn(1, 8, 8, 8)
    y = m(x)
    m.relative_position_bias.copy_(m.relative_position_bias.flip(1))  # = transposing the index
    assert (m(x) - y).abs().max() > 1e-3


def test_unknown_backend_is_a_config_error_and_official_spellings_work():
    m = WindowAttention(dim=8, window_size=4, num_heads=2)
    assert m.attn_type == "sdpa"  # the CPU default
    with pytest.raises(ConfigError, match="unknown attention backend"):
        m.attn_type = "flash"
    net = small_esc()
    with pytest.raises(ConfigError):
        net.set_attention("xformers")
    for official, ours in (("Naive", "naive"), ("SDPA", "sdpa"), ("Flex", "flex")):
        net.set_attention(official)
        assert {a.attn_type for a in net.modules() if isinstance(a, WindowAttention)} == {ours}


def test_flex_attention_runs_on_cpu_in_this_torch():
    # Checked, not assumed: eager flex_attention with a bias score_mod runs on CPU (torch 2.13).
    assert esc.flex_support() is None
    WindowAttention(dim=8, window_size=4, num_heads=2, attn_type="flex")


@pytest.mark.parametrize("make, shape", [
    (lambda: esc.create("esc-light", 2), (1, 3, 20, 40)),  # two windows side by side
    (lambda: esc.create("esc-fp", 3), (1, 3, 20, 28)),
    (lambda: small_esc(use_ln=True, scale=3), (2, 3, 13, 21)),
])
@torch.no_grad()
def test_backends_agree(make, shape):
    torch.manual_seed(0)
    net = randomise(make(), seed=5).eval()
    x = torch.rand(*shape)
    outs = {}
    for backend in ("naive", "sdpa", "flex"):
        net.set_attention(backend)
        outs[backend] = net(x)
    assert (outs["sdpa"] - outs["naive"]).abs().max() <= 1e-5
    assert (outs["flex"] - outs["naive"]).abs().max() <= 1e-5


@torch.no_grad()
def test_chunked_windows_give_the_same_result(monkeypatch):
    m = randomise(WindowAttention(dim=8, window_size=4, num_heads=2, attn_type="naive"), seed=6)
    x = torch.randn(1, 8, 16, 12)  # 12 windows
    whole = m(x)
    monkeypatch.setattr(esc, "_SCORE_BUDGET", 2 * 16 * 16 * 5)  # 5 windows per chunk
    assert torch.allclose(m(x), whole, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# ConvAttn (3.3) and ESC-FP's decomposed form (4) against explicit per-sample computations.


@torch.no_grad()
def test_conv_attn_matches_an_explicit_per_sample_computation():
    p, dim, k = 4, 7, 5
    m = randomise(ConvAttn(p, p // 2), seed=7)
    lk = torch.randn(p, p, k, k)
    x = torch.randn(3, dim, 9, 6)
    y = m(x, lk)
    w1, b1 = m.dwc_proj[1].weight[:, :, 0, 0], m.dwc_proj[1].bias
    w3, b3 = m.dwc_proj[3].weight[:, :, 0, 0], m.dwc_proj[3].bias
    for b in range(3):
        a = x[b : b + 1, :p]
        u = w3 @ F.gelu(w1 @ a.mean(dim=(2, 3))[0] + b1) + b3
        expected = F.conv2d(a, lk, padding=k // 2)
        for c in range(p):
            kernel = u[9 * c : 9 * c + 9].view(1, 1, 3, 3)  # row-major 3x3
            expected[:, c] += F.conv2d(a[:, c : c + 1], kernel, padding=1)[:, 0]
        assert torch.allclose(y[b, :p], expected[0], atol=1e-5)
        assert torch.equal(y[b, p:], x[b, p:])  # untouched channels
        assert torch.allclose(m(x[b : b + 1], lk), y[b : b + 1], atol=1e-6)  # the B = 1 result


@torch.no_grad()
def test_decomposed_conv_attn_matches_an_explicit_computation():
    p, dim, k = 8, 10, 13
    m = randomise(DecomposedConvAttn(p, p // 4), seed=8)
    lk_channel, lk_spatial = torch.randn(p, p, 1, 1), torch.randn(p, 1, k, k) * 0.1
    x = torch.randn(2, dim, 7, 9)
    y = m(x, lk_channel, lk_spatial)
    for b in range(2):
        a = x[b : b + 1, :p]
        u = m.proj(a).flatten()
        mixed = F.conv2d(a, lk_channel)
        for c in range(p):
            kernel = lk_spatial[c, 0].clone()
            kernel[5:8, 5:8] += u[9 * c : 9 * c + 9].view(3, 3)  # 3x3 in the centre (offset 5)
            expected = F.conv2d(mixed[:, c : c + 1], kernel[None, None], padding=6)
            assert torch.allclose(y[b, c], expected[0, 0], atol=1e-5)
        assert torch.equal(y[b, p:], x[b, p:])


# --------------------------------------------------------------------------------------------------
# The large kernel (3.4): D4 symmetry and the cached inference form.


def d4(kernel):
    r = torch.rot90(kernel, -1, dims=(2, 3))
    return [kernel, kernel.flip(3), kernel.flip(2), kernel.flip(2, 3), r, r.flip(3), r.flip(2), r.flip(2, 3)]


def test_d4_symmetrised_kernel_is_invariant_and_idempotent():
    g = torch.Generator().manual_seed(9)
    kernel = torch.randn(3, 2, 13, 13, generator=g, dtype=torch.float64)
    sym = d4_symmetrize(kernel)
    for view in d4(sym):
        assert torch.allclose(view, sym, atol=1e-12)
    assert torch.allclose(torch.rot90(sym, 1, dims=(2, 3)), sym, atol=1e-12)
    assert torch.allclose(sym.transpose(2, 3), sym, atol=1e-12)  # D4 includes the diagonal mirror
    assert torch.allclose(d4_symmetrize(sym), sym, atol=1e-12)
    assert torch.allclose(sym, torch.stack(d4(kernel)).sum(0) / 8, atol=1e-12)
    assert not torch.allclose(sym, kernel)
    # a D4-symmetric kernel makes the conv commute with flips and rotations of the image
    x = torch.randn(1, 2, 17, 17, generator=g, dtype=torch.float64)
    y = F.conv2d(x, sym, padding=6)
    assert torch.allclose(F.conv2d(x.flip(3), sym, padding=6), y.flip(3), atol=1e-10)
    assert torch.allclose(F.conv2d(torch.rot90(x, 1, (2, 3)), sym, padding=6), torch.rot90(y, 1, (2, 3)), atol=1e-10)


def test_cached_kernel_equals_the_training_form_and_follows_the_parameter():
    net = small_esc()
    training_form = d4_symmetrize(net.plk_filter).detach()
    with torch.no_grad():
        cached = net.large_kernel()
        assert torch.equal(cached, training_form)
        assert net.large_kernel() is cached  # not recomputed on the next forward
        net.plk_filter.mul_(2)  # any in-place change (optimiser step, copy_) invalidates it
        assert torch.equal(net.large_kernel(), d4_symmetrize(net.plk_filter))
        before = net.large_kernel()
    sd = net.state_dict()
    sd["plk_filter"] = torch.randn_like(sd["plk_filter"])
    net.load_state_dict(sd)
    with torch.inference_mode():
        after = net.large_kernel()
    assert after is not before and torch.equal(after, d4_symmetrize(sd["plk_filter"]))
    assert torch.equal(net.state_dict()["plk_filter"], sd["plk_filter"])  # the raw kernel is what is saved
    assert not after.is_inference()  # usable outside inference_mode too
    net.train()
    assert net.large_kernel().requires_grad and net.large_kernel() is not net.large_kernel()


def test_training_form_is_used_in_training_and_outputs_match_the_cached_form():
    net = small_esc()
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        y_eval = net(x)
    net.train()
    y_train = net(x)
    # same maths; only the attention kernel differs (CPU flash without autograd, math with it)
    assert torch.allclose(y_train.detach(), y_eval, atol=1e-6)
    y_train.square().mean().backward()
    assert net.plk_filter.grad is not None and net.plk_filter.grad.abs().sum() > 0
    assert net.blocks[0].attn.relative_position_bias.grad.abs().sum() > 0
    # eval mode but with gradients wanted: the training form, so the large kernel still learns
    net.eval()
    net.zero_grad()
    net(x).sum().backward()
    assert net.plk_filter.grad.abs().sum() > 0


@torch.no_grad()
def test_a_converted_kernel_checkpoint_gives_the_same_outputs():
    net = small_esc()
    x = torch.rand(1, 3, 11, 9)
    y = net(x)
    sd = net.state_dict()
    sd["plk_filter"] = d4_symmetrize(sd["plk_filter"])  # what the official convert() would save
    net.load_state_dict(sd)
    assert torch.allclose(net(x), y, atol=1e-6)
    # used as stored, like the official converted network (symmetrising again only adds rounding)
    assert torch.equal(net.large_kernel(), sd["plk_filter"])
    sd["plk_filter"] = sd["plk_filter"] + 1e-3 * torch.randn_like(sd["plk_filter"])  # not symmetric
    net.load_state_dict(sd)
    assert torch.equal(net.large_kernel(), d4_symmetrize(sd["plk_filter"]))


# --------------------------------------------------------------------------------------------------
# Whole networks: residuals, sizes, determinism.


@torch.no_grad()
def test_image_residuals():
    x = torch.rand(1, 3, 9, 7)
    net = small_esc(scale=3)
    net.to_img.weight.zero_()
    net.to_img.bias.zero_()
    assert torch.equal(net(x), F.interpolate(x, scale_factor=3, mode="nearest"))  # ESC: nearest
    fp = ESCFP(dim=12, pdim=8, n_blocks=1, conv_blocks=1, window_size=8, num_heads=2, scale=2).eval()
    fp.to_img.weight.zero_()
    fp.to_img.bias.zero_()
    bicubic = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.equal(fp(x), bicubic)  # ESC-FP: bicubic, after pixel_shuffle
    real = ESCReal(dim=8, pdim=4, n_blocks=1, conv_blocks=1, window_size=8, num_heads=2).eval()
    real.to_img[8].weight.zero_()
    real.to_img[8].bias.zero_()
    assert torch.equal(real(x), torch.zeros(1, 3, 36, 28))  # ESC-Real: no image residual


@pytest.mark.parametrize("variant, scale, size", [("esc-light", 3, (19, 27)), ("esc-fp", 2, (19, 27)),
                                                  ("esc-real", 4, (9, 13))])
@torch.no_grad()
def test_released_variants_run_on_odd_sizes(variant, scale, size):
    net = randomise(esc.create(variant, scale), seed=10).eval()
    x = torch.rand(1, 3, *size)
    y = net(x)
    assert y.shape == (1, 3, size[0] * scale, size[1] * scale) and torch.isfinite(y).all()
    assert torch.equal(net(x), y)  # deterministic
    tiny = forward_any_size(net, torch.rand(1, 3, 1, 1))
    assert tiny.shape == (1, 3, scale, scale) and torch.isfinite(tiny).all()


@torch.no_grad()
def test_forward_any_size_is_the_official_test_pipeline():
    net = randomise(esc.create("esc-light", 2), seed=11).eval()
    assert net.pipeline_multiple == 32 and not net.tile_safe
    x = torch.rand(1, 3, 19, 27)
    padded = F.pad(x, (0, 32 - 27, 0, 32 - 19), mode="reflect")
    expected = net(padded)[:, :, :38, :54]
    assert torch.equal(forward_any_size(net, x), expected)
    # dynamic kernels read a global mean: the padded pipeline differs from a direct forward everywhere
    direct = net(x)
    assert (direct[:, :, :8, :8] - expected[:, :, :8, :8]).abs().max() > 1e-4


def test_xl_pipeline_multiple_is_its_window():
    assert esc.create("esc-xl", 2).pipeline_multiple == 48


@torch.no_grad()
def test_small_feature_maps_do_not_fail():
    """Deviation from the official code, which raises when a pad exceeds the side (spec 13.10)."""
    net = small_esc(scale=2)
    for h, w in ((1, 1), (2, 5), (3, 8)):
        y = net(torch.rand(1, 3, h, w))
        assert y.shape == (1, 3, 2 * h, 2 * w) and torch.isfinite(y).all()


def test_reflect_pad_is_pytorch_reflect_where_defined_and_mirrors_on_beyond():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 3, 4).contiguous()
    assert torch.equal(reflect_pad(x, 1, 3, 0, 2), F.pad(x, (1, 3, 0, 2), mode="reflect"))
    row = reflect_pad(x, 0, 9, 0, 0)[0, 0, 0].tolist()
    assert row == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    one = torch.tensor([[[[5.0]]]])
    assert torch.equal(reflect_pad(one, 0, 3, 0, 2), torch.full((1, 1, 3, 4), 5.0))


@torch.no_grad()
def test_batches_equal_single_images_and_repeat_exactly():
    net = small_esc(scale=2)
    x = torch.rand(3, 3, 10, 13)
    y = net(x)
    for b in range(3):
        assert torch.allclose(net(x[b : b + 1]), y[b : b + 1], atol=1e-6)
    assert torch.equal(net(x), y)


# --------------------------------------------------------------------------------------------------
# Loading a checkpoint of another scale (spec section 8).


def test_output_conv_conversion_resizes_each_subpixel_grid():
    g = torch.Generator().manual_seed(12)
    weight, bias = torch.randn(12, 5, 3, 3, generator=g), torch.randn(12, generator=g)
    new_weight, new_bias = convert_output_layer(weight, bias, 4)
    assert new_weight.shape == (48, 5, 3, 3) and new_bias.shape == (48,)
    for cin, ky, kx in ((0, 0, 0), (4, 2, 1), (2, 1, 2)):
        grid = weight[:, cin, ky, kx].view(1, 3, 2, 2)  # channel rgb*4 + i*2 + j -> (rgb, i, j)
        resized = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)
        assert torch.allclose(new_weight[:, cin, ky, kx], resized.flatten(), atol=1e-6)
    # bilinear, align_corners=False, x2 -> x4: the top-left output sub-pixel is the top-left input one
    assert torch.allclose(new_bias.view(3, 4, 4)[:, 0, 0], bias.view(3, 2, 2)[:, 0, 0])
    # a constant sub-pixel grid stays constant
    flat = torch.arange(3.0).repeat_interleave(4)
    _, resized_flat = convert_output_layer(torch.zeros(12, 1, 3, 3), flat, 3)
    assert torch.allclose(resized_flat, torch.arange(3.0).repeat_interleave(9))


@pytest.mark.parametrize("variant", ["esc-light", "esc-fp"])
def test_other_scale_checkpoint_loads_with_a_warning(variant, caplog):
    sd = official_state_dict(variant, 2, seed=13)
    with caplog.at_level(logging.WARNING, logger="detailsr.models.esc"):
        net = detailsr.load_model(sd, scale=4)
    assert net.scale == 4 and net.config["scale"] == 4
    assert "x2" in caplog.text and "x4" in caplog.text and "to_img" in caplog.text
    expected_w, expected_b = convert_output_layer(sd["to_img.weight"], sd["to_img.bias"], 4)
    assert torch.equal(net.to_img.weight, expected_w) and torch.equal(net.to_img.bias, expected_b)
    assert torch.equal(net.proj.weight, sd["proj.weight"])
    assert sd["to_img.weight"].shape == (12, sd["proj.weight"].shape[0], 3, 3)  # the caller's dict is untouched
    # the same through build(arch, config) with a scale override
    arch, config = esc.detect(sd)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detailsr.models.esc"):
        other = esc.build(arch, {**config, "scale": 3})
        other.load_state_dict(sd, strict=True)
    assert other.to_img.weight.shape[0] == 27 and "x3" in caplog.text
    assert torch.equal(esc.convert_scale(sd, 3)["to_img.weight"], other.to_img.weight)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detailsr.models.esc"):
        esc.build(arch, config).load_state_dict(sd)
    assert caplog.text == ""  # same scale: nothing converted, nothing said


def test_esc_real_is_x4_only():
    with pytest.raises(ConfigError, match="x4 only"):
        ESCReal(scale=2)
    with pytest.raises(ConfigError):
        detailsr.load_model(official_state_dict("esc-real", 4), scale=2)


def test_scale_and_official_upscaling_factor_spellings():
    assert ESC(dim=16, pdim=8, n_blocks=1, conv_blocks=1, window_size=8, num_heads=2, upscaling_factor=3).scale == 3
    with pytest.raises(ConfigError):
        ESC(scale=2, upscaling_factor=3)


# --------------------------------------------------------------------------------------------------
# The zoo (../shared/weights/README.md, ESC section).

RELEASE_FILES = {  # file -> (zoo name, variant, scale)
    "ESC_DIV2K_X2.pth": ("esc-x2", "esc", 2), "ESC_DIV2K_X3.pth": ("esc-x3", "esc", 3),
    "ESC_DIV2K_X4.pth": ("esc-x4", "esc", 4),
    "ESC_light_X2.pth": ("esc-light-x2", "esc-light", 2), "ESC_light_X3.pth": ("esc-light-x3", "esc-light", 3),
    "ESC_light_X4.pth": ("esc-light-x4", "esc-light", 4),
    "ESC_FP_X2.pth": ("esc-fp-x2", "esc-fp", 2), "ESC_FP_X3.pth": ("esc-fp-x3", "esc-fp", 3),
    "ESC_FP_X4.pth": ("esc-fp-x4", "esc-fp", 4),
    "ESC_DFLIP_X2.pth": ("esc-dflip-x2", "esc", 2), "ESC_DFLIP_X3.pth": ("esc-dflip-x3", "esc", 3),
    "ESC_DFLIP_X4.pth": ("esc-dflip-x4", "esc", 4),
    "ESC_XL_DF2K_X2_PT.pth": ("esc-xl-x2-pt", "esc-xl", 2), "ESC_XL_DF2K_X2_FT.pth": ("esc-xl-x2", "esc-xl", 2),
    "ESC_XL_DF2K_X3_FT.pth": ("esc-xl-x3", "esc-xl", 3), "ESC_XL_DF2K_X4_FT.pth": ("esc-xl-x4", "esc-xl", 4),
    "ESC_Real_X4_MSE.pth": ("esc-real-x4-mse", "esc-real", 4),
    "ESC_Real_X4_GAN.pth": ("esc-real-x4-gan", "esc-real", 4),
}


def test_every_official_esc_release_file_has_a_zoo_entry():
    counts = {(v, s): c for v, s, c in COUNTS}
    for file, (name, variant, scale) in RELEASE_FILES.items():
        entry = zoo.get(name)
        assert entry is not None, name
        assert entry.url == "https://github.com/dslisleedh/ESC/releases/download/1.0.0/" + file
        assert entry.licence == "MIT" and entry.scale == scale
        assert entry.arch == EXPECTED_CONFIG[variant][0]
        assert entry.params == counts[(variant, scale)]
    assert zoo.get("esc-x4").metrics["PSNR/SSIM-Y Set5/Set14/B100/Urban100/Manga109"].startswith("32.68/0.9011")
    assert zoo.get("esc-real-x4-gan").sha256 == "d6932bd01e29c9335f5f678b0e9b31ede906a42244887ab8888b1d39a8667f2d"
    assert zoo.get("esc-light-x4").sha256 is None  # none published


# --------------------------------------------------------------------------------------------------
# Against the official code: outputs of the official networks stored in tests/data.

REFERENCE = Path(__file__).parent / "data" / "esc_reference.safetensors"
REFERENCE_CASES = [("esc", 2), ("esc", 3), ("esc", 4), ("esc-light", 2), ("esc-light", 3), ("esc-light", 4),
                   ("esc-fp", 2), ("esc-fp", 3), ("esc-fp", 4), ("esc-real", 4)]


@pytest.fixture(scope="module")
def esc_reference() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(REFERENCE, "pt") as f:
        cases = json.loads(f.metadata()["cases"])
    return load_file(REFERENCE), cases


def reference_state_dict(variant: str, scale: int, seed: int, sigma: float) -> dict[str, torch.Tensor]:
    """The fixture's weights, from detailsr alone: our own init with `seed`, then every tensor + sigma * N(0, 1).

    The noise (own generator, same seed, state-dict order) reaches the parts the official init zeroes
    (the dynamic-kernel heads) or nearly zeroes (the bias tables) and moves LayerNorms off identity.
    """
    torch.manual_seed(seed)
    net = esc.create(variant, scale)
    g = torch.Generator().manual_seed(seed)
    return {k: v + sigma * torch.randn(v.shape, generator=g) for k, v in net.state_dict().items()}


def _check_recipe(reference: dict[str, torch.Tensor], name: str, sd: dict[str, torch.Tensor]) -> None:
    got = torch.stack([sum(v.double().sum() for v in sd.values()), sum(v.double().abs().sum() for v in sd.values())])
    assert torch.allclose(got, reference[f"{name}.state_sum"], rtol=1e-6, atol=0), (
        f"{name}: the seeded weights no longer equal those the fixture was made with (our init order or the "
        "recipe changed, not necessarily the maths); regenerate the fixture with the official code"
    )


def _compare_to_official(esc_reference, variant: str, scale: int, backends) -> None:
    """How `tests/data/esc_reference.safetensors` was made (a scratch script outside this repository;
    no official code or weights are shipped here, only inputs and the official outputs):

    - Official code: GitHub dslisleedh/ESC (MIT), `esc/archs/esc_arch.py` (ESC, ESC-light),
      `esc_fp_arch.py` (ESC-FP) and `esc_real_arch.py` at commit 2718011073d996aa6d31b603ca7c5b46c87456db;
      ESC-XL needs `use_ln`, which only the later upstream revision of esc_arch.py has (the 2025-12-31
      FlashBias revision, from a verbatim copy); ESC-Real uses the later upstream 4-conv upsampler
      (`to_img.1/.4/.6/.8`, the spec's snapshot e7e6938; at commit 2718011 it still had 3 convs, and the
      trunk up to the upsampler was checked equal to that revision to 0.0). einops and basicsr were
      replaced by minimal stubs (a reshape/permute `rearrange`, a no-op registry); the official
      `create_table_idxs` triple loop by a vectorised equivalent (checked equal on small windows).
    - Per case: `reference_state_dict(variant, scale, seed, sigma)` above (seed and sigma are in the
      file's metadata; sigma 0.05, 0.02 for ESC-XL, whose wider layers blow 0.05 up to outputs of
      about 80), strictly loaded into the official network built with attn_type='Naive' (the only
      official path that runs on CPU at that commit), eval mode, batch 1, no_grad; the stored input is a
      crop of Set5 birdx4.png or seeded uniform noise, 17x36 (two windows) or 18x17 (ESC-XL 25x26): none a
      multiple of the window, so the official attention reflect-pads inside; the official output
      (float32) is stored.
    - Measured when it was made: our naive and flex backends reproduced every official output exactly
      (0.0); sdpa to <= 5e-5 (torch's fused kernel; the official code's own SDPA path gives the same).
    """
    reference, cases = esc_reference
    name = f"{variant}_x{scale}"
    case = cases[name]
    assert (case["variant"], case["scale"]) == (variant, scale)
    sd = reference_state_dict(variant, scale, case["seed"], case["sigma"])
    _check_recipe(reference, name, sd)
    x, expected = reference[f"{name}.input"], reference[f"{name}.official"]
    net = detailsr.load_model(sd)  # detects the variant and loads strictly
    assert (net.variant, net.scale) == (variant, scale)
    for backend in backends:
        net.set_attention(backend)
        err = (net(x) - expected).abs().max().item()
        assert err <= 1e-4, f"{name} {backend}: max abs difference {err:.3g} from the official output"



# naive and flex (slower on CPU) on one case per variant; sdpa, the default, on all
ALL_BACKENDS = {("esc", 3), ("esc-light", 2), ("esc-fp", 3), ("esc-real", 4)}


@pytest.mark.parametrize("variant, scale", REFERENCE_CASES)
@torch.no_grad()
def test_outputs_match_the_official_network(esc_reference, variant, scale):
    """Against the official output, max abs difference <= 1e-4 (recipe: `_compare_to_official`)."""
    backends = ("sdpa", "naive", "flex") if (variant, scale) in ALL_BACKENDS else ("sdpa",)
    _compare_to_official(esc_reference, variant, scale, backends)


@pytest.mark.slow
@torch.no_grad()
def test_xl_output_matches_the_official_network(esc_reference):
    """ESC-XL (12.5M parameters, 48x48 windows): the default backend only, a few seconds."""
    _compare_to_official(esc_reference, "esc-xl", 4, ("sdpa",))


@torch.no_grad()
def test_a_kernel_saved_by_the_official_convert_gives_the_official_output(esc_reference):
    """The official `convert()` stores the D4-symmetrised kernel and stops symmetrising; its outputs
    equal the unconverted network's bit for bit, so the stored official output is the reference."""
    reference, cases = esc_reference
    case = cases["esc_x4"]
    sd = reference_state_dict("esc", 4, case["seed"], case["sigma"])
    sd["plk_filter"] = d4_symmetrize(sd["plk_filter"])
    net = detailsr.load_model(sd, attn_type="naive")
    assert (net(reference["esc_x4.input"]) - reference["esc_x4.official"]).abs().max() <= 1e-4


@torch.no_grad()
def test_x2_weights_in_a_x3_network_give_the_official_output(esc_reference):
    """The official ESC.load_state_dict override (bilinear resize of to_img's sub-pixel grid), x2 -> x3."""
    reference, cases = esc_reference
    case = cases["esc_x2_into_x3"]
    sd = reference_state_dict("esc", 2, case["seed"], case["sigma"])
    _check_recipe(reference, "esc_x2", sd)
    net = detailsr.load_model(sd, scale=3, attn_type="naive")
    assert net.scale == 3
    x = reference["esc_x2_into_x3.input"]
    assert (net(x) - reference["esc_x2_into_x3.official"]).abs().max() <= 1e-4


def test_a_network_built_under_inference_mode_runs():
    """Parameters made under inference_mode have no version counter: the kernel and bias caches
    must not key on one (they compute instead), and the output is that of a normal network."""
    torch.manual_seed(0)
    normal = esc.create("esc-light", scale=2).eval()
    with torch.inference_mode():
        built_there = esc.create("esc-light", scale=2).eval()
        built_there.load_state_dict(normal.state_dict())
        x = torch.rand(1, 3, 40, 40)
        assert torch.equal(built_there(x), normal(x))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pointwise_conv_is_the_1x1_conv_in_both_layouts_and_in_training(layout):
    """ESC's 1x1 layers run channels-last input through oneDNN's GEMM: the conv's values (to
    rounding), the input's layout kept, and the conv's gradients when training."""
    torch.manual_seed(0)
    layer = PointwiseConv(36, 72)
    x = torch.randn(2, 36, 20, 24).contiguous(memory_format=layout)
    with torch.inference_mode():
        y = layer(x)
    assert y.is_contiguous(memory_format=layout)
    assert (y - F.conv2d(x, layer.weight, layer.bias)).abs().max() <= 1e-5

    x.requires_grad_()
    layer(x).square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    for t in (x, layer.weight, layer.bias):
        t.grad = None
    F.conv2d(x, layer.weight, layer.bias).square().sum().backward()
    for got, t in zip(grads, (x, layer.weight, layer.bias), strict=True):
        assert torch.allclose(got, t.grad, rtol=1e-5, atol=1e-4)
