"""PP-ATD-light: ATD-light's weights, AC-MSA skipping the pure tokens for real (spec papers.md §2.4, §2.8)."""

import cv2
import numpy as np
import pytest
import torch
from conftest import photo
from conftest import run_cli as detailsr

import detailsr as ds
from detailsr.flops import executed_macs
from detailsr.models.atd import ATDLight
from detailsr.models.purepass import PPATDLight, PureCategoryAttention, colour_centres, colour_labels, pure_mask
from detailsr.models.record import mixer_records


def atd_light_weights(scale=2, seed=0) -> dict:
    """ATD-light's seeded init with every float tensor moved off its structured init (all terms act)."""
    torch.manual_seed(seed)
    sd = ATDLight(scale=scale).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in sd.items()}


@pytest.fixture(scope="module")
def pair():
    """(ATD-light, PP-ATD-light) with the same weights, loaded through the registry."""
    sd = atd_light_weights()
    return ds.load_model(sd), ds.load_model(sd, arch="pp-atd-light")


def coffee(h=48, w=64) -> torch.Tensor:
    """A crop of the cup on the table: flat saucer and table, detailed rim (1 x 3 x h x w in [0, 1])."""
    rgb = cv2.imread(str(photo("coffee")), cv2.IMREAD_COLOR)[40 : 40 + h, 100 : 100 + w, ::-1]
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


def no_pure_pixel(h=32, w=48) -> torch.Tensor:
    """A checkerboard of two colours of different classes: no w x w cell is uniform."""
    centres = colour_centres(24)
    board = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2
    return torch.where(board.bool()[None, None], centres[0].view(1, 3, 1, 1), centres[12].view(1, 3, 1, 1))


def test_same_weights_same_parameters_zero_extra(pair):
    atd, pp = pair
    assert (pp.arch, pp.scale) == ("pp_atd_light", 2)
    assert pp.state_dict().keys() == atd.state_dict().keys()
    assert sum(p.numel() for p in pp.parameters()) == sum(p.numel() for p in atd.parameters()) == 753_204
    assert all(torch.equal(a, b) for a, b in zip(atd.state_dict().values(), pp.state_dict().values(), strict=True))


@torch.no_grad()
def test_disabled_or_without_pure_pixels_it_is_atd_light(pair):
    atd, pp = pair
    x = coffee()
    pp.set_pure_pass(False)
    assert torch.equal(pp(x), atd(x))
    pp.set_pure_pass(True)
    checker = no_pure_pixel()
    assert not pure_mask(checker).any()
    assert (pp(checker) - atd(checker)).abs().max() <= 1e-5
    assert pp.pure_share() == 0.0


@torch.no_grad()
def test_pure_tokens_skip_the_category_attention_for_real(pair):
    atd, pp = pair
    x = coffee()
    y_atd, y_pp = atd(x), pp(x)
    pure = pure_mask(x)  # 48 x 64 is a multiple of ATD-light's window: no padding
    assert pp.pure_share() == pytest.approx(pure.float().mean().item())
    assert 0.2 < pp.pure_share() < 0.9
    assert not torch.equal(y_atd, y_pp)
    layers = 24
    aca_atd, aca_pp = atd.executed_work()["attn_aca"], pp.executed_work()["attn_aca"]
    assert aca_atd.queries == layers * 48 * 64
    assert aca_pp.queries == layers * int((~pure).sum())  # only impure tokens are attended
    assert aca_pp.macs < aca_atd.macs
    # the op-by-op count of what ran agrees with the mixers' own records of the work they skipped
    saved_by_count = executed_macs(atd, x) - executed_macs(pp, x)
    assert saved_by_count == aca_atd.macs - aca_pp.macs
    for record in mixer_records(pp, routed_only=True):
        assert torch.equal(record.expensive, ~pure)


def reference_pure_category_attention(mixer, qkv, sim, pure):
    """A plain loop over images and groups, written from the spec (§2.8): impure tokens sorted by
    category (stable order of the official sort), cut into groups padded with the flipped tail,
    attended; pure tokens get proj(v) ("value") or 0 ("zero")."""
    b, n, c3 = qkv.shape
    c, heads = c3 // 3, mixer.num_heads
    d = c // heads
    scale = torch.clamp(mixer.logit_scale, max=np.log(100.0)).exp()
    out = torch.zeros(b, n, c)
    for i in range(b):
        impure = [t for t in range(n) if not pure[i].flatten()[t]]
        cats = sim[i].argmax(-1)
        order = torch.sort(cats[impure][None], dim=-1, stable=False).indices[0].tolist()
        tokens = [impure[j] for j in order]
        gs = min(len(tokens), mixer.category_size)
        for start in range(0, len(tokens), gs):
            group = tokens[start : start + gs]
            keys = group + tokens[::-1][: gs - len(group)] if len(group) < gs else group
            z = qkv[i, keys]
            for h in range(heads):
                q = z[: len(group), h * d : (h + 1) * d]
                k = z[:, c + h * d : c + (h + 1) * d]
                v = z[:, 2 * c + h * d : 2 * c + (h + 1) * d]
                out[i, group, h * d : (h + 1) * d] = torch.softmax(q @ k.T * scale, -1) @ v
        for t in range(n):
            if pure[i].flatten()[t]:
                out[i, t] = qkv[i, t, 2 * c :] if mixer.compensation == "value" else 0
    y = mixer.proj(out)
    if mixer.compensation == "zero":
        y = y.masked_fill(pure.flatten(1)[..., None], 0.0)
    return y


