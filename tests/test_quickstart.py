"""``s4seg quickstart`` end to end with a tiny budget: data, s4GAN, MLMT, export (INT8 and BF16
judged), publish with the precision measured here.

It runs as the command, in a process of its own, as ``s4seg serve`` runs it on a first start:
in the suite's process, training after other tests had run OpenVINO sessions crashed (a
segmentation fault in this process, not reproduced alone; see the note of issue 25)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from s4seg.repository import served_manifest, served_version

pytestmark = pytest.mark.trains  # every test here trains a model


def quickstart(data: Path, runs: Path, repo: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "s4seg",
            "quickstart",
            "--data",
            str(data),
            "--runs",
            str(runs),
            "--repository",
            str(repo),
            "--iterations",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_quickstart_builds_and_publishes_then_reuses(tmp_path: Path) -> None:
    data, runs, repo = tmp_path / "synth", tmp_path / "runs", tmp_path / "repo"
    first = quickstart(data, runs, repo)
    assert served_version(repo) == 1
    manifest = served_manifest(repo)
    assert manifest is not None and manifest.classifier is not None
    assert manifest.sources["segmenter"].trainer == "s4gan"
    assert manifest.input_size == [128, 128]
    assert manifest.parity is not None and manifest.parity.passed
    assert (runs / "s4gan" / "last.pt").is_file() and (runs / "mlmt" / "last.pt").is_file()
    # The served precision was measured here among those that passed (issue 25).
    engine = manifest.published["engine"]
    assert "onnxruntime fp32" in engine["measured"] and "fastest of" in engine["why"]
    assert "precision auto:" in first.stderr
    # A second start reuses what is there instead of training again.
    mtime = (runs / "s4gan" / "last.pt").stat().st_mtime
    quickstart(data, runs, repo)
    assert served_version(repo) == 1
    assert (runs / "s4gan" / "last.pt").stat().st_mtime == mtime
