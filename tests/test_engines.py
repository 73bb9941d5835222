"""s4seg.engines: one graph in ONNX Runtime or OpenVINO, FP32 or BF16, the same answers."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from s4seg.engines import bf16_capable, check_engine, open_session
from s4seg.manifest import ManifestError


@pytest.fixture(scope="module")
def conv_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv 3->16 (3x3) + ReLU + Conv 16->4 (1x1), dynamic batch and size: a segmenter's shape."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 16, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = tmp_path_factory.mktemp("engines") / "conv.onnx"
    onnx.save(model, path)
    return path


def test_openvino_fp32_equals_onnxruntime(conv_graph: Path) -> None:
    x = np.random.default_rng(1).normal(size=(2, 3, 24, 40)).astype(np.float32)
    (reference,) = open_session(conv_graph, "onnxruntime").run(None, {"x": x})
    session = open_session(conv_graph, "openvino", "fp32")
    assert [p.name for p in session.get_inputs()] == ["x"]
    (got,) = session.run(None, {"x": x})
    assert got.shape == (2, 4, 24, 40)
    np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-4)


def test_bf16_runs_the_fp32_graph_at_bf16(conv_graph: Path) -> None:
    if not bf16_capable():
        pytest.skip("this CPU has no BF16 instructions (the refusal is tested below)")
    x = np.random.default_rng(2).normal(size=(1, 3, 32, 32)).astype(np.float32)
    (fp32,) = open_session(conv_graph, "openvino", "fp32").run(None, {"x": x})
    (bf16,) = open_session(conv_graph, "openvino", "bf16").run(None, {"x": x})
    error = np.abs(bf16 - fp32).max() / np.abs(fp32).max()
    assert 0 < error < 0.05  # rounded to bf16's 8-bit mantissa: close, and not the fp32 result


def test_openvino_sessions_leave_threads_unpinned(conv_graph: Path) -> None:
    """Pinned, every compiled model's threads start at the first core: two 1-thread segmenters
    (two Triton instances) then share one core (BENCHMARKS: model alone, 2 x 1 rows)."""
    for precision in ("fp32", *(("bf16",) if bf16_capable() else ())):
        session = open_session(conv_graph, "openvino", precision, threads=1)
        assert session.model.get_property("ENABLE_CPU_PINNING") is False
        assert session.model.get_property("INFERENCE_NUM_THREADS") == 1


def test_engines_that_can_not_run_are_refused_by_name() -> None:
    with pytest.raises(ManifestError, match="bf16 runs in OpenVINO"):
        check_engine("onnxruntime", "bf16")
    with pytest.raises(ManifestError, match="no BF16 instructions"):
        check_engine("openvino", "bf16", flags=frozenset({"avx2", "avx512f"}))
    check_engine("openvino", "bf16", flags=frozenset({"avx512f", "avx512_bf16"}))
    with pytest.raises(ManifestError, match="runtime 'tensorrt'"):
        check_engine("tensorrt", "fp32")
    with pytest.raises(ManifestError, match="precision 'fp8'"):
        check_engine("openvino", "fp8")


PROBE = Path(__file__).with_name("openvino_probe.py")


def probe(mode: str, graph: Path, timeout: float = 60) -> subprocess.CompletedProcess | None:
    """The probe in a fresh process; None when it did not end within ``timeout`` (a hang)."""
    try:
        return subprocess.run(
            [sys.executable, str(PROBE), mode, str(graph)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None


def test_first_inferences_from_eight_threads_never_hang(conv_graph: Path) -> None:
    """Issue 36: OpenVINO's binding deadlocked when threads made their first inference together
    (5 of 20 fresh processes hung without ``FIRST_INFERENCE``). 24 fresh processes, two at a
    time, each under a timeout."""
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: probe("threads", conv_graph), range(24)))
    hung = sum(r is None for r in results)
    failed = [r.stderr[-400:] for r in results if r is not None and r.returncode != 0]
    assert (hung, failed) == (0, []), f"{hung} of 24 hung; failed: {failed}"


def test_released_models_leave_the_threads_signal_stack_alone(conv_graph: Path) -> None:
    """OpenVINO's CPU plugin puts a thread's alternate signal stack back to one it freed when
    models are released in the order they were made; the next signal then killed the process
    (training after export: SIGSEGV in a DataLoader's SIGCHLD). The probe releases models so
    and then takes a signal."""
    result = probe("signals", conv_graph)
    assert result is not None and result.returncode == 0, result and result.stderr[-800:]
    assert result.stdout.strip() == "ok"