@pytest.mark.parametrize("compensation", ["value", "zero"])
@torch.no_grad()
def test_pure_category_attention_against_a_plain_loop(compensation):
    torch.manual_seed(0)
    mixer = PureCategoryAttention(dim=8, num_heads=2, category_size=16).eval()
    mixer.compensation = compensation
    qkv, sim = torch.randn(2, 6 * 7, 24), torch.randn(2, 6 * 7, 5)
    pure = torch.rand(2, 6, 7) < 0.4  # 42 tokens, about 25 impure: two groups, the last one padded
    got = mixer(qkv, sim, pure)
    assert (got - reference_pure_category_attention(mixer, qkv, sim, pure)).abs().max() <= 1e-5
    all_pure = torch.ones(2, 6, 7, dtype=torch.bool)
    assert mixer(qkv, sim, all_pure).shape == (2, 42, 8) and mixer.record.work.queries == 0


@torch.no_grad()
def test_a_batch_equals_its_images(pair):
    _, pp = pair
    a, b = coffee(), no_pure_pixel(48, 64)
    both = pp(torch.cat([a, b]))
    assert (both[:1] - pp(a)).abs().max() <= 1e-5
    assert (both[1:] - pp(b)).abs().max() <= 1e-5


def test_training_forward_and_backward():
    torch.manual_seed(0)
    pp = PPATDLight(scale=2, depths=(2,), num_heads=(2,), embed_dim=16, num_tokens=8, reducted_dim=4).train()
    x = coffee(32, 32)
    pp(x).mean().backward()
    assert pp.pure_share() > 0
    assert all(p.grad is not None for p in pp.parameters() if p.requires_grad and p.dim() > 1)


def test_routing_maps_draw_the_impure_pixels(pair):
    _, pp = pair
    x = coffee(45, 61)  # padded by the network: the map is cropped back
    share = ds.routing_maps(pp, x)
    assert share.shape == (45, 61)
    labels_mask = pure_mask(torch.nn.functional.pad(x, (0, 3, 0, 3), mode="replicate"))[0, :45, :61]
    assert set(np.unique(share)) <= {0.0, 1.0}
    assert (share == 0).mean() > 0.2
    # away from the padded border the map is the mask of the input itself
    assert np.array_equal(share[:40, :56] == 0, labels_mask[:40, :56].numpy())


def test_labels_of_the_photo_cover_several_classes():
    labels = colour_labels(coffee(), colour_centres(24))
    assert len(torch.unique(labels)) >= 3


def test_bench_and_flops_commands_take_pp_models():
    bench = detailsr("bench", "-m", "atd-light-x2", "pp-atd-light-x2", "--untrained", "--size", "32x32", "--runs", "1",
                     "--warmup", "0", "--threads", "1")
    assert bench.returncode == 0, bench.stderr
    assert "pp-atd-light-x2" in bench.stdout
    flops = detailsr("flops", "-m", "pp-atd-light-x2", "--untrained", "--image", photo("gravel"))
    assert flops.returncode == 0, flops.stderr
    gravel_share = float(flops.stdout.split("routing")[1].split("%")[0])
    flat = detailsr("flops", "-m", "pp-atd-light-x2", "--untrained", "--image", photo("coffee"))
    assert gravel_share > float(flat.stdout.split("routing")[1].split("%")[0])  # the flat-rich photo skips more


def test_the_zoo_builds_pp_on_the_atd_light_files():
    from detailsr.models import zoo

    for scale in (2, 3, 4):
        pp, base = zoo.get(f"pp-atd-light-x{scale}"), zoo.get(f"atd-light-x{scale}")
        assert (pp.file, pp.url, pp.params, pp.arch) == (base.file, base.url, base.params, "pp_atd_light")


# Pure-Pass window routing for CAMixerSR (training-free): the predictor's windows less the pure ones.


def photo_crop(name, top, left, h=48, w=48) -> np.ndarray:
    rgb = cv2.imread(str(photo(name)), cv2.IMREAD_COLOR)[top : top + h, left : left + w, ::-1]
    return np.ascontiguousarray(rgb)


