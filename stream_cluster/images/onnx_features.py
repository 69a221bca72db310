"""``--features onnx:MODEL.onnx``: an ONNX image model run with onnxruntime on the CPU.

The model runs batched in the ingest's own process (not in the decode workers), with its
intra-op threads set explicitly; its memory is measured when the session opens and on two
dummy batches, and the plan reserves that (:meth:`OnnxFeatures.memory_bytes`). onnxruntime
comes with ``pip install 'stream-cluster[features]'`` and is imported only here.
"""

from __future__ import annotations

import ctypes
import os
import resource
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.errors import ConfigError
from stream_cluster.images.extractor import FeatureExtractor, file_sha256, require_module

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ONNX_BATCH", "OnnxFeatures"]

#: ImageNet's channel means and standard deviations (torchvision's models expect them).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: Images per ONNX inference call.
ONNX_BATCH = 16

#: What this process measured of onnxruntime: its import ("import") and each model's session
#: and batch (by SHA-256, threads and size). Peak-RSS growth shows only the first time.
_MEASURED: dict[object, int] = {}


class OnnxFeatures(FeatureExtractor):
    """An ONNX image model run with onnxruntime on the CPU, :data:`ONNX_BATCH` images a call
    (or the model's fixed batch size, the last batch padded).

    Input rule: pixels scaled to 0..1; a 1-channel model gets that grey image, a 3-channel one
    gets it in each channel, normalised with ImageNet's mean and std (torchvision's rule). The
    model's first output is flattened per image into the feature row (float32). Its input must
    be rank 4 (N, C, H, W) with C 1 or 3 and H, W either free or equal to ``--size``.

    Memory: the session (onnxruntime's import, the weights; growth of this process's peak RSS
    when it is opened) plus one batch's activations (peak growth over two dummy batches), plus
    the batch's input and output arrays: :meth:`memory_bytes`. onnxruntime's arena is off and
    freed heap is trimmed after each batch, so every batch peaks as the dummy one did
    (``benchmarks/features_memory.py`` measures it). The peak-RSS measure assumes the process
    has not peaked higher before (true when the run opens it, before the scan).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = max(1, int(threads))
        self._session: Any = None
        self._dim: int | None = None
        self._measured = 0
        self._batch = ONNX_BATCH
        self.sha256 = self._hash()

    @property
    def spec(self) -> str:
        return f"onnx:{os.fsdecode(self.path)}"

    def _hash(self) -> str:
        if not self.path.is_file():
            raise ConfigError(
                f"--features onnx: the model file {self.path} does not exist. Give the path of "
                f"an .onnx image model file (nothing is downloaded)."
            )
        try:
            return file_sha256(self.path)
        except OSError as exc:
            raise ConfigError(f"--features onnx: cannot read {self.path} ({exc}).") from None

    def session(self) -> Any:
        """The onnxruntime session (opened once, ``threads`` intra-op threads, CPU only)."""
        if self._session is None:
            before = _rss_peak()  # onnxruntime's own import counts too
            ort = require_module("onnxruntime", "onnx")
            imported = _rss_peak()
            # Only the process's first import shows as growth: remember it for later sessions.
            import_bytes = _MEASURED.setdefault("import", max(0, imported - before))
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # No arena: each call's activations are freed when it returns, so the peak one
            # measured batch shows is the peak of every batch.
            opts.enable_cpu_mem_arena = False
            try:
                self._session = ort.InferenceSession(
                    os.fspath(self.path), opts, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own types for a bad file
                raise ConfigError(
                    f"--features onnx: {self.path} is not a model onnxruntime can load "
                    f"({type(exc).__name__}: {str(exc)[:200]}). Give an .onnx image model file."
                ) from None
            self._measured = max(self._measured, import_bytes + max(0, _rss_peak() - imported))
        return self._session

    def _input(self, width: int, height: int) -> tuple[str, int, int]:
        """The input's name, channels and images a call; ConfigError if it cannot take them."""
        inp = self.session().get_inputs()[0]
        shape = list(inp.shape)
        fixed = [s if isinstance(s, int) else None for s in shape]
        if len(shape) != 4 or fixed[1] not in (1, 3):
            raise ConfigError(
                f"--features onnx: {self.path} takes input {inp.name!r} of shape {shape}; "
                f"stream-cluster feeds images as (N, C, H, W) with C 1 or 3 (grey, or grey "
                f"repeated in 3 channels). Export the model with such an input."
            )
        if (fixed[2] not in (None, height)) or (fixed[3] not in (None, width)):
            raise ConfigError(
                f"--features onnx: {self.path} takes images of {fixed[3]}x{fixed[2]} (W x H; "
                f"input shape {shape}), not --size {width}x{height}. Run with --size "
                f"{fixed[3]}x{fixed[2]}, or export the model with that or a free H and W."
            )
        return inp.name, int(fixed[1] or 1), int(fixed[0] or ONNX_BATCH)

    def _prepare(self, rows: np.ndarray, width: int, height: int, channels: int) -> np.ndarray:
        x = np.asarray(rows).astype(np.float32).reshape(len(rows), 1, height, width)
        x *= np.float32(1.0 / 255.0)
        if channels == 1:
            return x
        x = np.repeat(x, 3, axis=1)
        x -= IMAGENET_MEAN[None, :, None, None]
        x /= IMAGENET_STD[None, :, None, None]
        return x

    def dim(self, width: int, height: int) -> int:
        if self._dim is None:
            name, channels, n = self._input(width, height)
            before = _rss_peak()
            batch = np.random.default_rng(0).integers(0, 256, (n, width * height), np.uint8)
            for _ in range(2):  # onnxruntime plans its memory pattern on the first call
                out = self.session().run(None, {name: self._prepare(batch, width, height,
                                                                    channels)})  # fmt: skip
                _trim()
            self._measured += max(0, _rss_peak() - before)
            # A model opened again in this process (a second run, or plan() after
            # with_features) grows the peak less: keep the first, larger measure.
            key = (self.sha256, self.threads, width, height)
            self._measured = _MEASURED[key] = max(_MEASURED.get(key, 0), self._measured)
            first = np.asarray(out[0])
            if first.ndim < 1 or first.shape[0] != n or first.size == 0:
                raise ConfigError(
                    f"--features onnx: {self.path}'s first output has shape {first.shape} for "
                    f"{n} images; it must have one row per image."
                )
            self._batch = n
            self._dim = int(first.size // n)
        return self._dim

    def transform(self, rows: np.ndarray, width: int, height: int) -> np.ndarray:
        name, channels, n = self._input(width, height)
        out = np.empty((len(rows), self.dim(width, height)), dtype=np.float32)
        for lo in range(0, len(rows), n):
            part = rows[lo : lo + n]
            if len(part) < n and self._fixed_batch():  # pad a fixed-size batch
                part = np.concatenate([part, np.full((n - len(part), part.shape[1]), 255,
                                                     dtype=part.dtype)])  # fmt: skip
            x = self._prepare(part, width, height, channels)
            y = np.asarray(self.session().run(None, {name: x})[0], dtype=np.float32)
            _trim()
            take = min(n, len(rows) - lo)
            out[lo : lo + take] = y.reshape(len(x), -1)[:take]
        return out

    def _fixed_batch(self) -> bool:
        return isinstance(self.session().get_inputs()[0].shape[0], int)

    def memory_bytes(self, width: int, height: int) -> int:
        """The session and one batch, as measured (peak RSS growth), plus the batch's arrays."""
        d = self.dim(width, height)
        arrays = self._batch * (3 * width * height * 4 * 2 + d * 4)
        return self._measured + arrays + self.path.stat().st_size

    def describe(self) -> dict[str, Any]:
        return {"features": self.spec, "features_sha256": self.sha256,
                "features_path": os.fsdecode(self.path)}  # fmt: skip


def _trim() -> None:
    """Give freed heap memory back to the system (glibc): without it, the batches' freed
    activations raise glibc's mmap threshold and the heap grows batch after batch (measured:
    +300 MiB over 16 batches of a small CNN at 224x224, none with it)."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim(0)
        except (OSError, AttributeError):
            _LIBC = False
    elif _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def _rss_peak() -> int:
    """This process's peak RSS in bytes (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
