"""The normalisation folded into each network graph.

Export makes the preprocess graph and each network as graphs of their own (so INT8 calibrates
and FP16 converts the network alone, as before), then serves one graph per network: uint8 image
in, logits or class probabilities out. Folding is ``onnx.compose``: the same operators, so the
same numbers. One python-backend step fewer per request (docs/journal.md: three steps against
four).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import compose

from s4seg.manifest import GraphFile, sha256_file
from s4seg.tensors import FOLDED_INPUTS, GRAPH_IO

from .onnx_export import signature

PREFIX = "pre_"


def rename_tensors(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    """Rename tensors everywhere in the graph: its inputs, outputs, value infos and nodes."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]


def _compatible(preprocess: onnx.ModelProto, network: onnx.ModelProto) -> onnx.ModelProto:
    """The preprocess graph at the network's opset and IR version (quantisation may raise
    them; its few element-wise operators read the same in both)."""
    opsets = {o.domain or "": o.version for o in network.opset_import}
    ours = {o.domain or "": o.version for o in preprocess.opset_import}
    if ours.get("") != opsets.get(""):
        preprocess = onnx.version_converter.convert_version(preprocess, opsets[""])
    preprocess.ir_version = network.ir_version
    return preprocess


def fold_preprocess(
    preprocess: onnx.ModelProto, network: onnx.ModelProto, step: str
) -> onnx.ModelProto:
    """``step``'s network with its part of the preprocess graph in front: it takes the uint8
    image (``s4seg.tensors.GRAPH_IO[step]``); the normalised tensor between them keeps its
    name (tests cut the folded graph there again to check the fold is a composition)."""
    image, normalised = FOLDED_INPUTS[step]
    (output,) = GRAPH_IO[step][1]
    preprocess = _compatible(preprocess, network)
    merged = compose.merge_models(
        preprocess, network, io_map=[(normalised.name, normalised.name)], prefix1=PREFIX
    )
    pruned = onnx.utils.Extractor(merged).extract_model([PREFIX + image.name], [output.name])
    rename_tensors(
        pruned, {PREFIX + image.name: image.name, PREFIX + normalised.name: normalised.name}
    )
    pruned.graph.name = f"{step}_folded"
    onnx.checker.check_model(pruned)
    return pruned


# Inside the work folder while exporting: the preprocess graph and the networks alone, before
# folding (INT8 calibrates and FP16 converts the network alone); removed when export is done.
PARTS = "parts"


def graph_file(path: Path, precision: str = "fp32") -> GraphFile:
    return GraphFile(
        file=path.name, sha256=sha256_file(path), precision=precision, **signature(path)
    )


def fold_network(
    work: Path, step: str, network: Path, name: str, precision: str = "fp32"
) -> GraphFile:
    """``work/<name>.onnx``: the preprocess part for ``step`` folded into ``network``."""
    preprocess = onnx.load(str(work / PARTS / "preprocess.onnx"))
    path = work / f"{name}.onnx"
    onnx.save(fold_preprocess(preprocess, onnx.load(str(network)), step), str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return graph_file(path, precision)
