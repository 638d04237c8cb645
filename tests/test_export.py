"""ONNX export: CAMixerSR-S (embedded weights, routing in the graph) and ESC-light (random weights)
run in onnxruntime at sizes other than the export size and match PyTorch; what cannot be exported
is refused with one clear error and leaves no file."""

import os

import numpy as np
import pytest
import torch
from conftest import photo, run_cli

import detailsr
from detailsr.errors import ConfigError
from detailsr.imageio import read_image, to_tensor
from detailsr.inference import run
from detailsr.models.registry import build_untrained

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from detailsr.export import export_onnx  # noqa: E402

EXPORT_SIZE = (64, 64)
SIZES = ((48, 64), (64, 80))  # LR crops (H, W), neither the export size nor a multiple of 16 or 32
TOLERANCE = 1e-4


def crop(name: str, h: int, w: int, top: int = 20, left: int = 30) -> torch.Tensor:
    return to_tensor(read_image(photo(name)).pixels)[:, :, top : top + h, left : left + w].contiguous()


def session(path) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(sess, net, x: torch.Tensor, ratio=None) -> float:
    y = sess.run(None, {"input": x.numpy()})[0]
    ref = run(net, x, ratio=ratio)
    assert y.shape == tuple(ref.shape)
    return float(np.abs(y - ref.numpy()).max())


@pytest.fixture(scope="module")
def camixer():
    return detailsr.load_model()


@pytest.fixture(scope="module")
def camixer_onnx(camixer, tmp_path_factory):
    """The CAMixerSR-S graph at a ratio, exported once per module."""
    folder, paths = tmp_path_factory.mktemp("camixer"), {}

    def exported(ratio):
        if ratio not in paths:
            paths[ratio] = export_onnx(camixer, folder / f"camixer-{ratio}.onnx", ratio=ratio, example_size=EXPORT_SIZE)
        return paths[ratio]

    return exported


@pytest.mark.parametrize("ratio", [0.5, "auto"])
def test_camixersr_s_runs_in_onnxruntime_at_other_sizes(camixer, camixer_onnx, ratio, one_thread):
    sess = session(camixer_onnx(ratio))
    dims = sess.get_inputs()[0].shape
    assert dims[0] == "batch" and dims[2] == "height" and dims[3] == "width"
    for h, w in SIZES:
        diff = max_difference(sess, camixer, crop("chelsea", h, w), ratio)
        print(f"CAMixerSR-S ratio {ratio} {w}x{h}: max abs difference {diff:.2e}")
        assert diff <= TOLERANCE
    assert camixer.ratio == "auto" and not any(m.graph_routing for m in camixer.mixers())  # restored


def test_camixersr_batch_with_auto_keeps_each_images_k(camixer, camixer_onnx, one_thread):
    """Ratio auto gives each image its own K, in the graph too (dynamic batch)."""
    path = camixer_onnx("auto")
    x = torch.cat([crop("chelsea", 48, 64), crop("coffee", 48, 64)])
    assert max_difference(session(path), camixer, x, "auto") <= TOLERANCE


@pytest.mark.parametrize("ratio", [0.3, "auto"])
def test_graph_routing_is_the_eval_forward(camixer, ratio, one_thread):
    """The export-only tensor-op routing (`graph_routing`) gives the normal forward's outputs."""
    x = torch.cat([crop("chelsea", 48, 64), crop("coffee", 48, 64)])
    camixer.fast_path = False
    try:
        with torch.no_grad():
            camixer.set_ratio(ratio)
            expected = camixer(x)
            for m in camixer.mixers():
                m.graph_routing = True
            got = camixer(x)
    finally:
        for m in camixer.mixers():
            m.graph_routing = False
        camixer.fast_path = True
        camixer.set_ratio("auto")
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def esc_light_onnx(tmp_path_factory):
    net = build_untrained("esc-light-x4")  # no local weights; random ones test the graph as well
    path = export_onnx(net, tmp_path_factory.mktemp("esc") / "esc.onnx", example_size=EXPORT_SIZE)
    return net, path


def test_esc_light_runs_in_onnxruntime_at_other_sizes(esc_light_onnx, one_thread):
    net, path = esc_light_onnx
    sess = session(path)
    for h, w in SIZES:
        diff = max_difference(sess, net, crop("coffee", h, w))
        print(f"ESC-light {w}x{h}: max abs difference {diff:.2e}")
        assert diff <= TOLERANCE
    assert net.blocks[0].attn.attn_type == "sdpa"  # the export's naive attention is undone


def test_esc_light_graph_takes_a_batch(esc_light_onnx, one_thread):
    net, path = esc_light_onnx
    x = torch.cat([crop("coffee", 40, 36), crop("chelsea", 40, 36)])
    assert max_difference(session(path), net, x) <= TOLERANCE


@pytest.mark.parametrize("name, operation", [("atd-light-x4", "aten::sort"), ("pp-atd-light-x4", "nonzero")])
def test_unexportable_models_are_refused_by_name(name, operation, tmp_path):
    with pytest.raises(ConfigError, match=operation):
        export_onnx(build_untrained(name), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_unexportable_settings_are_refused(camixer, tmp_path):
    camixer.set_routing("purepass")
    try:
        with pytest.raises(ConfigError, match="purepass"):
            export_onnx(camixer, tmp_path / "m.onnx")
    finally:
        camixer.set_routing("learned")
    with pytest.raises(ConfigError, match="opset 7"):
        export_onnx(camixer, tmp_path / "m.onnx", opset=7)
    with pytest.raises(ConfigError, match="does not exist"):
        export_onnx(camixer, tmp_path / "missing" / "m.onnx")
    assert os.listdir(tmp_path) == []


def test_a_failing_export_leaves_no_file(camixer, tmp_path, monkeypatch):
    def half_written(model, args, f, **kwargs):
        with open(f, "wb") as out:
            out.write(b"partial")
        raise torch.onnx.OnnxExporterError("Unsupported: ONNX export of operator Foo")

    monkeypatch.setattr(torch.onnx, "export", half_written)
    with pytest.raises(ConfigError, match="operator Foo"):
        export_onnx(camixer, tmp_path / "m.onnx", example_size=(16, 16))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_cli_exports_and_refuses(tmp_path):
    out = tmp_path / "model.onnx"
    done = run_cli("export", "-o", out, "--ratio", "0.5", "--size", "48x32", "--opset", "17")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "model.onnx" in done.stdout and "opset 17" in done.stdout
    sess = session(out)
    y = sess.run(None, {"input": crop("chelsea", 40, 56).numpy()})[0]
    assert y.shape == (1, 3, 160, 224)

    again = run_cli("export", "-o", out)
    assert again.returncode == 1 and "exists" in again.stderr

    refused = tmp_path / "atd.onnx"
    done = run_cli("export", "-m", "atd-light-x4", "--untrained", "-o", refused)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "aten::sort" in done.stderr
    assert not refused.exists()
    done = run_cli("export", "-o", tmp_path / "no" / "such" / "m.onnx")
    assert done.returncode == 1 and "does not exist" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]
