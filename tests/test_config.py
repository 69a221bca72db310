"""Tests for settings parsing and validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_cluster.config import RunConfig, parse_k, parse_k_range, parse_mem, parse_size
from stream_cluster.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4 * 2**30), ("4GB", 4 * 2**30), ("4GiB", 4 * 2**30), ("512M", 512 * 2**20),
     ("1.5G", int(1.5 * 2**30)), ("100m", 100 * 2**20), ("2048", 2048), (" 3 g ", 3 * 2**30)],
    ids=["G", "GB", "GiB", "M", "fraction", "lowercase", "bytes", "spaces"],
)
def test_parse_mem_units(text: str, expected: int) -> None:
    """Check that budgets parse in binary units whatever the suffix spelling."""
    assert parse_mem(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-1G", "0", "0G", "4X", "G4", "1.2.3G"],
                         ids=["word", "empty", "negative", "zero", "zeroG", "unit", "order",
                              "dots"])
def test_parse_mem_rejects(text: str) -> None:
    """Check that malformed, zero and negative budgets give a message that names the option."""
    with pytest.raises(ConfigError, match="--mem-budget"):
        parse_mem(text)


@given(st.integers(min_value=1, max_value=2**40))
def test_parse_mem_roundtrip_bytes(n: int) -> None:
    """Check that a plain byte count parses to itself."""
    assert parse_mem(str(n)) == n


def test_parse_size_and_rejects() -> None:
    """Check WxH parsing and that 0x0 or junk fail with the option named."""
    assert parse_size("300x430") == (300, 430)
    for bad in ("0x0", "300", "x430", "300x-4"):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(bad)


def test_parse_k_and_range() -> None:
    """Check --k auto/integer and --k-range order rules."""
    assert parse_k("auto") is None
    assert parse_k("10") == 10
    with pytest.raises(ConfigError, match="--k"):
        parse_k("1")
    with pytest.raises(ConfigError, match="--k"):
        parse_k("ten")
    assert parse_k_range("2:20") == (2, 20)
    with pytest.raises(ConfigError, match="--k-range"):
        parse_k_range("20:2")


def test_runconfig_validation(tmp_path) -> None:
    """Check that impossible settings fail at construction, naming the setting and the value."""
    with pytest.raises(ConfigError, match="--components must be >= 1. Got 0"):
        RunConfig(tmp_path, tmp_path / "o", n_components=0)
    with pytest.raises(ConfigError, match="cannot exceed the number of pixels"):
        RunConfig(tmp_path, tmp_path / "o", width=10, height=10, n_components=101)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        RunConfig(tmp_path, f)


def test_runconfig_stage_keys_change_with_settings(tmp_path) -> None:
    """Check that stage keys change exactly when a setting that decides the stage changes."""
    a = RunConfig(tmp_path, tmp_path / "o", k=10)
    b = RunConfig(tmp_path, tmp_path / "o", k=12)
    c = RunConfig(tmp_path, tmp_path / "o", k=10, n_components=20)
    assert a.stage_key("pca") == b.stage_key("pca")
    assert a.stage_key("cluster") != b.stage_key("cluster")
    assert a.stage_key("pca") != c.stage_key("pca")
    assert a.stage_key("ingest") == c.stage_key("ingest")
