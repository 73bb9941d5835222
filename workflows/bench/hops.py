"""``s4seg bench hops``: the served ensemble in three steps (segmenter + classifier, each with
its normalisation folded in -> gate) against the four it had before (preprocess -> segmenter +
classifier -> gate), in one tritonserver, called the same way, interleaved.

Both ensembles are built from one published version: the same ONNX operators, the same runner,
the same engine (``engine.json``), the same step configs; the four-step graphs are the served
ones cut where export folded them (``export.fold.split_preprocess``), the two preprocess halves
joined into one step as before. The ensembles take and answer the same tensors, so the gateway
would not see the difference; what differs is one python-backend stub process per request and
the FP32 inputs it hands over.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from s4seg.errors import S4segError
from s4seg.export.fold import rename_tensors, split_preprocess
from s4seg.imaging import decode_image
from s4seg.letterbox import Framing
from s4seg.repository import ENGINE_FILE, STEP_MODELS, graph_path, read_manifest, served_version
from s4seg.serving.triton import TritonProcess, TritonSettings, free_port
from s4seg.tensors import (
    CLS_IMAGE,
    CLS_INPUT,
    FOLDED_INPUTS,
    IMAGE,
    MAP_BACK_OUTPUTS,
    PARTS_IO,
    SEG_INPUT,
    TAU,
    TensorSpec,
)
from s4seg.timing import percentile
from s4seg.triton_config import ensemble_config, step_config, to_pbtxt

from .report import cpu_description, provenance, report
from .serve import bench_images, measure, triton_step_stats

RUNNER = Path(__file__).resolve().parents[2] / "export" / "triton" / "onnx_runner.py"


def unfolded(repository: Path, version: int) -> dict[str, object]:
    """The version's networks cut where export folded them: one preprocess graph (both halves
    side by side, as the four-step export made it) and each network alone."""
    import onnx
    from onnx import compose

    seg_pre, seg_net = split_preprocess(
        onnx.load(str(graph_path(repository, "segmenter", version))), "segmenter"
    )
    cls_pre, cls_net = split_preprocess(
        onnx.load(str(graph_path(repository, "classifier", version))), "classifier"
    )
    # The halves share names inside (the same normalisation code): the classifier's get a
    # prefix, all but its input and output.
    cls_pre = compose.add_prefix(cls_pre, "cls_")
    rename_tensors(cls_pre, {f"cls_{t.name}": t.name for t in (CLS_IMAGE, CLS_INPUT)})
    preprocess = compose.merge_models(seg_pre, cls_pre, io_map=[])
    onnx.checker.check_model(preprocess)
    return {"preprocess": preprocess, "segmenter": seg_net, "classifier": cls_net}


def io(tensors: tuple[TensorSpec, ...]) -> list[dict]:
    return [{"name": t.name, "data_type": t.triton_type, "dims": list(t.dims)} for t in tensors]


def write_model(root: Path, name: str, config: dict, version_files: dict[str, Path]) -> None:
    folder = root / name / "1"
    folder.mkdir(parents=True)
    for target, source in version_files.items():
        shutil.copyfile(source, folder / target)
    (root / name / "config.pbtxt").write_text(to_pbtxt({**config, "name": name}))


def build_layouts(repository: Path, version: int, root: Path) -> dict[str, str]:
    """Both ensembles in one Triton repository; returns layout name -> ensemble model name."""
    import onnx

    def files(step: str, model: Path | None = None) -> dict[str, Path]:
        folder = graph_path(
            repository, "segmenter" if step == "preprocess" else step, version
        ).parent
        found = {"model.onnx": model or folder / "model.onnx", "model.py": RUNNER}
        if step != "preprocess" and (folder / ENGINE_FILE).is_file():
            found[ENGINE_FILE] = folder / ENGINE_FILE
        return found

    for step in STEP_MODELS:  # the served three
        write_model(root, f"three_{step}", step_config(step, "python", loaded=[1]), files(step))
    for step, model in unfolded(repository, version).items():
        path = root / f"{step}_unfolded.onnx"
        onnx.save(model, str(path))
        # as served (the segmenter's instances), with the unfolded inputs
        config = step_config(step if step in STEP_MODELS else "gate", "python", loaded=[1])
        inputs, outputs = PARTS_IO[step]
        config.update(input=io(inputs), output=io(outputs))
        write_model(root, f"four_{step}", config, files(step, path))
    ensembles = {}
    for layout in ("four", "three"):
        config = ensemble_config(1)
        steps = []
        for entry in config["ensemble_scheduling"]["step"]:
            step = next(s for s, m in STEP_MODELS.items() if m == entry["model_name"])
            name = "three_gate" if step == "gate" else f"{layout}_{step}"  # one gate for both
            entry = {**entry, "model_name": name, "model_version": 1}
            if layout == "four" and step in FOLDED_INPUTS:
                _, normalised = FOLDED_INPUTS[step]
                entry["input_map"] = {normalised.name: normalised.name}
            steps.append(entry)
        if layout == "four":
            images = (IMAGE, CLS_IMAGE)
            steps.insert(0, {
                "model_name": "four_preprocess", "model_version": 1,
                "input_map": {t.name: t.name for t in images},
                "output_map": {t.name: t.name for t in (SEG_INPUT, CLS_INPUT)},
            })  # fmt: skip
        config["ensemble_scheduling"] = {"step": steps}
        name = f"{layout}_steps"
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(to_pbtxt({**config, "name": name}))
        ensembles[layout] = name
    return ensembles


def wait_ready(http_url: str, models: list[str], timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    for model in models:
        while httpx.get(f"{http_url}/v2/models/{model}/ready", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise S4segError(f"{model} did not load within {timeout:.0f} s")
            time.sleep(0.5)


def caller(url: str, ensemble: str, canvas: np.ndarray, view: np.ndarray, tau: float):
    """One gRPC client per thread, the served-size image inline, the map-back outputs back (as
    the gateway asks for them)."""
    import tritonclient.grpc as grpcclient

    local = threading.local()
    batch, views = canvas[None], view[None]
    taus = np.array([[tau]], dtype=TAU.dtype)

    def call() -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        inputs = []
        for spec, value in ((IMAGE, batch), (CLS_IMAGE, views), (TAU, taus)):
            tensor = grpcclient.InferInput(spec.name, list(value.shape), spec.wire_type)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(t.name) for t in MAP_BACK_OUTPUTS]
        result = local.client.infer(ensemble, inputs, outputs=outputs)
        return result.as_numpy(MAP_BACK_OUTPUTS[0].name)

    return call


def run_round(call, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """Requests/s and latencies of ``requests`` calls by ``concurrency`` callers: bench serve's
    loop (its few warm-up calls outside the window)."""
    return measure(lambda _: call(), [b""], concurrency, requests)


def bench_hops(args: argparse.Namespace) -> str:
    repository = Path(args.repository)
    version = served_version(repository)
    if version is None:
        raise S4segError(f"{repository} has no published version (run `s4seg quickstart`)")
    manifest = read_manifest(repository, version)
    framing = Framing.of(manifest)
    framed = framing.frame(decode_image(bench_images(manifest, 1)[0]).pixels)
    engine = (manifest.published or {}).get("engine") or {}
    with tempfile.TemporaryDirectory(prefix="s4seg-hops-") as tmp:
        root = Path(tmp) / "repository"
        ensembles = build_layouts(repository, version, root)
        settings = TritonSettings(
            root, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
            control="none", log_file=Path(tmp) / "tritonserver.log",
        )  # fmt: skip
        with TritonProcess(settings) as triton:
            triton.wait_live(timeout=120)
            wait_ready(settings.http_url, list(ensembles.values()), timeout=300)
            url = f"127.0.0.1:{settings.grpc_port}"
            calls = {
                layout: caller(url, name, framed.canvas, framed.view, manifest.tau)
                for layout, name in ensembles.items()
            }
            same = np.array_equal(calls["four"](), calls["three"]())
            results: dict[tuple[str, int], list[tuple[float, list[float]]]] = {}
            for concurrency in args.concurrency:
                for call in calls.values():  # warm-up outside the windows
                    run_round(call, concurrency, 2 * concurrency)
                for r in range(args.rounds):  # interleaved, the order alternating
                    order = list(calls) if r % 2 == 0 else list(reversed(calls))
                    for layout in order:
                        print(f"bench hops: {layout} steps, concurrency {concurrency}, round "
                              f"{r + 1}", file=sys.stderr)  # fmt: skip
                        results.setdefault((layout, concurrency), []).append(
                            run_round(calls[layout], concurrency, args.requests)
                        )
            steps = {"four": ["preprocess", *STEP_MODELS], "three": list(STEP_MODELS)}
            stats = {
                layout: triton_step_stats(
                    f"127.0.0.1:{settings.http_port}",
                    {s: "three_gate" if s == "gate" else f"{layout}_{s}" for s in steps[layout]},
                )
                for layout in ensembles
            }
    lines = [
        *provenance(f"{cpu_description()} (client, Triton and models share it)"),
        f"Model: version {version} of {repository} (served {framing.size[0]}x{framing.size[1]};"
        f" networks in {engine.get('runtime', 'onnxruntime')} "
        f"{engine.get('precision', 'fp32')}, python-backend runner); the ensemble called over "
        f"gRPC with the served-size image, the map-back outputs back; {args.rounds} interleaved "
        f"rounds of {args.requests} requests per layout and concurrency, after a warm-up. "
        f"Both layouts give {'the same' if same else 'DIFFERENT'} scores.",
        "",
        "| concurrency | layout | requests/s (median, min-max) | p50 ms | p99 ms | three / four |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency in args.concurrency:
        four, three = results[("four", concurrency)], results[("three", concurrency)]
        paired = sorted(r3 / r4 for (r3, _), (r4, _) in zip(three, four, strict=True))
        for layout, rounds in (("four", four), ("three", three)):
            rates = sorted(rate for rate, _ in rounds)
            latencies = [x for _, lat in rounds for x in lat]
            ratio = (
                f"{paired[len(paired) // 2]:.2f}x ({paired[0]:.2f}-{paired[-1]:.2f} paired)"
                if layout == "three"
                else ""
            )
            lines.append(
                f"| {concurrency} | {layout} steps | {rates[len(rates) // 2]:.1f} ({rates[0]:.1f}-"
                f"{rates[-1]:.1f}) | {1000 * percentile(latencies, 0.5):.0f} | "
                f"{1000 * percentile(latencies, 0.99):.0f} | {ratio} |"
            )
    lines += [
        "",
        "Triton, per step (means per request over every round; the two layouts share one "
        "gate model, so its row counts both):",
        "",
        "| layout | step | queue ms | compute ms | executions |",
        "|---|---|---|---|---|",
    ]
    for layout, steps in stats.items():
        for step, (queue, compute, executions) in steps.items():
            lines.append(f"| {layout} | {step} | {queue:.1f} | {compute:.1f} | {executions} |")
    return report("\n".join(lines), args.write, "hops-cpu")