@pytest.fixture(scope="module")
def camixer():
    return ds.load_model(routing="purepass", ratio=0.5)  # the embedded CAMixerSR-S


def test_a_flat_crop_gets_less_attention_than_a_textured_one(camixer):
    flat = photo_crop("coffee", 0, 0)  # the dark, even corner behind the cup
    textured = np.repeat(photo_crop("gravel", 0, 0)[:, :, :1], 3, axis=2)  # gravel: busy everywhere
    flat_share = ds.routing_maps(camixer, flat).mean()
    textured_share = ds.routing_maps(camixer, textured).mean()
    assert flat_share < textured_share
    camixer.set_routing("learned")
    try:  # the learned routing alone attends the same share of both (K is set by the ratio)
        assert ds.routing_maps(camixer, flat).mean() == ds.routing_maps(camixer, textured).mean()
    finally:
        camixer.set_routing("purepass")


@torch.no_grad()
def test_purepass_routing_only_removes_windows_from_the_learned_choice(camixer):
    x = torch.from_numpy(photo_crop("coffee", 100, 100, 64, 80)).permute(2, 0, 1)[None].float() / 255
    camixer.set_routing("learned")
    camixer(x)
    learned = [set(r.keep[0].tolist()) for r in mixer_records(camixer, routed_only=True)]
    macs_learned = executed_macs(camixer, x)
    camixer.set_routing("purepass")
    chosen = []  # each mixer's learned choice in this forward, before the veto (the real `_select` runs)
    for m in camixer.mixers():
        m._select = lambda logits, select=m._select: chosen.append(set(select(logits)[0].tolist())) or select(logits)
    try:
        camixer(x)
    finally:
        for m in camixer.mixers():
            del m._select
    kept = [set(r.keep[0].tolist()) for r in mixer_records(camixer, routed_only=True)]
    # a veto changes the features of later layers, and so their learned choice: compare each layer
    # with its own choice, and the first layer (same input in both runs) with the learned run too
    assert all(k <= c for k, c in zip(kept, chosen, strict=True))
    assert kept[0] <= learned[0]
    assert sum(map(len, kept)) < sum(map(len, chosen))
    assert executed_macs(camixer, x) < macs_learned


@torch.no_grad()
def test_without_pure_pixels_purepass_routing_is_the_learned_one(camixer):
    x = no_pure_pixel(32, 48)
    y = camixer(x)
    camixer.set_routing("learned")
    try:
        assert torch.equal(camixer(x), y)
    finally:
        camixer.set_routing("purepass")
    both = camixer(torch.cat([x, coffee(32, 48)]))
    assert torch.equal(both[:1], y) and torch.equal(both[1:], camixer(coffee(32, 48)))


def test_routing_on_the_command_line(tmp_path):
    src = tmp_path / "a.png"
    cv2.imwrite(str(src), photo_crop("coffee", 0, 0, 32, 32)[:, :, ::-1])
    result = detailsr("upscale", src, "--routing", "purepass", "--pure-threshold", "0.75", "-q")
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(tmp_path / "a_x4.png")).shape == (128, 128, 3)
    refused = detailsr("flops", "-m", "esc-light-x4", "--untrained", "--routing", "purepass", "--size", "16x16")
    assert refused.returncode == 1 and "offers no choice of routing" in refused.stderr
    assert detailsr("upscale", src, "--routing", "pure").returncode == 2
    assert detailsr("upscale", src, "--pure-threshold", "1.5").returncode == 2


def test_eval_takes_the_pp_zoo_name(tmp_path):
    """`detailsr eval -m pp-atd-light-x2` on the cached ATD-light x2 file (here: seeded weights saved
    under the release file's name, as a download would leave it)."""
    from detailsr.models import zoo

    cache = tmp_path / "cache"
    target = cache / zoo.get("atd-light-x2").file
    target.parent.mkdir(parents=True)
    torch.save({"params_ema": atd_light_weights()}, target)
    data = tmp_path / "set"
    (data / "HR").mkdir(parents=True)
    cv2.imwrite(str(data / "HR" / "cup.png"), photo_crop("coffee", 0, 0, 32, 32)[:, :, ::-1])
    env = {"DETAILSR_CACHE": str(cache)}
    result = detailsr("eval", "-m", "pp-atd-light-x2", "-d", data, "-s", "2", "--json", tmp_path / "r.json", env=env)
    assert result.returncode == 0, result.stderr
    plain = detailsr("eval", "-m", "atd-light-x2", "-d", data, "-s", "2", "--json", tmp_path / "a.json", env=env)
    assert plain.returncode == 0, plain.stderr
    import json

    gflops = [json.loads((tmp_path / f).read_text())["datasets"]["set"]["images"]["cup.png"]["gflops"]
              for f in ("r.json", "a.json")]
    assert gflops[0] < gflops[1]  # the dark corner is mostly pure: PP executes less
