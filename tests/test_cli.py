"""CLI tests, in-process: exit codes, one-line errors without tracebacks, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream_cluster._cli.main import main

from .conftest import make_shapes_corpus

SMALL = ["--size", "16x20", "--components", "8", "--batch-size", "16", "--workers", "1",
         "--no-progress"]


def test_cli_run_writes_results(shapes_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """Check that the one-line form runs the whole pipeline and reports where results are."""
    out = tmp_path / "run"
    code = main([str(shapes_dir), "--out", str(out), "--mem-budget", "2G", "--k", "3", *SMALL])
    assert code == 0
    assert "60 images clustered into k=3" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["results"]["k"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mem-budget", "lots"], "--mem-budget must be a size"),
        (["--mem-budget", "0"], "--mem-budget must be greater than zero"),
        (["--mem-budget=-2G"], "--mem-budget must be a size"),
        (["--mem-budget", "100M", "--size", "300x430"], "--mem-budget"),
        (["--size", "0x0"], "--size must have width and height >= 1"),
        (["--components", "0"], "--components must be >= 1"),
        (["--k", "1"], "--k must be 'auto' or an integer >= 2"),
        (["--k", "500"], "--k 500 is larger than the number of images"),
        (["--k-range", "20:2"], "--k-range must be LO:HI"),
        (["--components", "100"], "has 60 images but --components is 100"),
    ],
    ids=["budget-word", "budget-zero", "budget-negative", "budget-too-small", "size-zero",
         "components-zero", "k-one", "k-too-large", "k-range-reversed", "too-few-images"],
)
def test_cli_bad_settings_one_line_error(shapes_dir: Path, tmp_path: Path, args: list[str],
                                         message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that each bad setting exits 2 with one clear line and no traceback."""
    base = [str(shapes_dir), "--out", str(tmp_path / "run"), "--size", "16x20", "--components",
            "8", "--no-progress"]
    code = main([*base, *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that an empty folder is a one-line error."""
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "No images found" in capsys.readouterr().err


def test_cli_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that a folder that does not exist is a one-line error naming it."""
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_out_is_a_file(shapes_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """Check that --out pointing at a file is refused clearly."""
    f = tmp_path / "afile"
    f.write_text("x")
    assert main([str(shapes_dir), "--out", str(f), *SMALL]) == 2
    assert "is a file" in capsys.readouterr().err


def test_cli_plan_prints_plan(shapes_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that 'plan' shows batch sizes and per-stage memory without running anything."""
    assert main(["plan", str(shapes_dir), "--mem-budget", "2G", "--size", "16x20",
                 "--components", "8"]) == 0
    out = capsys.readouterr().out
    assert "60 image files" in out and "PCA batch" in out and "modelled peak" in out


def test_cli_demo_scores_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that the demo clusters scikit-learn's digits and beats chance clearly."""
    code = main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", "--k-range", "2:12"])
    assert code == 0
    out = capsys.readouterr().out
    ari = float(out.rsplit(":", 1)[1])
    assert ari > 0.4
    assert (tmp_path / "demo" / "elbow.png").exists()


def test_cli_python_m_entry(tmp_path: Path) -> None:
    """Check that python -m stream_cluster --help works (the module entry point)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "stream_cluster", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--mem-budget" in r.stdout


def test_cli_read_only_out(shapes_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that a read-only output folder is reported clearly.

    Tests run as root in CI, where chmod does not stop writes, so the write is made to fail
    the way a read-only folder makes it fail (PermissionError).
    """
    ro = tmp_path / "ro"
    ro.mkdir()
    real = Path.write_bytes

    def denied(self: Path, data: bytes) -> int:
        if self.parent == ro:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", denied)
    assert main([str(shapes_dir), "--out", str(ro), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "permission denied" in err and str(ro) in err


def test_cli_strict_fails_on_bad_image(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Check that --strict turns a skipped image into an error naming it."""
    make_shapes_corpus(tmp_path / "img", n=30)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    code = main([str(tmp_path / "img"), "--out", str(tmp_path / "run"), "--strict", *SMALL])
    assert code == 2
    assert "broken.png" in capsys.readouterr().err
