"""Pure-Pass mask (detailsr.models.purepass): the spec's calibration table, and the rules on synthetic images.

The acceptance is ../shared/spec/papers.md §2.7: pooled pure shares of the Set5 + Set14 LR bicubic
images, every row, to +-0.05 percentage points. The smaller tests pin each rule of §2.3/§2.8 down on
images built so that the answer is known by construction, and check `pure_cells` against a
deliberately naive loop over cells (`_reference_pure_cells`).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools

import cv2
import pytest
import torch
from conftest import photo, shared_file

from detailsr.errors import ConfigError
from detailsr.models.purepass import (
    DEFAULT_CENTRES,
    DEFAULT_WINDOW,
    PurePassConfig,
    colour_centres,
    colour_labels,
    diagonal_shift,
    pure_cells,
    pure_mask,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# ../shared/spec/papers.md §2.7: scale, K, w, base %, diag % (ratio), cross % (ratio)
CALIBRATION = [
    (2, 24, 4, 31.59, 38.79, 1.228, 40.76, 1.290),
    (3, 24, 4, 26.67, 33.94, 1.273, 36.13, 1.355),
    (4, 24, 4, 23.50, 30.75, 1.309, 32.73, 1.393),
    (2, 32, 4, 28.35, 34.95, 1.233, 36.77, 1.297),
    (2, 20, 4, 34.99, 42.64, 1.218, 44.72, 1.278),
    (2, 16, 4, 37.70, 45.91, 1.218, 47.92, 1.271),
    (3, 16, 4, 32.64, 40.90, 1.253, 43.23, 1.324),
    (4, 16, 4, 28.78, 37.52, 1.304, 39.94, 1.388),
    (2, 8, 8, 28.73, 36.17, 1.259, 38.11, 1.327),
    (3, 12, 4, 35.10, 44.52, 1.269, 47.19, 1.345),
    (4, 12, 4, 31.25, 40.83, 1.306, 43.70, 1.398),
]
PERCENT_TOL = 0.05  # the spec's tolerance, in percentage points
RATIO_TOL = 0.001  # the table rounds ratios to 3 decimals
SETS = {"Set5": 5, "Set14": 14}


def _read_rgb(path) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1], decoded losslessly as uint8 (the spec's method)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255


@functools.cache
def _lr_images(scale: int) -> tuple[torch.Tensor, ...]:
    images = []
    for set_name, count in SETS.items():
        folder = shared_file(f"datasets/{set_name}/LR_bicubic/X{scale}")
        files = sorted(folder.glob("*.png"))
        assert len(files) == count, f"{folder}: {len(files)} images, expected {count}"
        images += [_read_rgb(f) for f in files]
    return tuple(images)


@functools.cache
def _labels(scale: int, num_centres: int) -> tuple[torch.Tensor, ...]:
    centres = colour_centres(num_centres)
    return tuple(colour_labels(img, centres) for img in _lr_images(scale))


def _pooled_share(masks) -> float:
    """Percentage of pure pixels over all pixels of all images."""
    masks = list(masks)
    return 100 * sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)


def _union(labels: torch.Tensor, window: int, shifts) -> torch.Tensor:
    mask = torch.zeros(labels.shape, dtype=torch.bool)
    for shift in shifts:
        mask |= pure_cells(labels, window, shift)
    return mask


def _shift_sets(w: int) -> dict[str, tuple]:
    return {"base": ((0, 0),), "diag": ((0, 0), (w // 2, w // 2)), "cross": ((0, 0), (w // 2, 0), (0, w // 2))}


# --------------------------------------------------------------------------------------------------
# The calibration table (§2.7) on the real benchmark LR images


@pytest.mark.parametrize(
    "scale, num_centres, window, base, diag, diag_ratio, cross, cross_ratio",
    [pytest.param(*row, id=f"x{row[0]}-K{row[1]}-w{row[2]}") for row in CALIBRATION],
)
def test_calibration_table(scale, num_centres, window, base, diag, diag_ratio, cross, cross_ratio):
    shares = {
        name: _pooled_share(_union(lab, window, shifts) for lab in _labels(scale, num_centres))
        for name, shifts in _shift_sets(window).items()
    }
    expected = {"base": base, "diag": diag, "cross": cross}
    for name, value in expected.items():
        assert abs(shares[name] - value) <= PERCENT_TOL, f"{name}: measured {shares[name]:.3f} %, spec {value:.2f} %"
    assert abs(shares["diag"] / shares["base"] - diag_ratio) <= RATIO_TOL
    assert abs(shares["cross"] / shares["base"] - cross_ratio) <= RATIO_TOL


def test_public_api_reproduces_the_default_row():
    """pure_mask and PurePassConfig().mask, image by image, give the ×2 K=24 w=4 row (31.59 % -> 38.79 %)."""
    images = _lr_images(2)
    config = PurePassConfig()
    assert _pooled_share(pure_mask(img, shifts=((0, 0),)) for img in images) == pytest.approx(31.59, abs=PERCENT_TOL)
    assert _pooled_share(config.mask(img) for img in images) == pytest.approx(38.79, abs=PERCENT_TOL)
    assert _pooled_share(pure_mask(img) for img in images) == pytest.approx(38.79, abs=PERCENT_TOL)


# --------------------------------------------------------------------------------------------------
# pure_cells against a naive reference


def _reference_pure_cells(labels: torch.Tensor, window: int, shift: tuple[int, int]) -> torch.Tensor:
    """Plain loops over the cells of the grid starting at (-dy, -dx); a cell cut by the border keeps its valid part."""
    b, h, w = labels.shape
    dy, dx = shift
    grid = labels.tolist()
    out = torch.zeros(b, h, w, dtype=torch.bool)
    for n in range(b):
        for top in range(-dy, h, window):
            for left in range(-dx, w, window):
                rows = range(max(top, 0), min(top + window, h))
                cols = range(max(left, 0), min(left + window, w))
                values = {grid[n][y][x] for y in rows for x in cols}
                if len(values) == 1:
                    out[n, rows.start : rows.stop, cols.start : cols.stop] = True
    return out


def _blocky_labels(batch: int, h: int, w: int, block: int, seed: int) -> torch.Tensor:
    """Random two-label maps of block x block patches at a random offset, with 3 % of the pixels relabelled.

    Blocks a little larger than the window make both pure and impure cells common.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 2, (batch, h // block + 2, w // block + 2), generator=g)
    fine = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
    oy, ox = torch.randint(0, block, (2,), generator=g).tolist()
    labels = fine[:, oy : oy + h, ox : ox + w].clone()
    noise = torch.rand(batch, h, w, generator=g) < 0.03
    labels[noise] = torch.randint(0, 5, (int(noise.sum()),), generator=g)
    return labels


SIZES = [(7, 9), (13, 5), (11, 17), (1, 1), (3, 5), (1, 10), (9, 1), (16, 12)]


def _reference_cases(window: int):
    """(labels, shift) pairs: batch-2 label maps of odd and tiny sizes, under five grid shifts."""
    shifts = {(0, 0), (window // 2, window // 2), (window - 1, 0), (0, window - 1), (window - 1, window // 3)}
    for h, w in SIZES:
        labels = _blocky_labels(2, h, w, block=window + 2, seed=h * 100 + w * 10 + window)
        for shift in sorted(shifts):
            yield labels, shift


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 8])
def test_pure_cells_matches_reference(window):
    shares = []
    for labels, shift in _reference_cases(window):
        got = pure_cells(labels, window, shift)
        assert got.shape == labels.shape and got.dtype == torch.bool
        assert torch.equal(got, _reference_pure_cells(labels, window, shift)), (tuple(labels.shape), shift)
        shares.append(got.float().mean())
    if window > 1:  # the cases hold pure and impure cells alike, so the comparison means something
        assert 0.1 < torch.stack(shares).mean() < 0.9


# --------------------------------------------------------------------------------------------------
# Synthetic images whose mask is known by construction

CENTRES = colour_centres(DEFAULT_CENTRES)


def _image_of_labels(labels: torch.Tensor, jitter: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(B, 3, H, W) image whose pixels are the centres of ``labels``, optionally jittered (labels checked)."""
    img = CENTRES[labels].permute(0, 3, 1, 2).contiguous()
    if jitter:
        g = torch.Generator().manual_seed(seed)
        img = (img + jitter * (2 * torch.rand(img.shape, generator=g) - 1)).clamp(0, 1)
    assert torch.equal(colour_labels(img, CENTRES), labels), "the construction must keep every label"
    return img


def _noise_labels(batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random labels spanning all centres, where every pixel differs from its left neighbour."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(1, DEFAULT_CENTRES, (batch, h, w), generator=g)
    return steps.cumsum(2) % DEFAULT_CENTRES


def _checkerboard(h: int, w: int, a: int, b: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.where((yy + xx) % 2 == 0, a, b)[None]


@pytest.mark.parametrize("rgb", [(0.2, 0.5, 0.7), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (0.9, 0.1, 0.1)])
@pytest.mark.parametrize("h, w", [(16, 16), (13, 7), (2, 3)])
def test_flat_image_is_all_pure(rgb, h, w):
    img = torch.tensor(rgb).view(1, 3, 1, 1).expand(2, 3, h, w)
    assert pure_mask(img).all()
    assert pure_mask(img, num_centres=7, window=8, shifts=((0, 0),)).all()


def test_noise_has_no_pure_pixel():
    labels = _noise_labels(2, 21, 30, seed=3)
    assert len(labels.unique()) == DEFAULT_CENTRES  # the noise spans every centre
    img = _image_of_labels(labels, jitter=0.02, seed=3)
    assert not pure_mask(img).any()
    # every cell the plain grid cuts at the right border keeps >= 2 columns (30 % w), so none is uniform
    for w in (2, 3, 4, 8):
        assert not pure_mask(img, window=w, shifts=((0, 0),)).any()
    assert not pure_mask(img, shifts=_shift_sets(4)["cross"]).any()


def test_checkerboard_of_two_centres_has_no_pure_pixel():
    labels = _checkerboard(12, 15, 0, 12)
    img = _image_of_labels(labels)
    assert not pure_mask(img).any()
    assert not pure_mask(img, shifts=_shift_sets(4)["cross"]).any()
    assert not pure_mask(img, window=2, shifts=((0, 0),)).any()
    assert pure_mask(img, window=1).all()  # 1x1 cells hold one label each


def test_a_cell_cut_to_one_pixel_is_pure():
    """The border rule: a cut cell is judged on its valid pixels, and a single pixel is uniform."""
    img = _image_of_labels(_checkerboard(12, 15, 0, 12))
    # w = 2 shifted by (1, 1): cells [-1, 1) x [-1, 1) and [11, 13) x [-1, 1) keep one pixel each
    expected = torch.zeros(1, 12, 15, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 11, 0] = True
    assert torch.equal(pure_mask(img, window=2, shifts=((1, 1),)), expected)


def test_flat_half_is_pure_except_the_cells_on_the_border():
    h, w, half, win = 13, 22, 11, 4
    labels = _checkerboard(h, w, 5, 17)
    labels[:, :, :half] = 9
    img = _image_of_labels(labels)
    masks = {}
    for shift in [(0, 0), (2, 2)]:
        expected = torch.zeros(1, h, w, dtype=torch.bool)
        for top in range(-shift[0], h, win):
            for left in range(-shift[1], w, win):
                if left + win <= half:  # the whole cell lies in the flat half
                    expected[:, max(top, 0) : top + win, max(left, 0) : left + win] = True
        masks[shift] = pure_mask(img, shifts=(shift,))
        assert torch.equal(masks[shift], expected), shift
        assert torch.equal(masks[shift], _reference_pure_cells(labels, win, shift))
    # base grid: flat cells end at column 8; the shifted grid: at column 10; the union keeps the wider
    assert masks[(0, 0)][0, 0].tolist() == [True] * 8 + [False] * 14
    assert masks[(2, 2)][0, 0].tolist() == [True] * 10 + [False] * 12
    assert torch.equal(pure_mask(img), masks[(0, 0)] | masks[(2, 2)])


def test_only_the_shifted_grid_catches_a_block_at_offset_2_2():
    labels = _noise_labels(1, 16, 16, seed=7)
    labels[:, 2:6, 2:6] = 4
    img = _image_of_labels(labels, jitter=0.02, seed=7)
    block = torch.zeros(1, 16, 16, dtype=torch.bool)
    block[:, 2:6, 2:6] = True
    assert not pure_mask(img, shifts=((0, 0),)).any()
    assert torch.equal(pure_mask(img, shifts=((2, 2),)), block)
    assert torch.equal(pure_mask(img), block)  # default: diagonal fusion
    assert torch.equal(PurePassConfig().mask(img), block)


# --------------------------------------------------------------------------------------------------
# Centres and labels


def test_default_centres_are_24_hue_spaced_colours():
    centres = colour_centres()
    assert centres.shape == (24, 3) and centres.dtype == torch.float32
    assert not centres.requires_grad and not isinstance(centres, torch.nn.Parameter)
    assert len({tuple(c) for c in centres.tolist()}) == 24
    assert 0 <= centres.min() and centres.max() <= 1
    for k, rgb in enumerate(centres.tolist()):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        assert (h, s, v) == pytest.approx((k / 24, 0.9, 0.9), abs=1e-6), k


def test_centres_for_other_k():
    assert colour_centres(1).tolist() == [pytest.approx([0.9, 0.09, 0.09])]  # hue 0: red
    for k in (2, 8, 12, 16, 20, 32):
        centres = colour_centres(k)
        assert centres.shape == (k, 3)
        assert torch.equal(colour_labels(centres.T[None, :, None, :], centres), torch.arange(k)[None, None])


def test_ties_go_to_the_smaller_index():
    pixel = torch.tensor([0.25, 0.0, 0.0]).view(1, 3, 1, 1)  # exactly halfway, in binary floats too
    assert colour_labels(pixel, torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]])).item() == 0
    assert colour_labels(pixel, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])).item() == 0
    duplicate = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.2, 0.2], [0.2, 0.2, 0.2]])
    assert colour_labels(torch.full((1, 3, 2, 2), 0.2), duplicate).eq(1).all()


def _photo_tensor(name: str, h: int = 64, w: int = 80) -> torch.Tensor:
    return _read_rgb(photo(name))[:, :, :h, :w]


def test_mask_is_unchanged_by_an_offset_that_keeps_labels():
    img = _photo_tensor("coffee", 120, 160)
    labels = colour_labels(img, CENTRES)
    # move every pixel 5 % of the way to its own centre: its nearest centre stays the nearest
    own = CENTRES[labels].permute(0, 3, 1, 2)
    moved = img + 0.05 * (own - img)
    assert not torch.equal(moved, img)
    assert torch.equal(colour_labels(moved, CENTRES), labels)
    assert torch.equal(pure_mask(moved), pure_mask(img))
    assert 0 < pure_mask(img).float().mean() < 1  # a real photo: some flat cells, some detail


def test_batch_equals_singles():
    a, b = _photo_tensor("chelsea"), _photo_tensor("coffee")
    batch = pure_mask(torch.cat([a, b]))
    assert batch.shape == (2, 64, 80) and batch.dtype == torch.bool
    assert torch.equal(batch[0:1], pure_mask(a)) and torch.equal(batch[1:2], pure_mask(b))
    assert not torch.equal(batch[0], batch[1])


def test_tiny_images():
    one = torch.rand(2, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    assert pure_mask(one).all()  # a lone pixel is a uniform cell
    flat = torch.full((1, 3, 3, 5), 0.4)
    assert pure_mask(flat).all()
    board = _image_of_labels(_checkerboard(3, 5, 2, 14))
    assert pure_mask(board).shape == (1, 3, 5) and not pure_mask(board).any()
    # a strip thinner than the window: only its own labels count
    strip = _image_of_labels(torch.tensor([[[3, 3, 3, 3, 3, 8, 8]]]))
    assert pure_mask(strip, shifts=((0, 0),)).tolist() == [[[True] * 4 + [False] * 3]]
    # shifted by 3 its cells are [-3, 1), [1, 5), [5, 9): cut to {0}, {1..4}, {5, 6}, each uniform
    assert pure_mask(strip, shifts=((0, 3),)).tolist() == [[[True] * 7]]


def test_labels_do_not_depend_on_the_input_dtype():
    """Distances are float32 whatever comes in; greys, whose ties float rounding decides, included."""
    img = _photo_tensor("chelsea")
    assert torch.equal(pure_mask(img.double()), pure_mask(img))
    assert colour_labels(img, CENTRES).dtype == torch.int64
    levels = torch.arange(256, dtype=torch.float64) / 255
    assert torch.equal(levels.float(), torch.arange(256, dtype=torch.float32) / 255)  # uint8 / 255 either way
    greys = levels.view(1, 1, 1, 256).expand(1, 3, 1, 256)
    assert torch.equal(colour_labels(greys, CENTRES), colour_labels(greys.float(), CENTRES))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    """Every op of the distance is correctly rounded float32, so even the rounding-decided grey ties agree."""
    img = torch.cat([_photo_tensor("chelsea"), _photo_tensor("coffee")])
    assert torch.equal(pure_mask(img.cuda()).cpu(), pure_mask(img))
    greys = (torch.arange(256) / 255).view(1, 1, 1, 256).expand(1, 3, 1, 256)
    for k in (8, 12, 16, 24, 32):
        centres = colour_centres(k)
        assert torch.equal(colour_labels(greys.cuda(), centres).cpu(), colour_labels(greys, centres)), k


def test_bad_tensors_raise():
    with pytest.raises(ValueError, match="B, 3, H, W"):
        colour_labels(torch.zeros(3, 4, 4), CENTRES)
    with pytest.raises(ValueError, match="K, 3"):
        colour_labels(torch.zeros(1, 3, 4, 4), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="B, H, W"):
        pure_cells(torch.zeros(4, 4, dtype=torch.long), 4, (0, 0))


# --------------------------------------------------------------------------------------------------
# Configuration


def test_config_defaults():
    config = PurePassConfig()
    assert (config.num_centres, config.window) == (DEFAULT_CENTRES, DEFAULT_WINDOW) == (24, 4)
    assert config.shifts is None and config.grid_shifts == ((0, 0), (2, 2)) == diagonal_shift(4)
    assert config.compensation == "value" and config.targets == ("ac_msa",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 8  # type: ignore[misc]
    assert diagonal_shift(8) == ((0, 0), (4, 4)) and diagonal_shift(5) == ((0, 0), (2, 2))


def test_config_normalises_lists():
    config = PurePassConfig(window=8, shifts=[[0, 0], [4, 0], [0, 4]], targets=["ac_msa", "sw_msa"])
    assert config.shifts == ((0, 0), (4, 0), (0, 4)) and config.targets == ("ac_msa", "sw_msa")
    assert hash(config) == hash(PurePassConfig(window=8, shifts=((0, 0), (4, 0), (0, 4)), targets=("ac_msa", "sw_msa")))
    assert PurePassConfig(targets="sw_msa").targets == ("sw_msa",)
    assert PurePassConfig(compensation="zero", shifts=((1, 3),)).shifts == ((1, 3),)
    img = _photo_tensor("coffee")
    assert torch.equal(config.mask(img), pure_mask(img, 24, 8, [(0, 0), (4, 0), (0, 4)]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_centres": 0}, "num_centres"),
        ({"num_centres": -3}, "num_centres"),
        ({"num_centres": 2.5}, "num_centres"),
        ({"num_centres": True}, "num_centres"),
        ({"window": 0}, "window"),
        ({"window": "4"}, "window"),
        ({"shifts": ((0, 4),)}, r"\[0, 4\)"),
        ({"shifts": ((-1, 0),)}, r"\[0, 4\)"),
        ({"window": 8, "shifts": ((0, 0), (8, 8))}, r"\[0, 8\)"),
        ({"shifts": ((0, 0, 0),)}, "pair"),
        ({"shifts": (0, 0)}, "pair"),
        ({"shifts": ()}, "non-empty"),
        ({"shifts": "diag"}, "non-empty"),
        ({"compensation": "mean"}, "compensation"),
        ({"targets": ("tdca",)}, "targets"),
        ({"targets": ()}, "targets"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        PurePassConfig(**kwargs)
    assert "\n" not in str(err.value) and str(err.value)


def test_functions_reject_bad_values():
    img = torch.zeros(1, 3, 4, 4)
    for call in (
        lambda: pure_mask(img, num_centres=0),
        lambda: pure_mask(img, window=0),
        lambda: pure_mask(img, shifts=((4, 0),)),
        lambda: pure_mask(img, shifts=[]),
        lambda: pure_cells(torch.zeros(1, 4, 4, dtype=torch.long), 4, (0, 5)),
        lambda: colour_centres(0),
        lambda: diagonal_shift(0),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert "\n" not in str(err.value)
