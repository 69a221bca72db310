"""README's Python example runs as a user would: a script without a main guard, and stdin."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _example(images: Path, out: Path) -> str:
    """The README's Python API block, pointed at test folders and sized for tiny images."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Python API\n\n```python\n(.*?)```", text, re.S)
    assert block, "README lost its Python API example"
    code = block.group(1)
    assert '"photos/"' in code and '"runs/photos"' in code
    code = code.replace('"photos/"', repr(str(images))).replace('"runs/photos"', repr(str(out)))
    # Tiny generated images: fewer components, a small size; every other word as in README.
    return code.replace("n_components=200", "n_components=8, width=16, height=20")


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_readme_example_without_main_guard(shapes_dir: Path, tmp_path: Path, how: str) -> None:
    """Check that the example labels every image with worker processes, never blaming images."""
    out = tmp_path / "run"
    code = _example(shapes_dir, out)
    assert "__main__" not in code
    if how == "script":
        script = tmp_path / "example.py"
        script.write_text(code, encoding="utf-8")
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
    else:
        proc = subprocess.run([sys.executable, "-"], input=code, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "crashed" not in proc.stdout + proc.stderr
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        labelled = {row["path"] for row in csv.DictReader(fh)}
    assert labelled == {str(p.relative_to(shapes_dir)) for p in shapes_dir.rglob("*.png")}
    with open(out / "skipped.csv", newline="", encoding="utf-8") as fh:
        assert list(csv.DictReader(fh)) == []
    # The plan used worker processes (the 2-core default), so the guard question was real.
    import json

    assert json.loads((out / "run.json").read_text())["plan"]["workers"] >= 1
