"""The classifier's pooled features, read from an exported classifier graph (issue 34, item 3):
the vector the classifier's last linear layer reads (a ResNet's global average pool), used to
keep near-copies out of the top of a labeling queue.

The export's contract is unchanged (``classifier`` answers ``class_probs`` only): the graph is
given a second output in memory, for the in-process runs that ask for it.
"""

from __future__ import annotations

from pathlib import Path

from s4seg.errors import S4segError
from s4seg.tensors import CLASS_PROBS

FEATURES = "pooled_features"
LINEAR = ("Gemm", "MatMul")
ELEMENTWISE = ("Sigmoid", "Identity", "Cast", "Add")


def features_input(graph) -> str:
    """The name of the tensor the last linear layer before ``class_probs`` reads."""
    producers = {out: node for node in graph.node for out in node.output}
    name = CLASS_PROBS.name
    for _ in range(8):  # class_probs <- Sigmoid <- (Add) <- Gemm/MatMul
        node = producers.get(name)
        if node is None:
            break
        if node.op_type in LINEAR:
            return node.input[0]
        if node.op_type not in ELEMENTWISE:
            break
        name = node.input[0]
    raise S4segError(
        "the classifier graph has no linear layer before class_probs (an export without MLMT "
        "has no classifier features)"
    )


def with_pooled_features(path: str | Path) -> bytes:
    """The classifier graph at ``path`` with its pooled features as a second output
    (``FEATURES``, (N, D) float32), serialised for ``onnxruntime.InferenceSession``."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    source = features_input(model.graph)
    model.graph.node.append(helper.make_node("Flatten", [source], [FEATURES], axis=1))
    model.graph.output.append(helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString()
