"""stream_cluster.images.decode: hostile files, geometry, colour, agreement, memory bound."""

from __future__ import annotations

import atexit
import importlib.util
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from types import ModuleType

import cv2
import numpy as np
import pytest
import pyvips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stream_cluster.errors import ConfigError, DecodeError
from stream_cluster.images import headers as headers_mod
from stream_cluster.images.decode import (
    DECODE_MEMORY_CAP,
    decode_cost_bound,
    decode_image,
    decode_worker_bytes,
)

from .hostile import (
    IGNORED,
    OK,
    SCAN_REASONS,
    call_unprivileged,
    gradient_rgb,
    make_hostile_folder,
    png_chunk,
    running_as_root,
)

W, H = 300, 430
# The script that builds the benchmark corpus (a copy of shared/datasets/prepare_clipart.py).
PREPARE = Path(__file__).resolve().parents[1] / "benchmarks" / "prepare_clipart.py"
GIANT = Path("/usr/share/openclipart/png/signs_and_symbols/stop_sign_miguel_s_nchez_.png")
REPO = Path(__file__).resolve().parents[1]
_hyp_dir = tempfile.mkdtemp(prefix="decode-hyp-")  # hypothesis tests cannot use tmp_path
atexit.register(shutil.rmtree, _hyp_dir, True)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile") / "images"
    return root, make_hostile_folder(root)


