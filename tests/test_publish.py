"""Publish, rollback, pruning and the promotion gate on a real repository (no server here;
tests/test_triton.py serves it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from s4seg.export.repository import PublishError, publish, rollback
from s4seg.export.requests import ExportRequest, PromotionGate, PublishRequest
from s4seg.manifest import Manifest
from s4seg.repository import ENSEMBLE, STEP_MODELS, served_version, version_pipeline
from s4seg.repository import model_versions as versions
from s4seg.triton_config import step_pbtxt

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda *_: None}


def test_committed_configs_are_what_publish_writes() -> None:
    for step, model in STEP_MODELS.items():
        committed = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
        assert committed == step_pbtxt(step, "python"), f"{model}/config.pbtxt is stale"


def test_publish_writes_complete_numbered_versions(tiny_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert publish(PublishRequest(tiny_export, repo), **QUIET) == 1
    assert publish(PublishRequest(tiny_export, repo), **QUIET) == 2
    for model in STEP_MODELS.values():
        assert versions(repo / model) == [1, 2]
        assert sorted(p.name for p in (repo / model / "2").iterdir()) == ["model.onnx", "model.py"]
    assert (repo / ENSEMBLE / "2" / "manifest.json").is_file()
    config = (repo / ENSEMBLE / "config.pbtxt").read_text()
    assert "versions: [ 2 ]" in config and config.count("model_version: 2") == 3
    assert served_version(repo) == 2
    assert not list(repo.rglob("*.tmp"))  # no staging folder left
    # A published version runs in-process exactly like the export it came from.
    assert version_pipeline(repo, 2, device="cpu").manifest.classes[0] == "background"


def test_rollback_serves_the_previous_version(tiny_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for _ in range(3):
        publish(PublishRequest(tiny_export, repo), **QUIET)
    assert rollback(repo, **QUIET) == 2
    assert served_version(repo) == 2
    assert "model_version: 2" in (repo / ENSEMBLE / "config.pbtxt").read_text()
    assert all(versions(repo / m) == [1, 2] for m in STEP_MODELS.values())
    rollback(repo, **QUIET)
    with pytest.raises(PublishError, match="nothing to roll back to"):
        rollback(repo, **QUIET)


def test_keep_prunes_old_versions(tiny_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for _ in range(4):
        publish(PublishRequest(tiny_export, repo, keep=2), **QUIET)
    assert all(versions(repo / m) == [3, 4] for m in [ENSEMBLE, *STEP_MODELS.values()])
    with pytest.raises(PublishError, match="at least 2"):
        publish(PublishRequest(tiny_export, repo, keep=1), **QUIET)


def test_onnxruntime_runtime_writes_native_configs(tiny_export: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish(PublishRequest(tiny_export, repo, runtime="onnxruntime"), **QUIET)
    config = (repo / "s4seg_segmenter" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and 'backend: "python"' not in config
    assert [p.name for p in (repo / "s4seg_segmenter" / "1").iterdir()] == ["model.onnx"]


def test_every_written_config_is_a_valid_triton_model_config(
    tiny_export: Path, tmp_path: Path
) -> None:
    """Each runtime's configs, as files (publish) and as the JSON s4seg serve sends with each
    load, parse strictly as Triton's ModelConfig (an unknown field or enum fails)."""
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from s4seg.triton_config import RUNTIMES, ensemble_config, step_config

    for runtime in RUNTIMES:
        repo = tmp_path / runtime
        publish(PublishRequest(tiny_export, repo, runtime=runtime), **QUIET)
        for model in [*STEP_MODELS.values(), ENSEMBLE]:
            text_format.Parse(
                (repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
            )
        for step in STEP_MODELS:
            json_format.ParseDict(
                step_config(step, runtime, [1], 2, 1), model_config_pb2.ModelConfig()
            )
            # python-backend steps: two instances each, or requests stall (triton_config)
            counts = [g["count"] for g in step_config(step, runtime)["instance_group"]]
            two = runtime == "python" or (runtime == "onnxruntime" and step == "segmenter")
            assert counts == ([2] if two else [1]), (runtime, step)
    json_format.ParseDict(ensemble_config(1), model_config_pb2.ModelConfig())


def test_openvino_runtime_puts_the_networks_on_tritons_openvino_backend(
    tiny_export: Path, tmp_path: Path
) -> None:
    """Issue 25: the NGC configuration where OpenVINO wins on the CPU. Not run here (the pip
    tritonserver has the python backend only): the configs, files and refusals are checked."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from s4seg.repository import read_manifest

    repo = tmp_path / "repo"
    version = publish(PublishRequest(tiny_export, repo, runtime="openvino"), **QUIET)
    configs = {}
    for step, model in STEP_MODELS.items():
        configs[step] = text_format.Parse(
            (repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        # what the native backends read: the ONNX file alone (no runner, no engine.json)
        assert [p.name for p in (repo / model / str(version)).iterdir()] == ["model.onnx"]
    assert configs["gate"].backend == "onnxruntime"
    for step in ("segmenter", "classifier"):
        config = configs[step]
        assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
        assert config.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
        assert [g.count for g in config.instance_group] == [1]  # streams, not instances
    assert configs["segmenter"].parameters["NUM_STREAMS"].string_value == "2"
    engine = read_manifest(repo, version).published["engine"]
    assert (engine["runtime"], engine["precision"]) == ("openvino", "fp32")
    served = version_pipeline(repo, version, device="cpu")  # promotion gate, predict --via local
    assert served.runtime == "openvino"
    with pytest.raises(PublishError, match="sets bf16 per model"):
        publish(PublishRequest(tiny_export, repo, runtime="openvino", precision="bf16"), **QUIET)
    with pytest.raises(PublishError, match="serves fp32 or int8, not fp16"):
        publish(PublishRequest(tiny_export, repo, runtime="openvino", precision="fp16"), **QUIET)


def test_other_classes_are_refused_unless_forced(tiny_export: Path, tmp_path: Path) -> None:
    repo, other = tmp_path / "repo", tmp_path / "other"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    shutil.copytree(tiny_export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"][1] = "plate"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PublishError, match="differ from the served"):
        publish(PublishRequest(other, repo), **QUIET)
    assert served_version(repo) == 1
    assert publish(PublishRequest(other, repo, force=True), **QUIET) == 2


def test_changed_or_corrupt_export_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    repo, bad = tmp_path / "repo", tmp_path / "bad"
    shutil.copytree(tiny_export, bad)
    onnx = bad / "segmenter.onnx"
    onnx.write_bytes(onnx.read_bytes()[:1000])
    with pytest.raises(PublishError, match="does not match the sha256"):
        publish(PublishRequest(bad, repo), **QUIET)
    assert served_version(repo) is None
    assert not any((repo / m).exists() and versions(repo / m) for m in STEP_MODELS.values())


def test_promotion_gate_prints_both_figures_and_refuses(
    tiny_export: Path, synth_root: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    command = [
        sys.executable,
        "-m",
        "s4seg",
        "publish",
        str(tiny_export),
        "--repository",
        str(repo),
        "--eval-data",
        str(synth_root),
    ]
    accepted = subprocess.run([*command, "--max-drop", "1"], capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert "promotion gate: new" in accepted.stderr and "served (v1)" in accepted.stderr
    # Same model, but demand a gain of 5 points: the measured figures must refuse it.
    refused = subprocess.run([*command, "--max-drop=-5"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "refused: gated mIoU" in refused.stderr and "served version 2" in refused.stderr
    assert served_version(repo) == 2


def folders_only_repository(root: Path, count: int) -> Path:
    """Versions 1..count: a manifest and a folder per step (what prune and rollback look at)."""
    from gateway_fakes import write_repository

    for version in range(1, count + 1):
        write_repository(root, version)
        for model in STEP_MODELS.values():
            (root / model / str(version)).mkdir(parents=True)
    return root


def pretend_serving(
    repo: Path, version: int, failed: tuple[int, ...] = (), replica: str = "replica-a"
) -> None:
    """The status a running ``s4seg serve`` (this live process) writes beside the repository."""
    from s4seg.repository import write_status

    status = {"served_version": version, "failed": {str(v): "x" for v in failed}}
    write_status(repo, replica, status)


def test_keep_never_prunes_the_served_version(tmp_path: Path) -> None:
    """Issue 19, item 3: newer versions failed to load, so the served one is the oldest."""
    from s4seg.export.repository import prune

    repo = folders_only_repository(tmp_path / "repo", 3)
    pretend_serving(repo, 1, failed=(2, 3))
    prune(repo, keep=2, **QUIET)
    assert all(versions(repo / m) == [1, 2, 3] for m in [ENSEMBLE, *STEP_MODELS.values()])
    pretend_serving(repo, 3)
    prune(repo, keep=2, **QUIET)
    assert all(versions(repo / m) == [2, 3] for m in [ENSEMBLE, *STEP_MODELS.values()])


def test_rollback_switches_first_and_deletes_after(tmp_path: Path) -> None:
    """Issue 19, item 3: the newest version is withdrawn at once (no longer complete, so the
    server moves), and its files go only once the server no longer serves it."""
    import threading
    import time

    from s4seg.repository import complete_versions

    repo = folders_only_repository(tmp_path / "repo", 2)
    pretend_serving(repo, 2)
    pretend_serving(repo, 2, replica="replica-b")  # a second replica of the same repository
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(rollback(repo, wait=20, **QUIET)))
    worker.start()
    time.sleep(0.5)
    assert complete_versions(repo) == [1]  # withdrawn: the version manager switches away
    assert all((repo / m / "2").is_dir() for m in STEP_MODELS.values())  # still loadable
    assert worker.is_alive()
    pretend_serving(repo, 1)  # one replica has switched, the other not yet
    time.sleep(1)
    assert worker.is_alive() and all((repo / m / "2").is_dir() for m in STEP_MODELS.values())
    pretend_serving(repo, 1, replica="replica-b")  # both have
    worker.join(10)
    assert result == [1]
    assert all(versions(repo / m) == [1] for m in STEP_MODELS.values())
    assert not list((repo / ENSEMBLE).glob(".*withdrawn"))


def test_promotion_gate_measures_the_files_published_as_the_server_runs_them(
    varied_checkpoint: Path,
    tiny_checkpoint: Path,
    tiny_classifier: Path,
    synth_root: Path,
    tiny_export: Path,
    tmp_path: Path,
) -> None:
    """Issue 20, item 4: ``publish --precision fp16`` is gated on the FP16 files, letterboxed
    and mapped back as served. Here the FP16 segmenter is another model's (hashes updated), so
    only a gate that measures it sees the difference."""
    import re

    from s4seg.export.exporter import export_models
    from s4seg.manifest import Manifest, sha256_file
    from s4seg.onnx_pipeline import OnnxPipeline
    from s4seg.pipeline_evaluation import evaluate_pipeline

    # Served at 96x72, not the 64x64 of the images: the served path differs from native.
    served = {"input_size": (96, 72), "data": str(synth_root), "parity_images": 2, "tau": -1.0}
    new, other = tmp_path / "new", tmp_path / "other"
    fp16 = frozenset({"fp16"})
    export_models(
        ExportRequest(
            str(tiny_checkpoint), str(tiny_classifier), str(new), variants=fp16, **served
        ),
        **QUIET,
    )
    # (tiny_checkpoint answers background everywhere, varied not)
    export_models(
        ExportRequest(str(varied_checkpoint), str(tiny_classifier), str(other), **served), **QUIET
    )
    manifest = Manifest.load(new)
    swapped = new / manifest.variants["fp16"].graphs["segmenter"].file
    shutil.copyfile(other / "segmenter.onnx", swapped)
    manifest.variants["fp16"].graphs["segmenter"].sha256 = sha256_file(swapped)
    manifest.save(new / "manifest.json")

    repo = tmp_path / "repo"
    publish(PublishRequest(tiny_export, repo), **QUIET)
    lines: list[str] = []
    publish(
        PublishRequest(
            new, repo, precision="fp16", gate=PromotionGate(data=str(synth_root), max_drop=100)
        ),
        log=lines.append,
    )
    logged = next(line for line in lines if line.startswith("promotion gate: new "))
    measured = float(re.search(r"new ([\d.]+) mIoU", logged).group(1))

    def miou(precision: str, served_path: bool = True) -> float:
        pipeline = OnnxPipeline.from_export(new, device="cpu", precision=precision)
        report, _ = evaluate_pipeline(pipeline, str(synth_root), served_path=served_path)
        return round(100 * report["miou"], 2)

    assert measured == miou("fp16") != miou("fp32")
    assert measured != miou("fp16", served_path=False)


@pytest.fixture(scope="module")
def cpu_variants(
    varied_checkpoint: Path, tiny_classifier: Path, synth_root: Path, tmp_path_factory
) -> Path:
    """An export with its INT8 and BF16 variants judged (BF16 only where the CPU has it)."""
    from s4seg.export.exporter import export_models

    out = tmp_path_factory.mktemp("cpu-variants") / "export"
    export_models(
        ExportRequest(
            str(varied_checkpoint),
            str(tiny_classifier),
            str(out),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=2,
            tau=0.2,
            variants=frozenset({"int8", "bf16"}),
        ),
        log=lambda *_: None,
    )
    return out


def test_bench_precision_times_every_runtime_and_precision(cpu_variants: Path) -> None:
    """Issue 25: `bench precision` has a row per runtime and precision the export can run in
    here, with the variants' parity figures."""
    from s4seg.engines import bf16_capable

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "s4seg",
            "bench",
            "precision",
            "--model",
            str(cpu_variants),
            "--batch-sizes",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 1 |")]
    engines = {tuple(cell.strip() for cell in row.split("|")[2:5]) for row in rows}
    expected = {
        ("segmenter", "onnxruntime", "fp32"),
        ("segmenter", "openvino", "fp32"),
        ("pipeline", "openvino", "fp32"),
    }
    if bf16_capable() and Manifest.load(cpu_variants).variants["bf16"].graphs:
        expected.add(("segmenter", "openvino", "bf16"))
    assert expected <= engines, engines
    assert "- INT8 in onnxruntime: label agreement" in done.stdout
    if Manifest.load(cpu_variants).variants["int8"].runtime_parity:
        assert "- INT8 in openvino: label agreement" in done.stdout  # judged there too
    import openvino

    assert f"openvino {openvino.__version__}" in done.stdout  # the machine line names both


def test_auto_offers_a_runtime_only_for_the_precisions_judged_in_it(cpu_variants: Path) -> None:
    """INT8's parity is ONNX Runtime's; OpenVINO runs the same graph with its own kernels, so
    ``precision auto`` offers OpenVINO INT8 only where it was judged in OpenVINO and passed."""
    from s4seg.export.engine_choice import Candidate, candidates
    from s4seg.manifest import Variant

    manifest = Manifest.load(cpu_variants)
    judged = manifest.variants["int8"].parity.model_copy(update={"passed": True})
    openvino_int8 = Candidate("openvino", "int8")
    onnxruntime_int8 = Candidate("onnxruntime", "int8")
    graphs = {"segmenter": manifest.graphs["segmenter"]}  # candidates() reads the manifest only

    manifest.variants["int8"] = Variant(
        graphs=graphs, parity=judged, runtime_parity={"openvino": judged}
    )
    found, _ = candidates(manifest)
    assert openvino_int8 in found and onnxruntime_int8 in found
    manifest.variants["int8"] = Variant(graphs=graphs, parity=judged)  # made before it was judged
    found, left_out = candidates(manifest)
    assert openvino_int8 not in found and onnxruntime_int8 in found
    assert "int8 in openvino: not judged (export again)" in left_out
    refused = judged.model_copy(update={"passed": False})
    manifest.variants["int8"] = Variant(
        graphs=graphs, parity=judged, runtime_parity={"openvino": refused}
    )
    found, left_out = candidates(manifest)
    assert openvino_int8 not in found and onnxruntime_int8 in found
    assert any(r.startswith("int8 in openvino: refused (label agreement >=") for r in left_out)


def test_bf16_is_judged_at_export_and_auto_publishes_the_fastest_that_passed(
    cpu_variants: Path, tmp_path: Path
) -> None:
    """Issue 25: BF16 (the FP32 graphs in OpenVINO at bf16) gets parity figures of its own at
    export; ``publish --precision auto`` measures every way that passed on this machine,
    serves the fastest, and says which and why; the runner and the in-process pipeline read
    the same choice."""
    from s4seg.engines import bf16_capable
    from s4seg.repository import ENGINE_FILE, read_manifest

    if not bf16_capable():
        pytest.skip("this CPU has no BF16 instructions (export leaves bf16 out; tested below)")
    out = cpu_variants
    manifest = Manifest.load(out)
    bf16 = manifest.variants["bf16"]
    assert bf16.parity.rule and bf16.parity.images > 0
    assert bf16.parity.label_agreement > 0.9 and bf16.parity.label_agreement < 1.0 + 1e-9
    if bf16.parity.passed:  # the FP32 files, run another way
        assert {s: g.file for s, g in bf16.graphs.items()} == {
            s: manifest.graphs[s].file for s in ("segmenter", "classifier")
        }
    lines: list[str] = []
    repo = tmp_path / "repo"
    version = publish(PublishRequest(out, repo, precision="auto"), log=lines.append)
    engine = read_manifest(repo, version).published["engine"]
    measured = engine["measured"]
    expected = {"onnxruntime fp32", "openvino fp32"}
    expected |= {"openvino bf16"} if bf16.parity.passed else set()
    int8 = manifest.variants["int8"]
    if int8.graphs:
        expected |= {"onnxruntime int8"}
        # OpenVINO's int8 kernels are judged on their own: offered only where they passed
        in_openvino = int8.runtime_parity["openvino"]
        assert in_openvino.rule == int8.parity.rule and in_openvino.images == int8.parity.images
        if in_openvino.passed:
            expected |= {"openvino int8"}
        else:
            assert any(r.startswith("int8 in openvino: refused") for r in engine["left_out"])
    assert set(measured) == expected
    fastest = min(measured, key=lambda name: measured[name]["ms"])
    assert engine["confidence"]["rounds"] == 7 and "rounds" in engine["confidence"]["says"]
    assert f"{engine['runtime']} {engine['precision']}" == fastest
    assert "fastest of" in engine["why"] and any("precision auto:" in line for line in lines)
    for step, model in STEP_MODELS.items():
        written = repo / model / str(version) / ENGINE_FILE
        if step in ("segmenter", "classifier") and engine["runtime"] == "openvino":
            assert json.loads(written.read_text()) == {
                "runtime": engine["runtime"],
                "precision": engine["precision"],
            }
        else:
            assert not written.exists()
    served = version_pipeline(repo, version, device="cpu")
    assert (served.runtime, served.precision) == (engine["runtime"], engine["precision"])
    with pytest.raises(PublishError, match="native ONNX Runtime backend has no bf16"):
        publish(PublishRequest(out, repo, runtime="onnxruntime", precision="bf16"), **QUIET)


def test_auto_judges_each_engine_by_its_least_disturbed_round_and_says_how_sure() -> None:
    """Issue 36: published beside a training, the engine 24% slower when idle won. Judged by
    every call together, a candidate whose rounds were slowed by the machine loses; judged by
    its best round it wins, and the record says the machine was busy and how to choose again."""
    from s4seg.export.engine_choice import Candidate, confidence_record, judge

    ov, ort = Candidate("openvino", "int8"), Candidate("onnxruntime", "int8")
    idle_ov, idle_ort = [0.0055] * 4, [0.0072] * 4
    # A training beside it: OpenVINO's threads lose the cores in five of seven rounds.
    busy = {ov: [idle_ov, idle_ov] + [[0.012] * 4] * 5, ort: [idle_ort] * 2 + [[0.0080] * 4] * 5}
    verdict = judge(busy)
    assert verdict.best == ov and verdict.runner_up == ort
    assert verdict.ms == {ov: pytest.approx(5.5), ort: pytest.approx(7.2)}
    assert (verdict.wins, verdict.sure) == (2, False)
    record = confidence_record(verdict, load=2.1, folder=Path("/x/export"))
    assert record["sure"] is False and record["margin"] == pytest.approx(7.2 / 5.5, abs=1e-3)
    assert "the machine was busy" in record["says"]
    assert "s4seg publish /x/export --precision auto" in record["says"]
    # Idle: every round alike; the winner won them all, and nothing to choose again.
    idle = judge({ov: [idle_ov] * 7, ort: [idle_ort] * 7})
    assert (idle.best, idle.wins, idle.sure) == (ov, 7, True)
    calm = confidence_record(idle, load=0.1, folder=Path("/x/export"))
    assert calm["sure"] and "choose again" not in calm["says"] and calm["spread"] == 0


def test_version_numbers_only_grow_and_prune_keeps_whole_versions(
    tiny_export: Path, tmp_path: Path
) -> None:
    """Issue 32, item 8 (review M3, M2b): publish, rollback, publish reused "2" for another
    model; now the numbers strictly increase. A publish that crashed after placing its steps
    (steps-only version) made ``--keep 2`` prune an older version's steps but not its manifest,
    and rollback refused it; prune now works on whole versions and removes the leftover."""
    repo = tmp_path / "repo"
    numbers = [
        publish(PublishRequest(tiny_export, repo), **QUIET),
        publish(PublishRequest(tiny_export, repo), **QUIET),
    ]
    rollback(repo, **QUIET)
    numbers.append(publish(PublishRequest(tiny_export, repo), **QUIET))
    assert numbers == [1, 2, 3] and served_version(repo) == 3
    # A crashed publish of 4: its steps are placed, its ensemble folder is not.
    for model in STEP_MODELS.values():
        shutil.copytree(repo / model / "3", repo / model / "4")
    assert publish(PublishRequest(tiny_export, repo, keep=2), **QUIET) == 5
    assert all(versions(repo / m) == [3, 5] for m in [ENSEMBLE, *STEP_MODELS.values()])
    assert rollback(repo, **QUIET) == 3 and served_version(repo) == 3
