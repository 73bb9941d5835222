"""``config.pbtxt`` text for the four steps and the ensemble (no torch, no Triton needed).

Step configs never change between publishes (all dims that vary are -1); the ensemble's config
names the served version and pins every step to it, so one file replacement switches the whole
pipeline at once.
"""

from __future__ import annotations

ENSEMBLE = "s4seg"
STEP_MODELS = {
    "preprocess": "s4seg_preprocess",
    "segmenter": "s4seg_segmenter",
    "classifier": "s4seg_classifier",
    "gate": "s4seg_gate",
}
MAX_BATCH_SIZE = 8
RUNTIMES = ("python", "onnxruntime")

# (name, Triton type, dims without the batch axis)
IO = {
    "preprocess": (
        [("image", "TYPE_UINT8", [-1, -1, 3])],
        [("seg_input", "TYPE_FP32", [3, -1, -1]), ("cls_input", "TYPE_FP32", [3, -1, -1])],
    ),
    "segmenter": (
        [("seg_input", "TYPE_FP32", [3, -1, -1])],
        [("logits", "TYPE_FP32", [-1, -1, -1])],
    ),
    "classifier": ([("cls_input", "TYPE_FP32", [3, -1, -1])], [("class_probs", "TYPE_FP32", [-1])]),
    "gate": (
        [
            ("logits", "TYPE_FP32", [-1, -1, -1]),
            ("class_probs", "TYPE_FP32", [-1]),
            ("tau", "TYPE_FP32", [1]),
        ],
        [("labels", "TYPE_UINT8", [-1, -1]), ("suppressed", "TYPE_BOOL", [-1])],
    ),
}
# The ensemble's own inputs and outputs. tau is required here: Triton refuses optional inputs on
# ensembles (server PR #3894), so the gateway always sends it (the manifest's tau by default).
ENSEMBLE_INPUTS = [("image", "TYPE_UINT8", [-1, -1, 3]), ("tau", "TYPE_FP32", [1])]
ENSEMBLE_OUTPUTS = [
    ("labels", "TYPE_UINT8", [-1, -1]),
    ("class_probs", "TYPE_FP32", [-1]),
    ("suppressed", "TYPE_BOOL", [-1]),
]


def _tensors(kind: str, tensors: list[tuple[str, str, list[int]]]) -> str:
    body = ",\n".join(
        f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'
        for name, dtype, dims in tensors
    )
    return f"{kind} [\n{body}\n]\n"


def step_config(step: str, runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
    inputs, outputs = IO[step]
    backend = (
        'backend: "python"\n'
        if runtime == "python"
        else 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"\n'
    )
    return (
        f"# Written by `s4seg publish --runtime {runtime}`; the same for every version.\n"
        f'name: "{STEP_MODELS[step]}"\n'
        f"{backend}"
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
        "# The served version and the one before stay loaded, so the ensemble can switch at once.\n"
        "version_policy: { latest: { num_versions: 2 } }\n"
        "instance_group [ { kind: KIND_AUTO, count: 1 } ]\n"
        f"{_tensors('input', inputs)}"
        f"{_tensors('output', outputs)}"
    )


def ensemble_config(version: int) -> str:
    steps = []
    for step, model in STEP_MODELS.items():
        inputs, outputs = IO[step]
        maps = [f'input_map {{ key: "{n}" value: "{n}" }}' for n, _, _ in inputs]
        maps += [f'output_map {{ key: "{n}" value: "{n}" }}' for n, _, _ in outputs]
        steps.append(
            f'  {{ model_name: "{model}" model_version: {version}\n    '
            + "\n    ".join(maps)
            + " }"
        )
    return (
        "# Written by `s4seg publish`: serves version "
        f"{version} of every step (replaced atomically on publish and rollback).\n"
        f'name: "{ENSEMBLE}"\n'
        'platform: "ensemble"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n"
        f"{_tensors('input', ENSEMBLE_INPUTS)}"
        f"{_tensors('output', ENSEMBLE_OUTPUTS)}"
        "ensemble_scheduling {\n step [\n" + ",\n".join(steps) + "\n ]\n}\n"
    )
