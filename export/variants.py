"""The lower-precision variants an export may carry (FP16, INT8, BF16), each judged as it will
be served: at the served tau, on the calibration images (the parity images when there are
none), by a rule of its own; refused with its figures when it does not pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s4seg.engines import open_onnxruntime
from s4seg.layouts import data_layout, training_data_here
from s4seg.letterbox import Framing
from s4seg.manifest import GraphFile, Manifest, Parity, Variant
from s4seg.onnx_pipeline import MODEL_STEPS, OnnxPipeline
from s4seg.training.checkpoint import Checkpoint

from . import graphs as g
from .calibration import calibration_data
from .fold import PARTS, fold_network
from .parity import describe_failure, measure_parity

FP16_STEPS = ("segmenter", "classifier")  # the heavy ones; pre/post-processing stays FP32
# INT8: the segmenter only (most of the compute); refused below this agreement with PyTorch's
# labels or when it loses more gated mIoU than this (on the parity images).
INT8_MIN_LABEL_AGREEMENT = 0.99
INT8_MAX_MIOU_DROP = 0.005
INT8_CALIBRATION_IMAGES = 32

Log = Callable[[str], None]


@dataclass
class Judged:
    """The images lower-precision variants are judged on, and the tau they are gated at."""

    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    tau: float
    source: dict

    def measure(self, torch_graphs: dict, pipeline: OnnxPipeline) -> Parity:
        figures = measure_parity(torch_graphs, pipeline, self.images, self.masks, tau=self.tau)
        return figures.model_copy(update={"judged_on": self.source})


def variant_judging(
    manifest: Manifest,
    seg: Checkpoint,
    parity_images: list[np.ndarray],
    parity_masks: list[np.ndarray] | None,
    parity_source: dict,
    calibrate_kind: str | None,
    calibrate_images: int,
    log: Log,
) -> Judged:
    choice = manifest.tau_choice
    if choice is not None and choice.method == "calibrated" and choice.data:
        data = choice.data
        images, masks, source = calibration_data(
            seg, data["root"], data.get("kind") or calibrate_kind, calibrate_images
        )
        log(f"variants: judged on the {len(images)} calibration images at the served tau")
        return Judged(images, masks, manifest.tau, source)
    log("variants: judged on the parity images at the served tau (no calibration images)")
    return Judged(parity_images, parity_masks, manifest.tau, {**parity_source, "part": "parity"})


def add_fp16_variant(
    manifest: Manifest,
    work: Path,
    torch_graphs: dict[str, torch.nn.Module],
    judged: Judged,
    log: Log,
) -> None:
    """FP16 segmenter and classifier (FP32 inputs/outputs, so the other steps stay as they are),
    with parity figures of their own (on ``judged``: the calibration images at the served tau).
    Dropped, with a warning, when they do not pass."""
    import onnx
    import onnx_ir as ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    files = {s: work / graph.file for s, graph in manifest.graphs.items()}
    graphs: dict[str, GraphFile] = {}
    for step in FP16_STEPS:
        part = work / PARTS / f"{step}_fp16.onnx"
        half = ir.from_proto(
            convert_float_to_float16(
                onnx.load(str(work / PARTS / f"{step}.onnx")), keep_io_types=True
            )
        )
        half.graph.sort()  # the converter appends its input casts out of topological order
        onnx.save(ir.to_proto(half), part)
        graphs[step] = fold_network(work, step, part, f"{step}_fp16", "fp16")
        files[step] = work / graphs[step].file
    figures = judged.measure(torch_graphs, OnnxPipeline(manifest, files, "auto"))
    log(f"parity fp16: label agreement {100 * figures.label_agreement:.3f}%")
    if not figures.passed:
        log(f"fp16 variant dropped: {describe_failure(figures)}")
        for step in FP16_STEPS:
            (work / f"{step}_fp16.onnx").unlink()
        graphs = {}
    manifest.variants["fp16"] = Variant(graphs=graphs, parity=figures)


def training_images(checkpoint: Checkpoint, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Training images (labeled split first) for INT8 calibration; synthetic scenes when the
    training data is not on this machine."""
    images: list[np.ndarray] = []
    if training_data_here(checkpoint):
        layout = data_layout(checkpoint)
        samples = layout.samples(layout.default_train_split)[:count]
        images = [np.asarray(layout.read_image(s)) for s in samples]
    if not images:
        from s4seg.training.data.synth import render_sample

        rng = np.random.default_rng(0)
        images = [render_sample(rng, max(size))[0] for _ in range(count)]
    return images


