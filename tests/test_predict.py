"""``s4seg predict --via local``: resume, failure listing, shards, and safe output paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import many_scan_jpeg, segment_like_the_server
from PIL import Image

from s4seg.clients.predict import Job, list_jobs, output_path, parse_shard, run_jobs
from s4seg.errors import S4segError


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "s4seg", "predict", "--via", "local", *args],
        capture_output=True,
        text=True,
    )


@pytest.fixture
def inputs(synth_root: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    shutil.copytree(synth_root / "images" / "val", folder / "a")
    shutil.copy(synth_root / "images" / "val" / "val_00000.png", folder / "b.png")
    return folder


def test_predict_writes_resumes_and_lists_failures(
    inputs: Path, tiny_export: Path, tmp_path: Path
) -> None:
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (inputs / "notes.png").write_text("this is text")
    # ~10 s of decoding (400 progressive scans over 16 MP): refused before it is decoded.
    (inputs / "scans.jpg").write_bytes(many_scan_jpeg(400))
    out = tmp_path / "out"
    first = predict(
        "--input", str(inputs), "--output", str(out), "--model", str(tiny_export), "--deadline", "3"
    )
    assert first.returncode == 1  # failures make the exit code non-zero
    assert "5 written, 0 already there (skipped), 3 failed" in first.stdout, first.stdout
    assert "scans.jpg: JPEG with 406 scans, more than the limit of 100" in first.stdout
    assert (
        "broken.jpg: corrupt or truncated" in first.stdout
        or "broken.jpg: unreadable" in first.stdout
    )
    assert "notes.png: not an image" in first.stdout
    failures = json.loads((out / "failures.json").read_text())
    assert {Path(f["input"]).name for f in failures} == {"broken.jpg", "notes.png", "scans.jpg"}
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [
        "a/val_00000.png",
        "a/val_00001.png",
        "a/val_00002.png",
        "a/val_00003.png",
        "b.png",
    ]
    mask = Image.open(out / "b.png")
    assert mask.mode == "P" and mask.size == Image.open(inputs / "b.png").size
    # Interrupted runs: a lost output is redone, existing ones are skipped, nothing half-written.
    (out / "a" / "val_00002.png").unlink()
    (inputs / "broken.jpg").unlink()
    (inputs / "notes.png").unlink()
    (inputs / "scans.jpg").unlink()
    second = predict("--input", str(inputs), "--output", str(out), "--model", str(tiny_export))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 written, 4 already there (skipped), 0 failed" in second.stdout
    assert not (out / "failures.json").exists()
    assert not list(out.rglob(".*.tmp"))


def test_shards_cover_every_image_once(inputs: Path) -> None:
    everything, _ = list_jobs(str(inputs), (0, 1))
    shards = [list_jobs(str(inputs), (i, 3))[0] for i in range(3)]
    names = sorted(str(j.source) for shard in shards for j in shard)
    assert names == sorted(str(j.source) for j in everything)
    with pytest.raises(S4segError, match="i/n"):
        parse_shard("3")
    with pytest.raises(S4segError, match="0 <= i < n"):
        parse_shard("4/4")


def test_shard_auto_reads_the_indexed_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("S4SEG_SHARD_COUNT", raising=False)
    with pytest.raises(S4segError, match="JOB_COMPLETION_INDEX"):
        parse_shard("auto", 3)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    with pytest.raises(S4segError, match="--shard-count N or \\$S4SEG_SHARD_COUNT"):
        parse_shard("auto")
    assert parse_shard("auto", 3) == (2, 3)
    monkeypatch.setenv("S4SEG_SHARD_COUNT", "4")
    assert parse_shard("auto") == (2, 4)
    assert parse_shard("auto", 5) == (2, 5)  # the flag wins
    with pytest.raises(S4segError, match="here 2/2"):
        parse_shard("auto", 2)


def test_indexed_job_pods_share_the_work_and_a_rerun_does_only_what_is_missing(
    inputs: Path, tiny_export: Path, tmp_path: Path
) -> None:
    """Issue 24: three pods of an Indexed Job (the environment Kubernetes gives them) write
    every output once; a pod that failed part-way, rerun, writes only what it had not."""
    out = tmp_path / "out"
    args = [
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--model",
        str(tiny_export),
        "--shard",
        "auto",
    ]

    def pod(index: int) -> subprocess.CompletedProcess:
        env = {**os.environ, "JOB_COMPLETION_INDEX": str(index), "S4SEG_SHARD_COUNT": "3"}
        done = subprocess.run(
            [sys.executable, "-m", "s4seg", "predict", "--via", "local", *args],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    written = {}
    for index in range(3):
        pod(index)
        written[index] = {p for p in out.rglob("*.png")} - set().union(*written.values())
    everything = {output_path(out, job, "png") for job in list_jobs(str(inputs), (0, 1))[0]}
    assert set().union(*written.values()) == everything and len(everything) == 5
    assert all(written.values())  # each pod had its own share
    lost = sorted(written[1])[0]
    lost.unlink()  # the pod of index 1 failed before writing this one
    rerun = pod(1)
    assert f"1 written, {len(written[1]) - 1} already there (skipped), 0 failed" in rerun.stdout
    assert lost.is_file()


def test_outputs_never_leave_the_output_folder(inputs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "x.png")
    os.symlink(outside / "x.png", inputs / "link.png")  # a symlink out of the input tree
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"in/b.png\n../evil.png\n{inputs / 'b.png'}\nin/a/../../escape.png\n# comment\n"
    )
    jobs, rejected = list_jobs(str(listing), (0, 1))
    assert {Path(p).name for p, _ in rejected} == {"evil.png", "escape.png"}
    out = tmp_path / "out"
    for job in jobs:
        assert output_path(out, job, "png").resolve().is_relative_to(out.resolve())
    folder_jobs, folder_rejected = list_jobs(str(inputs), (0, 1))
    assert [Path(p).name for p, _ in folder_rejected] == ["link.png"]
    assert all(j.source.name != "link.png" for j in folder_jobs)
    with pytest.raises(S4segError, match="outside"):
        output_path(out, Job(Path("x"), Path("../../x")), "png")


def test_predict_local_equals_the_pipeline(tiny_export: Path, inputs: Path, tmp_path: Path) -> None:
    """Images larger than the served 64x64 and not square (issue 20, item 12), so that the
    map-back to each image's size is what is compared, against the server's own."""
    from s4seg.onnx_pipeline import OnnxPipeline

    for path, size in zip(
        sorted((inputs / "a").iterdir()), [(150, 90), (70, 130)] * 2, strict=True
    ):
        Image.open(path).convert("RGB").resize(size).save(path)
    out = tmp_path / "out"
    assert (
        predict(
            "--input",
            str(inputs / "a"),
            "--output",
            str(out),
            "--model",
            str(tiny_export),
            "--concurrency",
            "2",
        ).returncode
        == 0
    )
    pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    for path in sorted((inputs / "a").iterdir()):
        image = np.asarray(Image.open(path).convert("RGB"))
        expected = segment_like_the_server(pipeline, image).labels[0]
        assert expected.shape != (64, 64)
        np.testing.assert_array_equal(np.asarray(Image.open(out / path.name)), expected)


def test_a_stalled_image_fails_alone_and_the_run_goes_on(tmp_path: Path) -> None:
    """Issue 36: past its deadline an image fails with the reason, its worker is killed (SIGKILL
    when SIGTERM is blocked, as for a thread deadlocked in C) and replaced, and every other image
    is written; a worker that dies or an image that raises fails that image alone."""
    from helpers import ScriptedSegmenter

    source = tmp_path / "in"
    source.mkdir()
    names = ["a.png", "stall.png", "b.png", "spin.png", "die.png", "bad.png", "c.png", "d.png"]
    for name in names:
        (source / name).write_bytes(name.encode())
    jobs, _ = list_jobs(str(source), (0, 1))
    out = tmp_path / "out"
    started = time.monotonic()
    report = run_jobs(jobs, out, "png", ScriptedSegmenter(), 2, deadline=3, progress=False)
    took = time.monotonic() - started
    assert report.done == 4
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png", "d.png"]
    assert (out / "c.png").read_bytes() == b"c.png"
    reasons = {Path(path).name: reason for path, reason in report.failures}
    assert set(reasons) == {"stall.png", "spin.png", "die.png", "bad.png"}
    for name in ("stall.png", "spin.png"):
        assert "not done within the 3 s deadline" in reasons[name]
    assert "worker process died" in reasons["die.png"]
    assert reasons["bad.png"] == "bad.png: scripted failure"
    assert took < 60, took  # no image outlived its deadline by much, none held the run


def test_inputs_that_share_a_name_get_outputs_of_their_own(tmp_path: Path) -> None:
    """Review L4: ``a.jpg`` and ``a.png`` both wrote ``a.png``, one answer silently lost. Those
    keep their suffix; every shard names alike. A killed run's temporary outputs are removed,
    nothing else."""
    from helpers import ScriptedSegmenter

    source = tmp_path / "in"
    (source / "d").mkdir(parents=True)
    for name in ("a.jpg", "a.png", "b.png", "d/a.png"):
        (source / name).write_bytes(name.encode())
    names = {
        j.source.name + ("" if j.source.parent == source else "@d"): j.relative.as_posix()
        for j in list_jobs(str(source), (0, 1))[0]
    }
    assert names == {"a.jpg": "a.jpg", "a.png": "a.png", "b.png": "b", "a.png@d": "d/a"}
    shards = {j.relative.as_posix() for i in range(3) for j in list_jobs(str(source), (i, 3))[0]}
    assert shards == set(names.values())
    out = tmp_path / "out"
    out.mkdir()
    (out / ".b.png.x7Hq2kLm.tmp").write_bytes(b"half")  # write_atomic's, from a killed run
    (out / ".notes.tmp").write_text("the user's")
    jobs, _ = list_jobs(str(source), (0, 1))
    report = run_jobs(jobs, out, "png", ScriptedSegmenter(), 2, progress=False)
    assert report.done == 4 and not report.failures
    assert (out / "a.jpg.png").read_bytes() == b"a.jpg" and (
        out / "a.png.png"
    ).read_bytes() == b"a.png"
    assert sorted(p.name for p in out.iterdir()) == [
        ".notes.tmp",
        "a.jpg.png",
        "a.png.png",
        "b.png",
        "d",
    ]