@pytest.fixture()
def vips_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route every PNG/JPEG through the libvips path."""
    monkeypatch.setattr(headers_mod, "CV2_MAX_PIXELS", 0)


def _write_png(path: Path, arr: np.ndarray) -> Path:
    """Write an RGB/RGBA (RGB order) or grey array as PNG."""
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), arr)
    return path


def _load_prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare_clipart", PREPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- hostile folder ---------------------------------------------------------------------------


def test_decode_image_hostile_folder_every_case(hostile: tuple[Path, dict[str, str]]) -> None:
    """Check that every hostile file decodes or fails with its specific reason, never crashes."""
    root, expected = hostile
    checked = 0
    for rel, outcome in expected.items():
        if outcome == IGNORED or any(r in outcome for r in SCAN_REASONS):
            continue
        path = os.path.join(root, rel)
        if outcome == OK:
            out = decode_image(path, W, H)
            assert out.shape == (H, W) and out.dtype == np.uint8, rel
            assert out.min() < 200, f"{rel} decoded to (almost) blank"
        else:
            with pytest.raises(DecodeError) as info:
                decode_image(path, W, H)
            assert outcome in info.value.reason, (rel, info.value.reason)
            assert "\n" not in info.value.reason
        checked += 1
    assert checked >= 25


def test_decode_image_hostile_scan_level_cases_fail_cleanly(
    hostile: tuple[Path, dict[str, str]],
) -> None:
    """Check that entries scan would skip still give a DecodeError if decoded directly."""
    root, expected = hostile
    for rel in ("broken_link.png", "chain_a.png", "pipe.png", "loop/parent"):
        assert rel in expected
        with pytest.raises(DecodeError) as info:
            decode_image(os.path.join(root, rel), W, H)
        assert info.value.reason


def test_decode_image_specific_reasons(tmp_path: Path) -> None:
    """Check the exact wording of the common failure reasons."""
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_bytes(b"just some text\n")
    (tmp_path / "p.jpg").write_bytes(b"%PDF-1.4\n%binary")
    (tmp_path / "b.png").write_bytes(bytes(range(200, 256)) * 3)
    (tmp_path / "dir.png").mkdir()
    cases = {
        "e.png": "empty file (0 bytes)",
        "t.png": "not an image: file content is text despite .png extension",
        "p.jpg": "not an image: file content is a PDF document despite .jpg extension",
        "b.png": "not an image: unknown format (starts with c8 c9 ca cb cc cd ce cf) despite .png",
        "dir.png": "is a folder, not a file",
        "missing.png": "file not found",
    }
    for name, reason in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_image(tmp_path / name, W, H)
        assert info.value.reason.startswith(reason), (name, info.value.reason)


def _bomb(path: Path, width: int, height: int) -> Path:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
    path.write_bytes(data)
    return path


def test_decode_image_bomb_refused_from_header(tmp_path: Path) -> None:
    """Check that a tiny PNG claiming 10 Gpx is refused at once, naming sizes and the limit."""
    path = _bomb(tmp_path / "bomb.png", 100_000, 100_000)
    start = time.perf_counter()
    with pytest.raises(DecodeError) as info:
        decode_image(path, W, H)
    assert time.perf_counter() - start < 1.0
    assert info.value.reason == (
        "decompression bomb: header claims 100000 x 100000 = 10.0 Gpx > limit 1.0 Gpx"
    )


def test_decode_image_max_pixels_option(tmp_path: Path) -> None:
    """Check that max_pixels is applied to ordinary images too."""
    path = _write_png(tmp_path / "a.png", gradient_rgb(400, 300))
    assert decode_image(path, W, H, max_pixels=120_000).shape == (H, W)
    with pytest.raises(DecodeError, match=r"0\.1 Mpx > limit 0\.1 Mpx"):
        decode_image(path, W, H, max_pixels=119_999)


def test_decode_image_too_wide_refused_by_memory_model(tmp_path: Path) -> None:
    """Check that an image under the pixel limit but too wide to stream in the cap is refused."""
    path = _bomb(tmp_path / "wide.png", 400_000, 10)
    with pytest.raises(DecodeError) as info:
        decode_image(path, W, H)
    assert info.value.reason.startswith("image too large to decode in bounded memory: PNG 400000")
    assert "cap 256 MiB" in info.value.reason


def test_decode_image_permission_denied() -> None:
    """Check that an unreadable file gives 'permission denied' (as 'nobody' when run as root)."""
    base = Path(tempfile.mkdtemp(prefix="decode-perm-"))
    try:
        os.chmod(base, 0o755)
        path = _write_png(base / "secret.png", gradient_rgb(20, 20))
        os.chmod(path, 0)
        if running_as_root():
            reason = call_unprivileged(_reason_of, str(path))
        else:
            reason = _reason_of(str(path))
    finally:
        shutil.rmtree(base)
    assert reason == "permission denied"


def _reason_of(path: str) -> str | None:
    try:
        decode_image(path, W, H)
    except DecodeError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.995], ids=["30%", "90%", "99.5%"])
@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_decode_image_truncated(tmp_path: Path, ext: str, keep: float, vips_only: None) -> None:
    """Check that truncated PNG/JPEG data is refused on both decode paths, with the format."""
    data = cv2.imencode(ext, gradient_rgb(120, 90))[1].tobytes()
    path = tmp_path / f"t{ext}"
    path.write_bytes(data[: int(len(data) * keep)])
    name = "PNG" if ext == ".png" else "JPEG"
    with pytest.raises(DecodeError, match=f"^truncated or corrupt {name}: "):
        decode_image(path, W, H)
    headers_mod.CV2_MAX_PIXELS = 10**12  # the OpenCV path too (monkeypatch restores it)
    with pytest.raises(DecodeError, match=f"^truncated or corrupt {name}: "):
        decode_image(path, W, H)


def test_decode_image_rejects_bad_sizes(tmp_path: Path) -> None:
    """Check that output sizes and max_pixels are validated with ConfigError."""
    path = _write_png(tmp_path / "a.png", gradient_rgb(10, 10))
    for width, height in ((0, 10), (10, -1), (True, 10), (10.0, 10), (70_000, 10)):
        with pytest.raises(ConfigError, match="width|height"):
            decode_image(path, width, height)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pixels"):
        decode_image(path, 10, 10, max_pixels=0)


_MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
]


@settings(max_examples=150, deadline=None)
@given(magic=st.sampled_from(_MAGICS), tail=st.binary(max_size=300))
def test_decode_image_garbage_after_magic_never_crashes(magic: bytes, tail: bytes) -> None:
    """Check that random bytes behind a real magic number give DecodeError, never a crash."""
    path = os.path.join(_hyp_dir, "garbage.img")
    with open(path, "wb") as fh:
        fh.write(magic + tail)
    try:
        out = decode_image(path, 20, 30)
    except DecodeError as exc:
        assert exc.reason and "\n" not in exc.reason
    else:
        assert out.shape == (30, 20)


# --- geometry and colour ----------------------------------------------------------------------


def test_decode_image_letterbox_geometry_wide_and_tall(tmp_path: Path) -> None:
    """Check that a black wide/tall picture fills the exact centred box, white around it."""
    wide = _write_png(tmp_path / "wide.png", np.zeros((50, 200), np.uint8))
    out = decode_image(wide, W, H)  # scale 1.5 -> 300 x 75, rows 177..251
    rows = np.flatnonzero((out < 128).any(axis=1))
    assert (rows[0], rows[-1]) == (177, 251)
    assert (out[177:252] == 0).all() and (out[:177] == 255).all() and (out[252:] == 255).all()
    tall = _write_png(tmp_path / "tall.png", np.zeros((860, 100), np.uint8))
    out = decode_image(tall, W, H)  # scale 0.5 -> 50 x 430, cols 125..174
    cols = np.flatnonzero((out < 128).any(axis=0))
    assert (cols[0], cols[-1]) == (125, 174)
    assert (out[:, 125:175] == 0).all() and (out[:, :125] == 255).all()


@pytest.mark.parametrize("path_kind", ["cv2", "vips"])
def test_decode_image_alpha_composited_over_white(
    tmp_path: Path, path_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that transparent is white, opaque keeps colour, half alpha mixes with white."""
    if path_kind == "vips":
        monkeypatch.setattr(headers_mod, "CV2_MAX_PIXELS", 0)
    rgba = np.zeros((43, 30, 4), np.uint8)  # black everywhere
    rgba[:, :10, 3] = 0
    rgba[:, 10:20, 3] = 255
    rgba[:, 20:, 3] = 128
    out = decode_image(_write_png(tmp_path / "a.png", rgba), 30, 43)
    assert (out[:, :10] == 255).all()
    assert (out[:, 10:20] == 0).all()
    # prepare_clipart.py's float32 formula: 255 * (1 - 128/255) = 126.99999 truncates to 126.
    assert (out[:, 20:] == 126).all()


