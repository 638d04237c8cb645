"""CAMixerSR and CAMixerOSR inference in channels-last layout, doing per window only what attended
windows need.

The same network, weights and routing as the modules' own forward (which stays the oracle the tests
compare this path with), rearranged for CPU speed (measured in ../shared/perf: NCHW 1x1 convs take
PyTorch's slow im2col path and depth-wise convs run 4x slower than on channels-last data):

* features stay N x H x W x C between layers: 1x1 convs are one GEMM each (`layers.linear`, oneDNN
  on CPU), layer norms are `F.layer_norm` on the last dim, and depth-wise / 3x3 convs run on the
  channels-last view of the same storage (no copies), the dilated one with its GELU fused;
* the predictor's offsets, the deformable warp and the q/k projections are computed only for the
  attended windows (the official code computes offsets and the warp for the whole map);
* the window position code is built once per size.

Only eval forwards take this path (`fast_path` of both networks, on by default); training, the dense
reference and the official stochastic draw keep working as before, since routing is the mixers' own
`_select` / `_veto_pure` and every record is filled as the plain forward fills it.

The ODI mixer (`CAMixerODI`) works on a map rolled by its window shift: its scores, `sa` and window
grid are those of the rolled map, its query = key is the warped map rolled, and the assembled map is
rolled back. Here the attended tokens are gathered at their rolled places, and their query / key
read from the un-rolled warp at the place each token came from, as the module computes it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .camixer import CAMixer, CAMixerODI, mask_logits, window_condition
from .layers import LayerNorm2d, attention, conv2d_gelu, coordinate_dtype, linear, pair

# (height, width, window, dtype, device) -> the window position code as (1, H, W, 2)
_POSITION_CODES: dict[tuple, torch.Tensor] = {}


def run_body(net: nn.Module, f: torch.Tensor, global_condition: torch.Tensor) -> torch.Tensor:
    """Every group of `net.body` and `net.body_tail` on NCHW features `f`: the fast twin of the loop
    in `CAMixerSR.forward` (input and output NCHW, channels-last inside)."""
    x = _nhwc(f)
    shortcut = x
    condition = _nhwc(global_condition)
    for group in net.body:
        start = x
        for block in group.body:
            x = _block(block, x, condition)
        x = _linear(x, group.body_tail) + start
    out = _conv(x, net.body_tail) + shortcut
    return out.permute(0, 3, 1, 2)


def _block(block: nn.Module, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    x = _layer_norm(x + _mixer(block.mixer, x, condition), block.norm1)
    return _layer_norm(x + _feed_forward(block.ffn, x), block.norm2)


def _feed_forward(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    z = _conv(_linear(x, ffn.project_in), ffn.dwconv)
    z1, z2 = z.chunk(2, dim=-1)
    # GELU on a dense copy of the half: on the strided half its vector loop leaves each pixel's last
    # 4 of 36 channels to the scalar erf, 7x slower in all (measured 4.9 against 0.7 ms at 256x256)
    return _linear(F.gelu(z1.contiguous()).mul_(z2), ffn.project_out)


def _mixer(mixer: CAMixer, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    ws = mixer.window_size
    b, h, w, c = x.shape
    route = mixer.route
    v = _linear(x, mixer.project_v)
    position = _position_code(h, w, ws, x).expand(b, -1, -1, -1)
    z = _linear(torch.cat((v, condition, position), dim=-1), route.in_conv[0])
    z = F.leaky_relu(_layer_norm(z, route.in_conv[1]), 0.1)
    ca = torch.sigmoid(_linear(z.mean((1, 2)), route.out_CA[1]))[:, None, None, :]
    sa = torch.sigmoid(_conv(z, route.out_SA[0]))
    logits = mask_logits(route.out_mask, _windows(z.mean(-1, keepdim=True), ws).squeeze(-1))
    grid = (h // ws, w // ws)
    keep = mixer._veto_pure(mixer._select(logits))
    mixer.record = mixer._record(keep, grid, b)
    n_keep, n = keep.shape[1], grid[0] * grid[1]

    if n_keep == n:  # every window attends: no gather, no `v * sa`
        x_all = _windows(x, ws)
        every = torch.arange(n, device=x.device).expand(b, -1)
        keys = x_all + _warp(x, _offsets(route, _windows(z, ws)), *_window_tokens(every, h, w, ws))
        a = _attend(mixer, x_all, keys, _windows(v, ws))
        a = _unwindows(a, ws, h, w)
    else:
        a = v * sa
        if n_keep:
            rows, columns = _window_tokens(keep, h, w, ws)
            pixels = _pixel_index(rows, columns, h, w)
            x_sel = _gather(x, pixels)
            # The attended windows' layers by F.linear: oneDNN builds and keeps a kernel for each
            # row count, and this count changes from block to block and image to image (ratio
            # auto): over an 8K frame's tiles those kernels took 0.3 GB.
            keys = x_sel + _warp(x, _offsets(route, _gather(z, pixels), F.linear), rows, columns)
            attended = _attend(mixer, x_sel, keys, _gather(v, pixels), F.linear)
            a.view(-1, c).index_copy_(0, pixels.flatten(), attended.view(-1, c))
    conv = mixer.conv_sptial
    spatial = conv2d_gelu(_conv(a, conv[0]).permute(0, 3, 1, 2), conv[1]).permute(0, 2, 3, 1)
    return _linear(torch.addcmul(a, spatial, ca), mixer.project_out)


def run_body_odi(net: nn.Module, f: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """CAMixerOSR's groups, `body_tail` and `dcn` on NCHW features `f`, with the (B, 1, H, W)
    latitude `condition`: the fast twin of that part of `CAMixerOSR.forward` (NCHW in and out)."""
    x = _nhwc(f)
    latitude = _nhwc(condition)
    for group in net.body:
        start = x
        for block in group.body:
            x = _layer_norm(x + _mixer_odi(block.mixer, x, latitude), block.norm1)
            x = _layer_norm(x + _feed_forward(block.ffn, x), block.norm2)
        x = _deform_conv(group.body_tail, x, group.offset_conv(condition)) + start
    x = _deform_conv(net.dcn, _conv(x, net.body_tail), net.offset_conv(condition))
    return x.permute(0, 3, 1, 2)


def _mixer_odi(mixer: CAMixerODI, x: torch.Tensor, latitude: torch.Tensor) -> torch.Tensor:
    ws, shift = mixer.window_size, mixer.shift
    b, h, w, c = x.shape
    route = mixer.route
    v = _roll(_linear(x, mixer.project_v), -shift)
    position = _roll(_position_code(h, w, ws, x), -shift).expand(b, -1, -1, -1)
    z = F.leaky_relu(_linear(torch.cat((v, latitude, position), dim=-1), route.in_conv[0]), 0.2)
    ca = torch.sigmoid(_linear(z.mean((1, 2)), route.out_CA[1]))[:, None, None, :]
    sa = torch.sigmoid(_conv(z, route.out_SA[0]))
    logits = mask_logits(route.out_mask, _windows(z.mean(-1, keepdim=True), ws).squeeze(-1))
    keep = mixer._select(logits)
    mixer.record = mixer._record(keep, (h // ws, w // ws), b, shift)

    a = v * sa
    if keep.shape[1]:
        rows, columns = _window_tokens(keep, h, w, ws)  # in the rolled map
        source_rows, source_columns = (rows + shift) % h, (columns + shift) % w  # in the un-rolled one
        flow = _raw_offsets(route, _gather(z, _pixel_index(source_rows, source_columns, h, w)), F.linear)
        qk = _warp(x, flow, source_rows, source_columns)  # the ODI predictor's offsets are raw: no tanh
        pixels = _pixel_index(rows, columns, h, w)
        attended = _attend(mixer, qk, qk, _gather(v, pixels), F.linear)
        a.view(-1, c).index_copy_(0, pixels.flatten(), attended.view(-1, c))
    a = _roll(a, shift)
    conv = mixer.conv_sptial
    spatial = _conv(_linear(a, conv[0]), conv[1]).permute(0, 3, 1, 2)
    spatial = conv2d_gelu(spatial, conv[2]).permute(0, 2, 3, 1)
    return _linear(torch.addcmul(a, spatial, ca), mixer.project_out)


def _deform_conv(dcn: nn.Module, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
    """`DCNv2Pack` (`dcn`) on N x H x W x C data `x`, its offsets and mask from NCHW `feature`: the
    result N x H x W x C_out.

    The module samples each tap's four corners by `torch.gather` over NCHW channels; here one
    `embedding_bag` sums every tap's corners of the channels-last map with their bilinear weights
    (zero outside the image, times the mask), and one GEMM applies the kernel to all taps at once.
    Positions are computed, and half-precision maps sampled, in float32 (as `_warp`)."""
    b, h, w, c = x.shape
    weight = dcn.weight
    kh, kw = weight.shape[2:]
    taps = kh * kw
    dtype = coordinate_dtype(x)
    o = dcn.conv_offset(feature).to(dtype)
    ho, wo = o.shape[-2:]
    offset, mask = o[:, : 2 * taps].view(b, taps, 2, ho, wo), torch.sigmoid(o[:, 2 * taps :])
    (sy, sx), (py, px), (dy, dx) = (pair(v) for v in (dcn.stride, dcn.padding, dcn.dilation))
    tap_y = (torch.arange(kh, device=x.device) * dy).repeat_interleave(kw).view(1, taps, 1, 1)
    tap_x = (torch.arange(kw, device=x.device) * dx).repeat(kh).view(1, taps, 1, 1)
    base_y = (torch.arange(ho, device=x.device) * sy - py).view(1, 1, ho, 1)
    base_x = (torch.arange(wo, device=x.device) * sx - px).view(1, 1, 1, wo)
    y = (base_y + tap_y).to(dtype) + offset[:, :, 0]
    x_pos = (base_x + tap_x).to(dtype) + offset[:, :, 1]
    inside = (y > -1) & (y < h) & (x_pos > -1) & (x_pos < w)
    y0, x0 = torch.floor(y).clamp_(-1, h), torch.floor(x_pos).clamp_(-1, w)
    ly, lx = y - y0, x_pos - x0
    y0, x0 = y0.long(), x0.long()
    first = (torch.arange(b, device=x.device) * (h * w)).view(b, 1, 1, 1)
    indices, weights = [], []
    for cy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for cx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            valid = inside & (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            indices.append(first + cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1))
            weights.append(wy * wx * valid * mask)
    # (B, Ho, Wo, taps, 4): each output pixel's taps in kernel order, each tap's four corners
    indices = torch.stack(indices, -1).permute(0, 2, 3, 1, 4).reshape(-1, 4)
    weights = torch.stack(weights, -1).permute(0, 2, 3, 1, 4).reshape(-1, 4)
    sampled = _weighted_rows(x.reshape(-1, c).to(dtype), indices, weights).to(x.dtype)
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], taps * c)  # (C_out, taps x C)
    return linear(sampled.view(b, ho, wo, taps * c), kernel, dcn.bias)


def _offsets(route: nn.Module, z: torch.Tensor, gemm: Callable = linear) -> torch.Tensor:
    """The predictor's flow (pixels, x then y) for windows of z (B, K, T, c4): (B, K, T, 2)."""
    return torch.tanh(_raw_offsets(route, z, gemm)) * 8