def add_int8_variant(
    manifest: Manifest,
    work: Path,
    torch_graphs: dict[str, torch.nn.Module],
    seg: Checkpoint,
    judged: Judged,
    log: Log,
) -> None:
    """An INT8 segmenter: ONNX Runtime static quantization (QDQ: int8 weights per channel,
    uint8 activations), calibrated on training images; parity figures of its own, on
    ``judged`` (the calibration images at the served tau); dropped, with the reason in
    ``int8_parity``, when it agrees with PyTorch's labels on fewer than 99% of pixels or loses
    more than 0.5 gated mIoU."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    framing = Framing.of(manifest)
    images = training_images(seg, INT8_CALIBRATION_IMAGES, framing.size)
    preprocess = open_onnxruntime(work / PARTS / "preprocess.onnx", ["CPUExecutionProvider"])
    seg_inputs = []
    for image in images:
        framed = framing.frame(image)
        feeds = {g.IMAGE: framed.canvas[None], g.CLS_IMAGE: framed.view[None]}
        seg_inputs.append(preprocess.run(None, feeds)[0])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter({g.SEG_INPUT: x} for x in seg_inputs)

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    fp32 = work / PARTS / "segmenter.onnx"  # the network alone: calibrated on its own input
    prepared, part = work / PARTS / "segmenter_int8_prep.onnx", work / PARTS / "segmenter_int8.onnx"
    log(f"int8: calibrating the segmenter on {len(seg_inputs)} training images")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(part),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
    graphs = {"segmenter": fold_network(work, "segmenter", part, "segmenter_int8", "int8")}
    path = work / graphs["segmenter"].file
    files = {s: work / graph.file for s, graph in {**manifest.graphs, **graphs}.items()}
    measured = judged.measure(torch_graphs, OnnxPipeline(manifest, files, "cpu"))
    figures = lossy_rule(measured, calibration_images=len(seg_inputs))
    log(
        f"parity int8: label agreement {100 * figures.label_agreement:.3f}%, gated mIoU "
        f"drop {100 * (figures.gated_miou_drop or 0):.2f} points"
    )
    if not figures.passed:
        log(f"int8 variant refused ({figures.rule} needed)")
        path.unlink()
        manifest.variants["int8"] = Variant(parity=figures)
        return
    in_openvino = int8_in_openvino(manifest, files, torch_graphs, judged, log)
    manifest.variants["int8"] = Variant(graphs=graphs, parity=figures, runtime_parity=in_openvino)


def int8_in_openvino(
    manifest: Manifest,
    files: dict[str, Path],
    torch_graphs: dict[str, torch.nn.Module],
    judged: Judged,
    log: Log,
) -> dict[str, Parity]:
    """The INT8 graph run by OpenVINO (its own int8 kernels, its own rounding), judged by the
    same rule; nothing where OpenVINO is not installed (then only ONNX Runtime runs INT8)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {}
    pipeline = OnnxPipeline(manifest, files, "cpu", runtime="openvino", precision="int8")
    figures = lossy_rule(judged.measure(torch_graphs, pipeline))
    verdict = "passed" if figures.passed else f"refused ({figures.rule} needed)"
    log(
        f"parity int8 (OpenVINO): label agreement {100 * figures.label_agreement:.3f}%, gated "
        f"mIoU drop {100 * (figures.gated_miou_drop or 0):.2f} points: {verdict}"
    )
    return {"openvino": figures}


def lossy_rule(measured: Parity, **extra: Any) -> Parity:
    """A variant that rounds what it computes (INT8, BF16) passes when it agrees with PyTorch's
    labels on at least 99% of pixels and loses at most 0.5 gated mIoU points."""
    drop = (measured.gated_miou_torch or 0.0) - (measured.gated_miou_onnx or 0.0)
    passed = measured.label_agreement >= INT8_MIN_LABEL_AGREEMENT and drop <= INT8_MAX_MIOU_DROP
    return measured.model_copy(
        update={
            "passed": bool(passed),
            "gated_miou_drop": drop,
            "rule": f"label agreement >= {100 * INT8_MIN_LABEL_AGREEMENT:g}% and gated mIoU "
            f"drop <= {100 * INT8_MAX_MIOU_DROP:g} points",
            **extra,
        }
    )


def add_bf16_variant(
    manifest: Manifest,
    work: Path,
    torch_graphs: dict[str, torch.nn.Module],
    judged: Judged,
    log: Log,
) -> None:
    """BF16: the FP32 segmenter and classifier run by OpenVINO at bf16, where this CPU computes
    in bf16 (``s4seg.engines``), judged on ``judged`` by the rule of INT8 (``lossy_rule``).
    Refused with its figures when it does not pass; not made on a CPU without BF16."""
    from s4seg.engines import bf16_capable

    if not bf16_capable():
        log("bf16 variant not made: this CPU has no BF16 instructions (avx512_bf16, amx_bf16)")
        return
    files = {s: work / graph.file for s, graph in manifest.graphs.items()}
    pipeline = OnnxPipeline(manifest, files, "cpu", runtime="openvino", precision="bf16")
    figures = lossy_rule(judged.measure(torch_graphs, pipeline))
    log(
        f"parity bf16 (OpenVINO): label agreement {100 * figures.label_agreement:.3f}%, gated "
        f"mIoU drop {100 * (figures.gated_miou_drop or 0):.2f} points"
    )
    graphs = {step: manifest.graphs[step] for step in MODEL_STEPS}
    if not figures.passed:
        log(f"bf16 variant refused ({figures.rule} needed)")
        graphs = {}
    manifest.variants["bf16"] = Variant(graphs=graphs, parity=figures)
