"""Pure-Pass (PP): a fixed, parameter-free mask of the pixels that sit in colour-uniform cells.

Spec: ../shared/spec/papers.md §2.3 (three stages) and §2.8 (the algorithm implemented here).

STATED by the sources (PP abstract and third-party summaries of the paper):
- K fixed colour centres, uniform in HSV: ``h_k = k/K, s = v = 0.9``, converted to RGB;
- every pixel takes the label of its closest centre;
- a window whose labels are all identical is pure (all its pixels are);
- cross-shift mask fusion (CSMF) raises the pure share (31.71 % -> 38.89 %), hence a union of masks.

RECONSTRUCTED by us where the sources are silent. The choices the spec makes knobs are the fields of
`PurePassConfig`, so they can be corrected when the paper is readable:
- ``num_centres`` K = 24 and ``window`` w = 4, calibrated on Set5 + Set14 (§2.7);
- ``shifts``: the fused grids, None = {(0, 0), (w//2, w//2)} (Swin-style half-window diagonal shift);
- ``compensation`` ("value" = proj(v), or "zero") and ``targets`` ("ac_msa" by default, "sw_msa"
  optional): what a pure token gets and which mixers skip it - used by the network, not here.
The remaining reconstructed rules are fixed here (they define the mask the calibration measured):
- squared Euclidean distance in RGB in [0, 1], centres from ``colorsys.hsv_to_rgb``, labels from the LR
  network input, ties to the smaller k. Distances are float32, summed R, G, B: a grey pixel is *exactly*
  equidistant from centres whose RGB components are permutations of each other, and float32 rounding
  breaks most of those ties before the smaller-k rule sees them. §2.7 was measured that way and is
  reproduced exactly; an exact smaller-k rule would give more pure pixels (35.01 % -> 43.37 % instead of
  31.59 % -> 38.79 % at x2, K = 24);
- non-overlapping w x w cells on a grid starting at (-dy, -dx); a cell cut by the image border is judged
  on its valid pixels only (so a corner cell cut to one pixel is pure).
"""

from __future__ import annotations

import colorsys
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .atd import ATDLight, CategoryAttention, category_sort, take_tokens
from .base import SRNetwork
from .layers import scatter_tokens_
from .record import MixerRecord, MixerWork, mixer_records

DEFAULT_CENTRES = 24
DEFAULT_WINDOW = 4
COMPENSATIONS = ("value", "zero")
TARGETS = ("ac_msa", "sw_msa")

Shift = tuple[int, int]