def _raw_offsets(route: nn.Module, z: torch.Tensor, gemm: Callable = linear) -> torch.Tensor:
    """`route.out_offsets` (1x1 conv, its LeakyReLU, 1x1 conv) on the last dim of z."""
    hidden = route.out_offsets[1](_linear(z, route.out_offsets[0], gemm))
    return _linear(hidden, route.out_offsets[2], gemm)


def _window_tokens(keep: torch.Tensor, h: int, w: int, ws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column (B, K, T) of each token of windows `keep` (B, K), in `_windows` order."""
    cols = w // ws
    dy, dx = torch.meshgrid(torch.arange(ws, device=keep.device), torch.arange(ws, device=keep.device), indexing="ij")
    rows = (keep // cols)[:, :, None] * ws + dy.reshape(1, 1, -1)
    return rows, (keep % cols)[:, :, None] * ws + dx.reshape(1, 1, -1)


def _pixel_index(rows: torch.Tensor, columns: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flat indices into the (B*H*W) pixels of pixel (rows, columns) (B, ...) of each image."""
    first = torch.arange(rows.shape[0], device=rows.device) * (h * w)
    return first.view(-1, *(1,) * (rows.dim() - 1)) + rows * w + columns


def _gather(x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels `pixels` (B, K, T) (`_pixel_index`) of x (B, H, W, C) as (B, K, T, C)."""
    return x.reshape(-1, x.shape[-1]).index_select(0, pixels.flatten()).view(*pixels.shape, x.shape[-1])


def _warp(x: torch.Tensor, flow: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """`flow_warp(x, flow)` evaluated at pixels (rows, columns) (B, K, T) only: bilinear with border
    padding and align_corners=True, sampling the whole map. Result (B, K, T, C).

    With align_corners=True the sample position in pixels is the pixel plus its flow, clamped to
    the map for border padding; the four corners' channel vectors are summed with their bilinear
    weights by one `embedding_bag` (a fused gather and weighted sum: 4.3 against 16.5 ms for four
    gathers and three lerps, and 3x faster still than `grid_sample`, at 256² and 36 channels on
    one thread). Half-precision inputs are warped in float32 (bfloat16 cannot tell pixel 200 from
    201)."""
    b, h, w, c = x.shape
    dtype = coordinate_dtype(x)
    px = (columns.to(dtype) + flow[..., 0].to(dtype)).clamp_(0, w - 1)
    py = (rows.to(dtype) + flow[..., 1].to(dtype)).clamp_(0, h - 1)
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    x0, y0 = x0.long(), y0.long()
    top_left = _pixel_index(y0, x0, h, w)
    right = (x0 < w - 1).long()  # the next column and row, clamped to the map
    down = (y0 < h - 1).long() * w
    corners = torch.stack((top_left, top_left + right, top_left + down, top_left + down + right), dim=-1)
    gx, gy = 1 - fx, 1 - fy
    weights = torch.stack((gx * gy, fx * gy, gx * fy, fx * fy), dim=-1)
    out = _weighted_rows(x.reshape(-1, c).to(dtype), corners.view(-1, 4), weights.view(-1, 4))
    return out.view(*rows.shape, c).to(x.dtype)


def _weighted_rows(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[i] = sum over j of weights[i, j] * table[rows[i, j]]: (M, C) from rows and weights (M, J).

    One `embedding_bag`, a fused gather and weighted sum, where it has a kernel (CPU, CUDA)."""
    if table.device.type in ("cpu", "cuda"):
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return _weighted_rows_by_gathers(table, rows, weights)


def _weighted_rows_by_gathers(table: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`_weighted_rows` as a gather, a product and a sum (devices without `embedding_bag`, e.g. MPS)."""
    return (table.index_select(0, rows.flatten()).view(*rows.shape, -1) * weights[..., None]).sum(1)


def _attend(mixer: CAMixer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gemm: Callable = linear) -> torch.Tensor:
    q, k = _linear(q, mixer.project_q, gemm), _linear(k, mixer.project_k, gemm)
    return attention(q, k, v.contiguous(), scale=1.0, backend=mixer.attn_type)


# ------------------------------------------------------------------------- channels-last helpers

def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def _linear(x: torch.Tensor, conv: nn.Conv2d | nn.Linear, gemm: Callable = linear) -> torch.Tensor:
    """A 1x1 conv (or a Linear) on the last dim, by `gemm` (`layers.linear` or `F.linear`)."""
    weight = conv.weight if conv.weight.dim() == 2 else conv.weight.flatten(1)
    return gemm(x, weight, conv.bias)


def _conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A conv on N x H x W x C data through its channels-last NCHW view; the result again N x H x W x C."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _layer_norm(x: torch.Tensor, norm: LayerNorm2d) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps)


def _roll(x: torch.Tensor, shift: int) -> torch.Tensor:
    """x (B, H, W, C) rolled by `shift` along H and W."""
    return torch.roll(x, (shift, shift), dims=(1, 2)) if shift else x


def _windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, N, ws*ws, C), windows and tokens row-major (as `window_partition`)."""
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).transpose(2, 3).reshape(b, -1, ws * ws, c)


def _unwindows(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    b, _, _, c = x.shape
    return x.view(b, h // ws, w // ws, ws, ws, c).transpose(2, 3).reshape(b, h, w, c)


def _position_code(h: int, w: int, ws: int, like: torch.Tensor) -> torch.Tensor:
    key = (h, w, ws, like.dtype, like.device)
    if key not in _POSITION_CODES:
        if len(_POSITION_CODES) > 32:
            _POSITION_CODES.clear()
        _POSITION_CODES[key] = _nhwc(window_condition(h, w, ws, like))
    return _POSITION_CODES[key]
