"""Triton model configs for the four steps and the ensemble (no torch, no Triton needed).

One definition, two forms: ``config.pbtxt`` files written by publish (what a plain
``tritonserver --model-control-mode=poll`` reads) and JSON configs that ``s4seg serve`` passes
with each load request (so it decides exactly which versions are loaded, see
``s4seg.serving.versions``). All sizes that vary are -1, so step configs never change between
versions; the ensemble config pins every step to one version, so a switch never mixes versions.
"""

from __future__ import annotations

import json
from typing import Any

from s4seg.defaults import SEGMENTER_INSTANCES, STEP_QUEUE_SIZE, STEP_QUEUE_TIMEOUT_SECONDS
from s4seg.repository import ENSEMBLE, STEP_MODELS
from s4seg.tensors import ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS, GRAPH_IO, TensorSpec

MAX_BATCH_SIZE = 8
# python: the runner (export/triton/onnx_runner.py) in the python backend, every step (the pip
# tritonserver); onnxruntime: Triton's native ONNX Runtime backend, every step; openvino: Triton's
# native OpenVINO backend for the two networks, ONNX Runtime's for the gate (both: the NGC image).
RUNTIMES = ("python", "onnxruntime", "openvino")
NATIVE_OPENVINO_STEPS = ("segmenter", "classifier")
PYTHON_MIN_INSTANCES = 2


def _tensors(tensors: tuple[TensorSpec, ...]) -> list[dict]:
    return [{"name": t.name, "data_type": t.triton_type, "dims": list(t.dims)} for t in tensors]


THREAD_PARAMETER = {
    "python": "intra_op_threads",
    "onnxruntime": "intra_op_thread_count",
    "openvino": "INFERENCE_NUM_THREADS",
}


def step_backend(step: str, runtime: str) -> str:
    """The Triton backend that runs ``step`` under ``runtime``."""
    if runtime == "openvino":
        return "openvino" if step in NATIVE_OPENVINO_STEPS else "onnxruntime"
    return runtime


def step_config(
    step: str,
    runtime: str,
    loaded: list[int] | None = None,
    segmenter_instances: int = SEGMENTER_INSTANCES,
    threads: int | None = None,
) -> dict[str, Any]:
    """``loaded`` None: the two newest versions (files on disk); else exactly these versions.
    ``threads``: threads per instance (None: the runtime's default, all cores)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    inputs, outputs = GRAPH_IO[step]
    kind = step_backend(step, runtime)
    backend: dict[str, Any] = (
        {"backend": "python"}
        if kind == "python"
        else {"backend": kind, "default_model_filename": "model.onnx"}  # both read ONNX
    )
    policy = (
        {"latest": {"num_versions": 2}}
        if loaded is None
        else {"specific": {"versions": sorted(set(loaded))}}
    )
    instances = segmenter_instances if step == "segmenter" else 1
    if kind == "python":
        # At least two of every python-backend step: with one instance, under load, some
        # requests waited about 530 ms (Triton 2.51; the classifier alone at concurrency 8:
        # 24 of 950 requests over 0.3 s with one instance, none with two; the same with ONNX
        # Runtime or OpenVINO in the runner). BENCHMARKS: bench serve.
        instances = max(instances, PYTHON_MIN_INSTANCES)
    values = {THREAD_PARAMETER[kind]: str(threads)} if threads else {}
    if kind == "openvino":
        # One instance with a stream per would-be instance: each instance would compile a model
        # of its own and pin its threads from the first core on (s4seg.engines measured 183
        # against 376 images/s), and the backend has no parameter to turn pinning off.
        values = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": str(instances)}
        if threads:
            values[THREAD_PARAMETER[kind]] = str(threads * instances)
        instances = 1
    parameters = (
        {"parameters": {k: {"string_value": v} for k, v in values.items()}} if values else {}
    )
    return {
        "name": STEP_MODELS[step],
        **backend,
        "max_batch_size": MAX_BATCH_SIZE,
        "dynamic_batching": {
            "max_queue_delay_microseconds": 2000,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": int(STEP_QUEUE_TIMEOUT_SECONDS * 1e6),
                "allow_timeout_override": True,
                "max_queue_size": STEP_QUEUE_SIZE,
            },
        },
        "version_policy": policy,
        "instance_group": [{"kind": "KIND_AUTO", "count": instances}],
        **parameters,
        "input": _tensors(inputs),
        "output": _tensors(outputs),
    }


def ensemble_config(version: int) -> dict[str, Any]:
    steps = []
    for step, model in STEP_MODELS.items():
        inputs, outputs = GRAPH_IO[step]
        steps.append(
            {
                "model_name": model,
                "model_version": version,
                "input_map": {t.name: t.name for t in inputs},
                "output_map": {t.name: t.name for t in outputs},
            }
        )
    return {
        "name": ENSEMBLE,
        "platform": "ensemble",
        "max_batch_size": MAX_BATCH_SIZE,
        "version_policy": {"specific": {"versions": [version]}},
        "input": _tensors(ENSEMBLE_INPUTS),
        "output": _tensors(ENSEMBLE_OUTPUTS),
        "ensemble_scheduling": {"step": steps},
    }


def to_pbtxt(config: dict[str, Any], header: str = "") -> str:
    """Protobuf text format of a config dict (enums such as TYPE_FP32 stay unquoted)."""

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and not (value.isupper() and value.replace("_", "").isalnum()):
            return json.dumps(value)
        return str(value)

    def fields(message: dict[str, Any], indent: str) -> list[str]:
        lines = []
        for key, value in message.items():
            if key in ("input_map", "output_map"):  # proto maps: one entry block per key
                lines += [f'{indent}{key} {{ key: "{k}" value: "{v}" }}' for k, v in value.items()]
            elif key == "parameters":
                for k, v in value.items():
                    entry = f'key: "{k}" value: {{ string_value: "{v["string_value"]}" }}'
                    lines.append(f"{indent}parameters {{ {entry} }}")
            elif isinstance(value, dict):
                lines += [f"{indent}{key} {{", *fields(value, indent + "  "), f"{indent}}}"]
            elif isinstance(value, list) and value and isinstance(value[0], dict):
                lines.append(f"{indent}{key} [")
                for i, item in enumerate(value):
                    comma = "," if i < len(value) - 1 else ""
                    lines += [
                        f"{indent}  {{",
                        *fields(item, indent + "    "),
                        f"{indent}  }}{comma}",
                    ]
                lines.append(f"{indent}]")
            elif isinstance(value, list):
                lines.append(f"{indent}{key}: [ {', '.join(scalar(v) for v in value)} ]")
            else:
                lines.append(f"{indent}{key}: {scalar(value)}")
        return lines

    return header + "\n".join(fields(config, "")) + "\n"


def step_pbtxt(step: str, runtime: str) -> str:
    return to_pbtxt(
        step_config(step, runtime),
        f"# Written by `s4seg publish --runtime {runtime}`; the same for every version.\n",
    )


def ensemble_pbtxt(version: int) -> str:
    return to_pbtxt(
        ensemble_config(version),
        f"# Written by `s4seg publish`: serves version {version} of every step.\n",
    )
