"""Which runtime runs an ONNX graph, at which precision: ONNX Runtime (CPU, or CUDA where a GPU
is) or OpenVINO (CPU: FP32, or BF16 where the CPU computes in it). Every in-process session is
opened here: the pipeline of an export, the benchmarks, and the Triton runner when its config
asks for OpenVINO.

BF16 is not a graph of its own: OpenVINO runs the FP32 graph with its inference precision set to
bf16 (AVX-512 BF16 or AMX). INT8 and FP16 are graphs of their own (the export's variants).
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from s4seg.errors import first_line
from s4seg.manifest import PRECISIONS, ManifestError

RUNTIMES = ("onnxruntime", "openvino")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo); empty where it can not be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_capable(flags: frozenset[str] | None = None) -> bool:
    """The CPU has BF16 dot products (without them OpenVINO emulates bf16, slower than fp32)."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))


def check_engine(runtime: str, precision: str, flags: frozenset[str] | None = None) -> None:
    """Refuse, by name, a runtime and precision that can not run here."""
    if runtime not in RUNTIMES:
        raise ManifestError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ManifestError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        if runtime != "openvino":
            raise ManifestError("bf16 runs in OpenVINO (runtime openvino), not in ONNX Runtime")
        if not bf16_capable(flags):
            raise ManifestError(
                "this CPU has no BF16 instructions (avx512_bf16 or amx_bf16): bf16 would be "
                "emulated, slower than fp32"
            )


class Port:
    """An input or output as ONNX Runtime describes it (``.name``)."""

    def __init__(self, name: str) -> None:
        self.name = name


class _SignalStack(ctypes.Structure):
    """``stack_t`` of sigaltstack(2) (Linux)."""

    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


@lru_cache(maxsize=1)
def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def signal_stack() -> tuple[int | None, int, int] | None:
    """The calling thread's alternate signal stack (address, flags, size); None off Linux."""
    libc = _libc()
    if libc is None:
        return None
    current = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(current))
    return current.ss_sp, current.ss_flags, current.ss_size


@contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Put the calling thread's alternate signal stack back after an OpenVINO call.

    OpenVINO's CPU plugin installs an alternate signal stack of its own on the thread that
    compiles a model and, when the compiled model is released, puts back the one it found: so
    two models released in the order they were made leave the thread on the first model's
    stack, already freed. Python installs its signal handlers with ``SA_ONSTACK``, so the next
    signal (a DataLoader worker's SIGCHLD, in training after export) is delivered onto freed
    memory: SIGSEGV. Kept around every call that makes, runs or releases a model, the thread
    keeps its own stack (faulthandler's) throughout, and each model finds, and puts back, that
    same stack."""
    libc = _libc()
    if libc is None:
        yield
        return
    saved = _SignalStack()
    libc.sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


FIRST_INFERENCE = threading.Lock()
"""Held by every OpenVINO session's first inference, process-wide.

OpenVINO's Python binding initialises C++ function-local statics on first use (reached from
``Tensor.data`` in ``InferRequest.infer``) and releases the GIL inside that initialiser. Two
threads making their first inference together deadlock: one holds the static's guard and waits
for the GIL, the other holds the GIL and waits for the guard (issue 36: 5 hangs in 20 fresh
processes running a conv graph from 8 threads). A session's later inferences take the same code
paths as its first, so once the first has finished, every static it touches is initialised and
the rest run concurrently without the lock."""


class OpenVinoSession:
    """An OpenVINO compiled model with ONNX Runtime's ``run(names, feeds)``, so that a pipeline
    runs either. Safe from several threads: each call has its own infer request, and the
    session's first call runs alone (``FIRST_INFERENCE``)."""

    def __init__(self, path: str | Path, precision: str = "fp32", threads: int | None = None):
        import openvino as ov

        config: dict[str, Any] = {
            # Explicit either way: on a BF16 CPU OpenVINO would otherwise run "fp32" in bf16.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            # No pinning: every compiled model pins its threads from the first core on, so two
            # (two Triton instances, the segmenter beside the classifier, other processes)
            # share one core. Two 1-thread segmenters ran at 183 images/s pinned, 376 not
            # (AMD EPYC Zen 5, 2 vCPU; one 2-thread one: 324 and 372).
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            with signal_stack_kept():
                self.model = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as error:  # OpenVINO raises RuntimeError with a long message
            raise ManifestError(f"{path} does not load in OpenVINO: {first_line(error)}") from None
        self.precision = precision
        self.inputs = [Port(p.any_name) for p in self.model.inputs]
        self.outputs = [Port(p.any_name) for p in self.model.outputs]
        self.warmed = False

    def get_inputs(self) -> list[Port]:
        return self.inputs

    def get_outputs(self) -> list[Port]:
        return self.outputs

    def get_providers(self) -> list[str]:
        return [f"OpenVINO CPU {self.precision}"]

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.warmed:
            with FIRST_INFERENCE:
                if not self.warmed:
                    outputs = self.infer(names, feeds)
                    self.warmed = True
                    return outputs
        return self.infer(names, feeds)

    def infer(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        wanted = names or [o.name for o in self.outputs]
        with signal_stack_kept():
            request = self.model.create_infer_request()
            request.infer(feeds)
            outputs = [np.array(request.get_tensor(name).data, copy=True) for name in wanted]
            del request
        return outputs

    def __del__(self) -> None:
        with signal_stack_kept():
            self.__dict__.pop("model", None)


def open_onnxruntime(
    path: str | Path | bytes, providers: list[str], spin: bool = False, threads: int | None = None
):
    """``spin=False`` (the default): idle intra-op threads sleep instead of spinning. Spinning
    threads of one session steal the cores from the next: on 2 cores the four-step pipeline ran
    at 80 ms per image with spinning and 29 ms without, and torch ops between runs at half
    speed. ``threads``: intra-op threads (None: ONNX Runtime's default, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: CUDA fallback notices are not the user's problem
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        model = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        first = first_line(error)
        name = "a graph given in memory" if isinstance(path, bytes) else path
        raise ManifestError(f"{name} does not load in ONNX Runtime: {first}") from None


def open_session(
    path: str | Path,
    runtime: str = "onnxruntime",
    precision: str = "fp32",
    providers: list[str] | None = None,
    spin: bool = False,
    threads: int | None = None,
):
    """One graph in ``runtime`` at ``precision`` (the graph file must be that precision's)."""
    check_engine(runtime, precision)
    if runtime == "openvino":
        return OpenVinoSession(path, precision, threads)
    return open_onnxruntime(path, providers or ["CPUExecutionProvider"], spin, threads)
