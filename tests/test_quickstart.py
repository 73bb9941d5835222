"""``s4seg quickstart`` end to end with a tiny budget: data, s4GAN, MLMT, export, publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4seg.repository import served_manifest, served_version
from s4seg.workflows.quickstart import quickstart

pytestmark = pytest.mark.trains  # every test here trains a model


def test_quickstart_builds_and_publishes_then_reuses(tmp_path: Path) -> None:
    data, runs, repo = tmp_path / "synth", tmp_path / "runs", tmp_path / "repo"
    assert quickstart(data, runs, repo, iterations=2) == 1
    manifest = served_manifest(repo)
    assert manifest is not None and manifest.classifier is not None
    assert manifest.sources["segmenter"].trainer == "s4gan"
    assert manifest.input_size == [128, 128]
    assert manifest.parity is not None and manifest.parity.passed
    assert (runs / "s4gan" / "last.pt").is_file() and (runs / "mlmt" / "last.pt").is_file()
    # A second start reuses what is there instead of training again.
    mtime = (runs / "s4gan" / "last.pt").stat().st_mtime
    assert quickstart(data, runs, repo, iterations=2) == 1
    assert served_version(repo) == 1
    assert (runs / "s4gan" / "last.pt").stat().st_mtime == mtime