def test_decode_image_grey_is_bt601(tmp_path: Path) -> None:
    """Check that pure red, green and blue become BT.601 greys (76, 150, 29)."""
    rgb = np.zeros((3, 3, 3), np.uint8)
    for i in range(3):
        rgb[i, :, i] = 255
    out = decode_image(_write_png(tmp_path / "rgb.png", rgb), 3, 3)
    assert out[:, 0].tolist() == [76, 150, 29]


def test_decode_image_16_bit_reduced_by_shift(tmp_path: Path) -> None:
    """Check that 16-bit samples map to their high byte."""
    grey16 = np.full((20, 20), 0xABCD, np.uint16)
    out = decode_image(_write_png(tmp_path / "g.png", grey16), 20, 20)
    assert (out == 0xAB).all()


def test_decode_image_first_frame_and_page(hostile: tuple[Path, dict[str, str]]) -> None:
    """Check that animated GIF and multi-page TIFF give their first frame/page."""
    root, _ = hostile
    first = gradient_rgb(64, 48, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ref = decode_image(_write_png(Path(tmp) / "first.png", first), W, H).astype(int)
    tif = decode_image(root / "multipage.tif", W, H).astype(int)
    assert np.abs(tif - ref).max() == 0
    gif = decode_image(root / "animated.gif", W, H).astype(int)
    assert np.abs(gif - ref).mean() < 8  # GIF palette quantisation, but the right frame
    second = gradient_rgb(64, 48, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        other = decode_image(_write_png(Path(tmp) / "second.png", second), W, H).astype(int)
    assert np.abs(gif - ref).mean() < np.abs(gif - other).mean()


def test_decode_image_cmyk_and_webp_close_to_source(hostile: tuple[Path, dict[str, str]]) -> None:
    """Check that the CMYK JPEG and the WebP look like the RGB picture they were made from."""
    root, _ = hostile
    with tempfile.TemporaryDirectory() as tmp:
        ref = decode_image(_write_png(Path(tmp) / "ref.png", gradient_rgb(64, 48)), W, H)
    for name in ("cmyk.jpg", "photo.webp", "exif_rot6.png"):
        out = decode_image(root / name, W, H)
        if name != "exif_rot6.png":
            assert np.abs(out.astype(int) - ref).mean() < 4, name


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("path_kind", ["cv2", "vips"])
def test_decode_image_exif_orientation_matches_libvips_autorot(
    tmp_path: Path, orientation: int, path_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check all 8 EXIF orientations against libvips' autorot on the same pixels."""
    if path_kind == "vips":
        monkeypatch.setattr(headers_mod, "CV2_MAX_PIXELS", 0)
    rgb = gradient_rgb(40, 24, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", exif=exif)
    path = tmp_path / "o.png"
    path.write_bytes(buf.getvalue())
    shown = pyvips.Image.new_from_array(rgb).copy(interpretation="srgb")
    shown.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    upright = shown.autorot().numpy()
    expected = decode_image(_write_png(tmp_path / "upright.png", upright), 50, 60)
    assert np.array_equal(decode_image(path, 50, 60), expected)


def test_decode_image_exif_jpeg_rotated(hostile: tuple[Path, dict[str, str]]) -> None:
    """Check that the orientation-6 JPEG comes out turned 90 degrees clockwise."""
    root, _ = hostile
    upright = np.ascontiguousarray(np.rot90(gradient_rgb(64, 48), k=-1))
    with tempfile.TemporaryDirectory() as tmp:
        ref = decode_image(_write_png(Path(tmp) / "r.png", upright), W, H).astype(int)
    out = decode_image(root / "exif_rot6.jpg", W, H).astype(int)
    assert np.abs(out - ref).mean() < 3


# --- agreement and determinism -----------------------------------------------------------------


def _samples(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(3)
    paths = [
        _write_png(tmp_path / "rgb_big.png", gradient_rgb(700, 500)),
        _write_png(tmp_path / "rgb_small.png", gradient_rgb(90, 140)),
        _write_png(tmp_path / "grey.png", gradient_rgb(301, 77)[..., 0]),
    ]
    rgba = np.dstack([gradient_rgb(350, 600), rng.integers(0, 256, (600, 350), dtype=np.uint8)])
    rgba[:100, :, 3] = 0
    rgba[100:200, :, 3] = 255
    paths.append(_write_png(tmp_path / "rgba.png", rgba))
    la = Image.fromarray(np.dstack([gradient_rgb(120, 200)[..., 1], rgba[:200, :120, 3]]), "LA")
    la.save(tmp_path / "la.png")
    pal = Image.fromarray(gradient_rgb(160, 100)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "pal.png", transparency=3)
    rgb16 = (gradient_rgb(200, 300).astype(np.uint16) * 257 + 77)[..., ::-1]
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.ascontiguousarray(rgb16))
    return paths + [tmp_path / "la.png", tmp_path / "pal.png", tmp_path / "rgb16.png"]


def test_decode_image_matches_prepare_clipart(tmp_path: Path) -> None:
    """Check that decode_image equals prepare_clipart.to_grey_letterbox bit for bit."""
    prepare = _load_prepare()
    for path in _samples(tmp_path):
        for width, height in ((W, H), (64, 48), (1000, 900)):
            ours = decode_image(path, width, height)
            theirs = prepare.to_grey_letterbox(path, width, height)
            assert np.array_equal(ours, theirs), (path.name, width, height)


def test_decode_image_paths_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that the libvips path equals the OpenCV path without shrink, and is close with it."""
    samples = _samples(tmp_path)
    whole = [decode_image(p, W, H) for p in samples]
    small = [decode_image(p, 40, 30) for p in samples]
    monkeypatch.setattr(headers_mod, "CV2_MAX_PIXELS", 0)
    for path, a, b in zip(samples, whole, small, strict=True):
        assert np.array_equal(decode_image(path, W, H), a), path.name
        # 40 x 30 makes libvips box-shrink first; rounding then differs a little.
        assert np.abs(decode_image(path, 40, 30).astype(int) - b).mean() < 2.0, path.name


def test_decode_image_deterministic(hostile: tuple[Path, dict[str, str]]) -> None:
    """Check that decoding the same files twice gives identical arrays."""
    root, expected = hostile
    ok = [rel for rel, outcome in expected.items() if outcome == OK]
    first = [decode_image(os.path.join(root, rel), 37, 53) for rel in ok]
    second = [decode_image(os.path.join(root, rel), 37, 53) for rel in ok]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    dup_a, dup_b = (decode_image(os.path.join(root, n), W, H) for n in ("dup_a.png", "dup_b.png"))
    assert np.array_equal(dup_a, dup_b)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    src=st.tuples(st.integers(1, 400), st.integers(1, 400)),
    out=st.tuples(st.integers(1, 500), st.integers(1, 500)),
    channels=st.sampled_from([1, 2, 3, 4]),
    fmt=st.sampled_from([".png", ".jpg", ".webp", ".tif", ".bmp", ".gif"]),
)
def test_decode_image_any_size_gives_requested_shape(
    src: tuple[int, int], out: tuple[int, int], channels: int, fmt: str
) -> None:
    """Check that any input size, channel count and format gives a (height, width) uint8."""
    sw, sh = src
    rgb = gradient_rgb(sw, sh, seed=sw * 7 + sh)
    arr = rgb[..., :1] if channels in (1, 2) else rgb
    if channels in (2, 4):
        arr = np.dstack([arr, rgb[..., 1]])
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    if fmt in (".jpg", ".bmp") and channels in (2, 4):
        img = img.convert("RGB")
    path = os.path.join(_hyp_dir, f"h{fmt}")
    img.save(path)
    result = decode_image(path, out[0], out[1])
    assert result.shape == (out[1], out[0]) and result.dtype == np.uint8


# --- header bound -----------------------------------------------------------------------------


def test_decode_cost_bound_admits_every_file_of_the_hostile_folder(
    hostile: tuple[Path, dict[str, str]],
) -> None:
    """Check that each file decodes (or fails for its own reason) with memory_cap = its bound."""
    root, expected = hostile
    checked = 0
    for rel, outcome in expected.items():
        if outcome == IGNORED or any(r in outcome for r in SCAN_REASONS):
            continue
        path = os.path.join(root, rel)
        bound = decode_cost_bound(path, W, H)
        assert 0 <= bound <= DECODE_MEMORY_CAP, rel
        if outcome == OK:
            assert bound > 0, rel
            assert decode_image(path, W, H, memory_cap=bound).shape == (H, W), rel
            checked += 1
        elif bound:
            with pytest.raises(DecodeError) as info:
                decode_image(path, W, H, memory_cap=bound)
            assert outcome in info.value.reason, (rel, info.value.reason)
    assert checked >= 20


def test_decode_cost_bound_zero_for_refused_and_cap_for_too_large(tmp_path: Path) -> None:
    """Check the bound of files refused before decoding (0) and of one over the cap (the cap)."""
    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_bytes(b"just some text\n")
    assert decode_cost_bound(tmp_path / "e.png", W, H) == 0
    assert decode_cost_bound(tmp_path / "t.png", W, H) == 0
    assert decode_cost_bound(tmp_path / "missing.png", W, H) == 0
    wide = _bomb(tmp_path / "wide.png", 400_000, 10)
    assert decode_cost_bound(wide, W, H) == DECODE_MEMORY_CAP
    small = _write_png(tmp_path / "s.png", gradient_rgb(300, 430))
    assert 0 < decode_cost_bound(small, W, H) < 20 * 2**20


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    src=st.tuples(st.integers(1, 900), st.integers(1, 900)),
    out=st.tuples(st.integers(1, 300), st.integers(1, 300)),
    mode=st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "I;16"]),
    variant=st.sampled_from(["png", "png-interlaced", "jpg", "jpg-progressive", "jpg-rot6"]),
    streamed=st.booleans(),
)
def test_decode_cost_bound_never_below_decode_estimate(
    src: tuple[int, int], out: tuple[int, int], mode: str, variant: str, streamed: bool
) -> None:
    """Check that decode_image accepts any PNG/JPEG at memory_cap = decode_cost_bound."""
    sw, sh = src
    rgb = gradient_rgb(sw, sh, seed=sw * 7 + sh)
    img = Image.fromarray(rgb).convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    img = img.convert("I;16") if mode == "I;16" else img.convert(mode)
    path = os.path.join(_hyp_dir, "bound." + variant.split("-")[0])
    if variant.startswith("jpg"):
        img = img.convert("L" if mode in ("L", "I;16") else "RGB")
        exif = Image.Exif()
        if variant == "jpg-rot6":
            exif[0x0112] = 6
        img.save(path, "JPEG", progressive=variant == "jpg-progressive", exif=exif)
    elif variant == "png-interlaced":
        img.save(path, "PNG")
        pyvips.Image.new_from_file(path).pngsave(path + ".i.png", interlace=True)
        os.replace(path + ".i.png", path)
    else:
        img.save(path, "PNG")
    with pytest.MonkeyPatch.context() as mp:
        if streamed:
            mp.setattr(headers_mod, "CV2_MAX_PIXELS", 0)
        bound = decode_cost_bound(path, *out)
        assert 0 < bound <= DECODE_MEMORY_CAP
        result = decode_image(path, out[0], out[1], memory_cap=bound)
    assert result.shape == (out[1], out[0])


def test_decode_image_plain_png_skips_libvips_header(
    tmp_path: Path, hostile: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that a small PNG without EXIF/text chunks is read without libvips' header.

    A PNG with an eXIf chunk (orientation) still goes through libvips and comes out rotated.
    """
    plain = _write_png(tmp_path / "plain.png", gradient_rgb(60, 40))
    expected = decode_image(plain, W, H)
    calls: list[str] = []
    real = headers_mod._vips_header

    def spy(kind: str, fd: int) -> object:
        calls.append(kind)
        return real(kind, fd)

    monkeypatch.setattr(headers_mod, "_vips_header", spy)
    assert np.array_equal(decode_image(plain, W, H), expected)
    assert calls == []
    root, _ = hostile
    rotated = decode_image(os.path.join(root, "exif_rot6.png"), W, H)
    assert calls == ["png"]
    monkeypatch.undo()
    assert np.array_equal(rotated, decode_image(os.path.join(root, "exif_rot6.png"), W, H))


def test_decode_image_one_pixel_through_libvips(tmp_path: Path) -> None:
    """Check that a 1 x 1 grey TIFF (libvips path; pyvips returns it 0-d) decodes."""
    path = str(tmp_path / "dot.tif")
    (pyvips.Image.black(1, 1) + 40).cast("uchar").tiffsave(path)
    out = decode_image(path, 3, 2)
    assert out.shape == (2, 3) and out.min() == 40


# --- memory bound ------------------------------------------------------------------------------

# Peak RSS is read from /proc/self/status (VmHWM), not ru_maxrss: Linux carries ru_maxrss over
# fork+exec, so a child of a big parent (pytest after building large images) would report the
# parent's size. Writing 5 to clear_refs resets VmHWM to the current RSS after the imports.
_MEASURE = r"""
import json, sys, time
import cv2, numpy, pyvips
from stream_cluster.images.decode import decode_image
from stream_cluster.errors import DecodeError

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

width, height = int(sys.argv[1]), int(sys.argv[2])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
base = status("VmRSS")
start = time.perf_counter()
reasons = []
for path in sys.argv[3:]:
    try:
        decode_image(path, width, height)
        reasons.append(None)
    except DecodeError as exc:
        reasons.append(exc.reason)
print(json.dumps({"above": status("VmHWM") - base, "seconds": time.perf_counter() - start,
                  "reasons": reasons}))
"""


def _measure(paths: list[str | Path], width: int = W, height: int = H) -> dict[str, object]:
    """Decode ``paths`` in a fresh interpreter; return peak RSS above its post-import RSS."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to measure peak RSS")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(width), str(height), *map(str, paths)],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_decode_worker_bytes_grows_with_output_and_validates() -> None:
    """Check that the bound covers the cap, grows with the output size, and rejects bad sizes."""
    small, big = decode_worker_bytes(W, H), decode_worker_bytes(3000, 4300)
    assert DECODE_MEMORY_CAP < small < big
    with pytest.raises(ConfigError):
        decode_worker_bytes(0, 10)


def test_decode_worker_bytes_covers_opencv_path_limit(
    tmp_path: Path, hostile: tuple[Path, dict[str, str]]
) -> None:
    """Check measured worker RSS for the largest OpenCV-path image and the hostile folder."""
    side = int(headers_mod.CV2_MAX_PIXELS**0.5)
    noise = np.random.default_rng(0).integers(0, 65536, (side, side, 4), dtype=np.uint16)
    limit = tmp_path / "cv2_limit_rgba16.png"
    cv2.imwrite(str(limit), noise, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    root, expected = hostile
    files = [os.path.join(root, r) for r, o in expected.items() if o == OK]
    result = _measure([limit, *files])
    assert result["reasons"] == [None] * (1 + len(files))
    assert 0 < result["above"] <= decode_worker_bytes(W, H), result


@pytest.mark.slow
def test_decode_worker_bytes_covers_streamed_worst_cases(tmp_path: Path) -> None:
    """Check measured RSS, one fresh worker each, of images at the limits of every loader."""

    def pattern(width: int, height: int, bands: int) -> pyvips.Image:
        xyz = pyvips.Image.xyz(width, height)
        im = ((xyz[0] * 7 + xyz[1] * 3) % 251).cast("uchar")
        return im.bandjoin([im] * (bands - 1)).copy(interpretation="srgb")

    cases = {
        "wide.png": lambda p: pattern(30_000, 2_000, 4).pngsave(p, compression=1),
        "interlaced.png": lambda p: pattern(5_000, 5_000, 4).pngsave(p, interlace=True),
        "progressive.jpg": lambda p: pattern(5_000, 5_000, 3).jpegsave(p, interlace=True),
        "baseline.jpg": lambda p: pattern(12_000, 12_000, 3).jpegsave(p),
        "big.gif": lambda p: pattern(4_000, 4_000, 3).gifsave(p),
        "lossless.webp": lambda p: pattern(6_000, 6_000, 4).webpsave(p, lossless=True),
        "lossy.webp": lambda p: pattern(8_000, 8_000, 3).webpsave(p),
        "tiled.tif": lambda p: pattern(8_000, 8_000, 3).tiffsave(p, tile=True),
    }
    bound = decode_worker_bytes(W, H)
    for name, make in cases.items():
        path = str(tmp_path / name)
        make(path)
        result = _measure([path])
        assert result["reasons"] == [None], (name, result)
        assert result["above"] <= bound, (name, result["above"] / 2**20)
        os.unlink(path)


@pytest.mark.slow
def test_decode_image_giant_real_file() -> None:
    """Check the 20,990 x 29,700 RGBA openclipart PNG: bounded RSS, a few seconds, a picture."""
    if not GIANT.is_file():
        pytest.fail(f"{GIANT} is missing: apt-get install -y openclipart-png (README's test "
                    f"command installs it)")
    result = _measure([GIANT])
    assert result["reasons"] == [None]
    assert result["above"] <= decode_worker_bytes(W, H), result
    assert result["seconds"] < 30
    out = decode_image(GIANT, W, H)
    assert out.shape == (H, W) and 0 < out.mean() < 250
