"""One torch module -> one checked ONNX file with named, batch-dynamic inputs and outputs."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from s4seg.errors import S4segError, first_line

OPSET = 18  # Resize with antialias (the classifier's input) needs 18; NGC Triton 24.12+ runs it.


class ExportError(S4segError):
    """Export could not produce ONNX files that equal the PyTorch models."""


def export_onnx(
    module: nn.Module,
    example: dict[str, torch.Tensor],
    outputs: list[str],
    path: Path,
    dynamic: dict[str, dict[int, str]],
) -> dict[str, dict[str, list[int | str]]]:
    """Export ``module`` (called with ``example`` as keyword inputs) with the dynamo exporter.

    ``dynamic`` names the dynamic axes of each input ("batch", "height", "width"); the same name
    is the same symbol across inputs. Returns the file's inputs and outputs with their shapes.
    """
    symbols: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        return symbols.setdefault(name, torch.export.Dim(name, min=1, max=1 << 15))

    shapes = {
        name: {axis: dim(sym) for axis, sym in axes.items()} for name, axes in dynamic.items()
    }
    module = module.eval()
    try:
        # The exporter reports every pass on stdout; keep it for the error message only.
        log = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (),
                kwargs=example,
                input_names=list(example),
                output_names=outputs,
                dynamic_shapes=shapes,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            if program is None:  # only the old (non-dynamo) exporter returns nothing
                raise ExportError(f"{path.name}: torch.onnx.export returned no program")
            program.save(str(path))
    except Exception as error:
        detail = first_line(error)
        raise ExportError(f"ONNX export of {path.stem} failed: {detail}") from error
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path.name} fails onnx.checker: {first_line(error)}") from None
    return signature(path)


def signature(path: Path) -> dict[str, dict[str, list[int | str]]]:
    """Input and output names with shapes (symbolic axes by name) as stored in the file."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def shape(value) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: shape(v) for v in graph.input},
        "outputs": {v.name: shape(v) for v in graph.output},
    }
