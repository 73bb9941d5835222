"""``s4seg doctor``: every stage on the CPU, on numpy 2 (what GPU images and users' training
environments have), and a failing stage reported by name with exit code 1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from s4seg.workflows.cli import main

pytestmark = pytest.mark.trains  # every test here trains a model

STAGES = [
    "data",
    "train baseline",
    "train s4gan",
    "train mlmt",
    "train unimatch-v2",
    "resume",
    "evaluate",
    "export",
    "onnx pipeline",
]
NUMPY2 = Path(sys.prefix) / "numpy2"  # `make setup` puts numpy 2 there (pyproject.toml: why)


def test_doctor_passes_every_stage_on_the_cpu_with_numpy_2(tmp_path: Path) -> None:
    assert (NUMPY2 / "numpy").is_dir(), f"{NUMPY2} is missing: `make setup` installs numpy 2 there"
    env = {**os.environ, "PYTHONPATH": str(NUMPY2)}
    done = subprocess.run(
        [sys.executable, "-m", "s4seg", "doctor", "--device", "cpu", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert report["environment"]["numpy"].startswith("2."), report["environment"]["numpy"]
    assert [s["stage"] for s in report["stages"]] == STAGES
    assert all(s["passed"] for s in report["stages"]), report["stages"]
    assert "9 of 9 stages passed" in done.stdout
    assert (tmp_path / "export" / "manifest.json").is_file()


def test_doctor_names_the_failing_stage_and_exits_1(tmp_path: Path, capsys) -> None:
    # No GPU here: the training stages fail with the reason, what needs them is skipped.
    assert main(["doctor", "--device", "cuda", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"train baseline +FAIL", out) and "no CUDA device is available" in out
    assert "skipped: s4gan failed" in out and "1 of 9 stages passed" in out
    assert (tmp_path / "logs" / "train-baseline.log").is_file()
