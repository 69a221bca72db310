"""Measure what ``--features onnx:FILE`` adds to the ingest's process against what the plan
reserves for it (``OnnxFeatures.memory_bytes``), on a small CNN built here with onnx.helper.

Each case runs in a fresh process: peak RSS (ru_maxrss) after the imports, then after the
extractor opened its session and ran its dummy batch, then after ``transform`` of ``--images``
letterboxed images. Usage: ``python benchmarks/features_memory.py --size 300x430``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def build_cnn(path: Path, channels: int) -> None:
    """Conv 7x7/2 (32) + Relu + MaxPool 3x3/2 + Conv 3x3/2 (64) + Relu + Conv 3x3/2 (128) +
    Relu + GlobalAveragePool + Flatten: a ResNet-like stem with free N, H, W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = {"w1": (32, channels, 7, 7), "w2": (64, 32, 3, 3), "w3": (128, 64, 3, 3)}
    init = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32) * 0.05, n)
            for n, s in shapes.items()]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"]),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "stem", [x], [y], initializer=init),
                              opset_imports=[helper.make_opsetid("", 13)])  # fmt: skip
    model.ir_version = 8
    onnx.save(model, str(path))


def child(model: str, width: int, height: int, images: int, threads: int) -> None:
    from stream_cluster.images.onnx_features import OnnxFeatures

    def peak() -> int:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    rows = np.random.default_rng(1).integers(0, 256, (images, width * height), dtype=np.uint8)
    base = peak()
    ext = OnnxFeatures(model, threads=threads)
    dim = ext.dim(width, height)
    opened = peak()
    ext.transform(rows, width, height)
    done = peak()
    print(json.dumps({"dim": dim, "base": base, "opened": opened - base, "after": done - base,
                      "modelled": ext.memory_bytes(width, height)}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="300x430")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    if a.child:
        child(a.child[0], w, h, a.images, a.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for channels in (1, 3):
            path = Path(tmp) / f"stem{channels}.onnx"
            build_cnn(path, channels)
            out = subprocess.run(
                [sys.executable, __file__, "--size", a.size, "--images", str(a.images),
                 "--threads", str(a.threads), "--child", str(path), "x"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            r = json.loads(out.stdout)
            mib = 2**20
            print(f"{channels} channel(s), {a.size}, {a.images} images, {a.threads} threads: "
                  f"model file {path.stat().st_size / mib:.2f} MiB, dim {r['dim']}; peak RSS "
                  f"growth: session + dummy batch {r['opened'] / mib:.1f} MiB, after transform "
                  f"{r['after'] / mib:.1f} MiB; planned reserve {r['modelled'] / mib:.1f} MiB "
                  f"({'within' if r['after'] <= r['modelled'] else 'EXCEEDED'})")  # fmt: skip


if __name__ == "__main__":
    main()
