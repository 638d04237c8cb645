"""Training losses against plain reference formulas (spec arch-camixer.md §12.4)."""

import math

import cv2
import numpy as np
import torch
from conftest import photo

from detailsr.metrics import erp_row_weights
from detailsr.train import l1_loss, ws_l1_loss


def pair():
    """A real photo and a blurred copy: (N, 3, H, W) float in [0, 1]."""
    rgb = cv2.imread(str(photo("coffee")), cv2.IMREAD_COLOR)[:64, :128, ::-1].astype(np.float32) / 255
    blurred = cv2.GaussianBlur(np.ascontiguousarray(rgb), (5, 5), 1.5)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]  # noqa: E731
    return to(blurred), to(rgb)


def test_l1_is_the_mean_absolute_error():
    pred, target = pair()
    assert l1_loss(pred, target).item() == np.abs(pred.numpy() - target.numpy()).mean().item()


def test_ws_l1_weights_rows_by_their_latitude_in_the_panorama():
    pred, target = pair()
    pred, target = torch.cat([pred, pred.flip(-1)]), torch.cat([target, target])
    top = torch.tensor([0, 480])
    got = ws_l1_loss(pred, target, top, erp_rows=1024)
    # plain loops from the spec's formula
    num = den = 0.0
    error = (pred.double() - target.double()).abs().numpy()
    for i in range(2):
        for r in range(64):
            w = math.cos((int(top[i]) + r - 512 + 0.5) * math.pi / 1024)
            num += w * error[i, :, r, :].sum()
            den += w * 3 * 128
    assert got.dtype == torch.float64 and abs(got.item() - num / den) < 1e-12
    # a whole panorama (top 0, all rows) uses the WS metrics' row weights
    full = ws_l1_loss(pred[:1], target[:1], torch.tensor([0]), erp_rows=64)
    w = torch.from_numpy(erp_row_weights(64)).view(1, 1, 64, 1)
    expected = (w * (pred[:1].double() - target[:1].double()).abs()).sum() / (w.expand(1, 3, 64, 128).sum())
    assert abs(full.item() - expected.item()) < 1e-12
    # at the equator the weights are near 1: close to plain L1 there
    equator = ws_l1_loss(pred[:1], target[:1], torch.tensor([480]), erp_rows=1024)
    assert abs(equator.item() - l1_loss(pred[:1].double(), target[:1].double()).item()) < 1e-3