def diagonal_shift(window: int) -> tuple[Shift, ...]:
    """The grids CSMF fuses by default: the plain grid and the Swin-style half-window diagonal shift."""
    _check_window(window)
    return ((0, 0), (window // 2, window // 2))


def colour_centres(num_centres: int = DEFAULT_CENTRES) -> torch.Tensor:
    """(K, 3) float32 RGB in [0, 1]: ``hsv_to_rgb(k/K, 0.9, 0.9)`` for k = 0..K-1.

    A plain tensor, not a parameter: PP learns nothing. A network that keeps it as a buffer should
    register it with ``persistent=False``, so that checkpoints stay those of the unmasked network.
    """
    _check_centres(num_centres)
    rgb = [colorsys.hsv_to_rgb(k / num_centres, 0.9, 0.9) for k in range(num_centres)]
    return torch.tensor(rgb, dtype=torch.float32)


def colour_labels(lr: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int64: index of the centre nearest to each pixel of ``lr`` (B, 3, H, W) in [0, 1].

    Squared Euclidean distance computed in float32 (see `_squared_distance`); on a tie of the computed
    distances the smaller index wins (strict ``<`` while scanning k upwards).
    """
    if lr.dim() != 4 or lr.shape[1] != 3:
        raise ValueError(f"Pure-Pass classifies (B, 3, H, W) RGB images; got shape {tuple(lr.shape)}")
    if centres.dim() != 2 or centres.shape[1] != 3 or centres.shape[0] < 1:
        raise ValueError(f"colour centres must be (K, 3) with K >= 1; got shape {tuple(centres.shape)}")
    # always float32, whatever the input dtype: see _squared_distance for why the precision matters
    x = lr.to(torch.float32)
    c = centres.to(device=lr.device, dtype=torch.float32)
    # one (B, H, W) distance map per centre: K is small, and this never holds a (B, H, W, K) tensor
    best = _squared_distance(x, c[0])
    labels = torch.zeros(best.shape, dtype=torch.int64, device=lr.device)
    for k in range(1, c.shape[0]):
        d = _squared_distance(x, c[k])
        closer = d < best  # strict: an exact tie keeps the smaller k, as argmin would
        best = torch.where(closer, d, best)
        labels.masked_fill_(closer, k)
    return labels


def _squared_distance(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """(B, H, W) float32: ((R - r)^2 + (G - g)^2) + (B - b)^2, in exactly that order.

    For achromatic pixels (R = G = B) several centres are equidistant in exact arithmetic (their RGB
    components are permutations of each other), and the float32 rounding of this sum, not the tie
    rule, decides between them. The spec's calibration (§2.7) was measured this way, so the dtype and
    the order are fixed here: every element-wise op is correctly rounded, so CPU and GPU agree.
    """
    sq = (x - centre.view(1, 3, 1, 1)).square()
    return (sq[:, 0] + sq[:, 1]) + sq[:, 2]


def pure_cells(labels: torch.Tensor, window: int, shift: Shift) -> torch.Tensor:
    """(B, H, W) bool: True where the pixel's w x w cell holds one label only.

    The grid of cells starts at (-dy, -dx): with dy > 0 the first cell row covers image rows
    [0, w - dy). Cells cut by the image border are judged on their valid pixels only.
    """
    if labels.dim() != 3:
        raise ValueError(f"pure_cells takes a (B, H, W) label map; got shape {tuple(labels.shape)}")
    _check_window(window)
    dy, dx = _check_shift(shift, window)
    b, h, w = labels.shape
    if labels.numel() == 0:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    # pad so the grid starts at padded (0, 0) and both sides are multiples of the window
    hp, wp = dy + h + (-(dy + h) % window), dx + w + (-(dx + w) % window)
    labels = labels.long()
    # padding is "don't care": it must lose both the per-cell min and the per-cell max
    big, small = torch.iinfo(torch.int64).max, torch.iinfo(torch.int64).min
    lo = labels.new_full((b, hp, wp), big)
    hi = labels.new_full((b, hp, wp), small)
    lo[:, dy : dy + h, dx : dx + w] = labels
    hi[:, dy : dy + h, dx : dx + w] = labels
    cells = (b, hp // window, window, wp // window, window)
    cell_min = lo.view(cells).amin(dim=(2, 4))
    cell_max = hi.view(cells).amax(dim=(2, 4))
    # every cell keeps at least one valid pixel (pads are < window), so min == max is well defined
    pure = cell_min == cell_max
    pure = pure.repeat_interleave(window, dim=1).repeat_interleave(window, dim=2)
    return pure[:, dy : dy + h, dx : dx + w]


def pure_mask(
    lr: torch.Tensor,
    num_centres: int = DEFAULT_CENTRES,
    window: int = DEFAULT_WINDOW,
    shifts: Sequence[Shift] | None = None,
) -> torch.Tensor:
    """(B, H, W) bool, True = pure: the union (CSMF) over ``shifts`` of `pure_cells` on the colour labels.

    ``shifts=None`` fuses the plain grid with the half-window diagonal shift (`diagonal_shift`).
    """
    grids = diagonal_shift(window) if shifts is None else _check_shifts(shifts, window)
    labels = colour_labels(lr, colour_centres(num_centres))
    mask = pure_cells(labels, window, grids[0])
    for shift in grids[1:]:
        mask |= pure_cells(labels, window, shift)
    return mask


@dataclass(frozen=True)
class PurePassConfig:
    """Every RECONSTRUCTED choice of Pure-Pass as a knob (spec §2.3-§2.4); defaults as calibrated (§2.7).

    num_centres: K hue-spaced colour centres. window: cell side w. shifts: grid offsets (dy, dx) whose
    masks are OR-ed (None = ((0, 0), (w//2, w//2))). compensation: what a pure token gets in a skipped
    mixer ("value": proj(v), "zero": nothing). targets: mixers the mask skips ("ac_msa", "sw_msa").
    """

    num_centres: int = DEFAULT_CENTRES
    window: int = DEFAULT_WINDOW
    shifts: tuple[Shift, ...] | None = None
    compensation: str = "value"
    targets: tuple[str, ...] = ("ac_msa",)

    def __post_init__(self) -> None:
        _check_centres(self.num_centres)
        _check_window(self.window)
        if self.shifts is not None:
            # lists (from YAML or JSON) become tuples, so the config stays hashable
            object.__setattr__(self, "shifts", _check_shifts(self.shifts, self.window))
        if self.compensation not in COMPENSATIONS:
            raise ConfigError(
                f"Pure-Pass compensation must be one of {', '.join(COMPENSATIONS)}; got {self.compensation!r}"
            )
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        unknown = [t for t in targets if t not in TARGETS]
        if not targets or unknown:
            raise ConfigError(f"Pure-Pass targets must be a non-empty subset of {', '.join(TARGETS)}; got {targets}")
        object.__setattr__(self, "targets", targets)

    @property
    def grid_shifts(self) -> tuple[Shift, ...]:
        """The shifts actually fused (the diagonal pair when ``shifts`` is None)."""
        return diagonal_shift(self.window) if self.shifts is None else self.shifts

    def mask(self, lr: torch.Tensor) -> torch.Tensor:
        """(B, H, W) bool pure mask of ``lr`` (B, 3, H, W) in [0, 1]."""
        return pure_mask(lr, self.num_centres, self.window, self.grid_shifts)


# --------------------------------------------------------------------------------------------------
# Validation: one-line ConfigErrors that name the bad value.


def _is_int(value: object) -> bool:
    # numpy integers pass (configs built from arrays); bools do not, though Python counts them as ints
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_centres(num_centres: int) -> None:
    if not _is_int(num_centres) or num_centres < 1:
        raise ConfigError(f"Pure-Pass num_centres must be an integer >= 1; got {num_centres!r}")


def _check_window(window: int) -> None:
    if not _is_int(window) or window < 1:
        raise ConfigError(f"Pure-Pass window must be an integer >= 1; got {window!r}")


def _check_shift(shift: Sequence[int], window: int) -> Shift:
    try:
        dy, dx = shift
    except (TypeError, ValueError):
        raise ConfigError(f"a Pure-Pass shift is a pair (dy, dx); got {shift!r}") from None
    if not (_is_int(dy) and _is_int(dx) and 0 <= dy < window and 0 <= dx < window):
        raise ConfigError(f"Pure-Pass shift {tuple(shift)!r} must be integers in [0, {window}) (the window)")
    return (int(dy), int(dx))


def _check_shifts(shifts: Sequence[Sequence[int]], window: int) -> tuple[Shift, ...]:
    if isinstance(shifts, str) or not isinstance(shifts, Sequence) or len(shifts) == 0:
        raise ConfigError(f"Pure-Pass shifts must be a non-empty list of (dy, dx) pairs; got {shifts!r}")
    return tuple(_check_shift(s, window) for s in shifts)


# --------------------------------------------------------------------------------------------------
# PP-ATD-light: ATD-light whose AC-MSA skips pure tokens (spec §2.4, §2.8).


class PureCategoryAttention(CategoryAttention):
    """AC-MSA with Pure-Pass: only impure tokens are sorted, grouped and attended.

    A pure token's output is the compensation: its own value vector through the branch's `proj`
    ("value", RECONSTRUCTED) or nothing ("zero"). With no pure token this is the plain AC-MSA,
    computed by the same code. The record holds the impure map (the expensive path) and the work.
    """

    routed = True

    def __init__(self, dim: int, num_heads: int, category_size: int, qkv_bias: bool = True) -> None:
        super().__init__(dim, num_heads, category_size, qkv_bias)
        self.compensation = "value"

    def forward(self, qkv: torch.Tensor, sim: torch.Tensor, pure: torch.Tensor | None = None) -> torch.Tensor:
        """pure: (B, h, w) bool on the token grid (None or all False: the plain AC-MSA)."""
        if pure is None or not bool(pure.any()):
            out = super().forward(qkv, sim)
            if pure is not None:
                self.record = MixerRecord(work=self.record.work, expensive=~pure)
            return out
        b, n, c3 = qkv.shape
        c = c3 // 3
        flat = pure.reshape(b, n)
        mixed = qkv[..., 2 * c :].clone() if self.compensation == "value" else qkv.new_zeros(b, n, c)
        work = MixerWork(0, 0, 0, b * n * c * c)  # the projection runs on every token
        for i in range(b):  # images differ in how many impure tokens they have
            impure = (~flat[i]).nonzero()[:, 0]
            if impure.numel() == 0:
                continue
            order = category_sort(sim[i, impure].argmax(dim=-1)[None])  # only impure tokens are sorted
            tokens = impure[order]  # (1, n_u) token indices in category order
            scatter_tokens_(mixed[i : i + 1], tokens, self.group_attention(take_tokens(qkv[i : i + 1], tokens)))
            attended = self.record.work
            work = work + MixerWork(attended.queries, attended.keys, attended.groups,
                                    attended.macs - attended.queries * c * c)
        out = self.proj(mixed)
        if self.compensation == "zero":
            out = out.masked_fill(flat[..., None], 0.0)
        self.record = MixerRecord(work=work, expensive=~pure)
        return out


class PPATDLight(ATDLight):
    """PP-ATD-light: ATD-light (same weights, same keys, zero extra parameters) whose AC-MSA skips the
    pure pixels of the input (spec §2.8). The mask is computed once per forward on the padded LR
    input, before the mean is subtracted, and used by all layers. `set_pure_pass(False)` gives
    ATD-light's output exactly."""

    arch = "pp_atd_light"

    def __init__(
        self,
        scale: int = 4,
        pp_num_centres: int = DEFAULT_CENTRES,
        pp_window: int = DEFAULT_WINDOW,
        pp_shifts: Sequence[Sequence[int]] | None = None,
        pp_compensation: str = "value",
        pp_targets: Sequence[str] = ("ac_msa",),
        **kwargs: Any,
    ) -> None:
        pure_pass = PurePassConfig(pp_num_centres, pp_window, pp_shifts, pp_compensation, pp_targets)
        if pure_pass.targets != ("ac_msa",):
            raise ConfigError(f"PP-ATD-light skips AC-MSA only; pp_targets {list(pp_targets)} is not offered")
        super().__init__(scale, category_attention=PureCategoryAttention, **kwargs)
        self.pure_pass = pure_pass
        self.pp_enabled = True
        self.config.update(pp_num_centres=pp_num_centres, pp_window=pp_window,
                           pp_shifts=None if pp_shifts is None else [list(s) for s in pure_pass.shifts],
                           pp_compensation=pp_compensation, pp_targets=list(pure_pass.targets))
        for m in self.modules():
            if isinstance(m, PureCategoryAttention):
                m.compensation = pp_compensation

    def set_pure_pass(self, enabled: bool) -> None:
        """Pure-Pass on (default) or off (then the network is ATD-light)."""
        self.pp_enabled = bool(enabled)

    def pure_tokens(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.pure_pass.mask(x) if self.pp_enabled else None

    def pure_share(self) -> float | None:
        """Share of pure pixels in the last forward (of the padded input), None before any."""
        records = [r for r in mixer_records(self, routed_only=True) if r.expensive is not None]
        return 1.0 - records[0].expensive.float().mean().item() if records else None


ARCHITECTURES = {"pp_atd_light": PPATDLight}


def detect(state_dict: Mapping[str, torch.Tensor]) -> None:
    """A Pure-Pass network's weights are those of its base (ATD-light): detection finds the base."""
    return None


def build(arch: str, config: dict[str, Any]) -> SRNetwork:
    return ARCHITECTURES[arch](**config)
