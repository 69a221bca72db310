"""The machine and the environments: cores, RAM, BLAS, versions, and the Dask benchmark venv.

dask, distributed and dask-ml are not project dependencies. They live in ``benchmarks/.venv``
(git-ignored), made with ``python -m venv --system-site-packages`` and the pins of
``benchmarks/requirements-dask.txt``, so the Dask rows share numpy/scikit-learn with the rest.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

__all__ = ["BENCH_DIR", "REQUIREMENTS", "VENV_DIR", "dask_python", "machine_info", "probe"]

BENCH_DIR = Path(__file__).resolve().parent
VENV_DIR = BENCH_DIR / ".venv"
REQUIREMENTS = BENCH_DIR / "requirements-dask.txt"

_PROBE = """
import json, sys, platform
out = {"python": platform.python_version(), "executable": sys.executable}
for name in %r:
    try:
        mod = __import__(name)
        out[name] = getattr(mod, "__version__", "?")
    except Exception as exc:
        out[name] = "import failed: %%s: %%s" %% (type(exc).__name__, exc)
try:
    import numpy
    from threadpoolctl import threadpool_info
    out["threadpools"] = threadpool_info()
except Exception as exc:
    out["threadpools"] = str(exc)
print(json.dumps(out))
"""


def probe(python: str, modules: tuple[str, ...]) -> dict[str, Any]:
    """Import ``modules`` in interpreter ``python`` and report their versions (or errors)."""
    res = subprocess.run(
        [python, "-c", _PROBE % (modules,)], capture_output=True, text=True, timeout=300,
        cwd=BENCH_DIR.parent,
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip()[-2000:]}
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def machine_info() -> dict[str, Any]:
    """Cores, RAM, CPU model, OS, BLAS (threadpoolctl) and versions of the harness Python."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": psutil.virtual_memory().total,
        "cpu_model": model,
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                           "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                           "MKL_NUM_THREADS") if k in os.environ},
        "harness": _harness_versions(),
    }


def _harness_versions() -> dict[str, Any]:
    """Versions of this interpreter's packages (metadata, no imports) and its BLAS."""
    from importlib import metadata

    import numpy  # noqa: F401  (loads the BLAS that threadpoolctl reports)
    from threadpoolctl import threadpool_info

    out: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable}
    for dist in ("numpy", "scipy", "scikit-learn", "opencv-python-headless", "h5py", "psutil",
                 "threadpoolctl", "matplotlib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["threadpools"] = threadpool_info()
    return out


def dask_python(explicit: str | None, setup: bool, log: Path) -> tuple[str | None, dict[str, Any]]:
    """The interpreter for the Dask rows and its versions, creating the venv if allowed.

    Parameters
    ----------
    explicit : str or None
        ``--dask-python``: use this interpreter as is.
    setup : bool
        Create ``benchmarks/.venv`` and ``pip install -r requirements-dask.txt`` when missing.
    log : Path
        pip's output goes here.

    Returns
    -------
    python, info
        ``python`` is None when no interpreter imports dask_ml; ``info`` says why.
    """
    mods = ("dask", "distributed", "dask_ml", "numpy", "sklearn", "numba", "pandas")
    if explicit:
        python = explicit
    else:
        python = str(VENV_DIR / "bin" / "python")
        if not Path(python).exists():
            if not setup:
                return None, {"error": f"{VENV_DIR} does not exist (run without --no-setup)"}
            with open(log, "ab") as fh:
                steps = [
                    [sys.executable, "-m", "venv", "--system-site-packages", str(VENV_DIR)],
                    [python, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                ]
                for step in steps:
                    fh.write(("$ " + " ".join(step) + "\n").encode())
                    fh.flush()
                    res = subprocess.run(step, stdout=fh, stderr=subprocess.STDOUT)
                    if res.returncode != 0:
                        return None, {"error": f"{' '.join(step)} failed; see {log}"}
    info = probe(python, mods)
    broken = {m: v for m, v in info.items() if isinstance(v, str) and v.startswith("import failed")}
    if "error" in info or broken:
        return None, {"python": python, **info}
    return python, info
