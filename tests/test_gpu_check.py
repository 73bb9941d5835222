"""scripts/gpu-check.sh assembles the package from a copy of the checkout (as on a bare GPU
machine, where nothing is installed) and runs from it; here on the CPU, in its quick mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.trains  # every test here trains a model

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_the_assembled_package(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doctor = (tmp_path / "doctor.txt").read_text()
    # The copy assembled by the script was imported, not this checkout's editable install.
    assert "at /tmp/s4seg-gpu-check." in doctor, doctor
    bench = (tmp_path / "BENCHMARKS.md").read_text()
    assert "--depths 18 --crop 32" in bench and "| ResNet-18 | cpu | fp32 |" in bench
    assert (ROOT / "BENCHMARKS.md").read_text() != bench  # the checkout's copy is untouched
