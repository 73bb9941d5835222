"""``s4seg export``: checkpoints -> four ONNX graphs + manifest.json, proven equal to PyTorch.

Everything is written into a temporary sibling folder that is renamed into place only after the
parity check passes, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from s4seg import __version__
from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
from s4seg.errors import CheckpointError, DatasetError
from s4seg.layouts import data_layout, trained_on, training_data_here
from s4seg.letterbox import pad_colour
from s4seg.manifest import (
    GATE_OFF_TAU,
    MANIFEST_NAME,
    NO_CLASSIFIER_VIEW_SIZE,
    PAPER_TAU,
    ClassifierInput,
    Confidence,
    GraphFile,
    Manifest,
    Normalization,
    Source,
    TauChoice,
    digest_json,
    sha256_file,
)
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.tensors import FOLDED_INPUTS
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.models import segmenter_from_checkpoint
from s4seg.training.models.classifier import classifier_from_checkpoint

from . import graphs as g
from .calibration import calibrate
from .confidence_fit import fit_confidence
from .discriminator import export_discriminator
from .fold import PARTS, fold_network, graph_file
from .onnx_export import OPSET, ExportError, export_onnx
from .parity import describe_failure, measure_parity
from .requests import ExportRequest
from .variants import add_bf16_variant, add_fp16_variant, add_int8_variant, variant_judging

Log = Callable[[str], None]


MAX_SERVED_SIDE = 1024  # the default served size is bounded (Cityscapes halved fits)
SIZE_SAMPLES = 50  # validation images looked at for the default served size


def served_size(
    checkpoint: Checkpoint, input_size: tuple[int, int] | None, log: Log = print
) -> tuple[int, int]:
    """``input_size`` if given; else the resolution the model is evaluated at (what ``s4seg
    evaluate`` and the paper measure): the largest height and width among the training data's
    validation images, at most ``MAX_SERVED_SIDE``; the training crop only when that data is
    not here. Larger photos are scaled down into it, as before."""
    size = input_size if input_size is None else (int(input_size[0]), int(input_size[1]))
    if size is None:
        size = evaluation_size(checkpoint)
        if size is not None:
            log(
                f"served size {size[0]}x{size[1]}: the validation images' resolution (what "
                "evaluate measures; --input-size H W to choose another)"
            )
    if size is None:
        crop = checkpoint.config.get("data", {}).get("crop_size", (321, 321))
        size = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[-1]))
        log(
            f"warning: served size {size[0]}x{size[1]}, the training crop: the training data "
            "is not here to measure the evaluation resolution (--input-size H W)"
        )
    if min(size) < 16:
        raise ExportError(f"input size must be two sides of at least 16 pixels, not {size}")
    return size


def evaluation_size(checkpoint: Checkpoint) -> tuple[int, int] | None:
    if not training_data_here(checkpoint):
        return None
    try:
        layout = data_layout(checkpoint)
        samples = layout.samples(layout.default_val_split)[:SIZE_SAMPLES]
    except DatasetError:
        return None
    if not samples:
        return None
    sizes = [layout.read_image(s).size for s in samples]  # (width, height), as evaluated
    height, width = max(h for _, h in sizes), max(w for w, _ in sizes)
    scale = min(1.0, MAX_SERVED_SIDE / max(height, width))
    return max(16, round(height * scale)), max(16, round(width * scale))


def parity_samples(
    checkpoint: Checkpoint, data: str | None, kind: str | None, count: int, workdir: Path
) -> tuple[list[np.ndarray], list[np.ndarray] | None, dict]:
    """K validation images (+ masks) from ``data``, else the training data, else synthetic."""
    if data is None and not training_data_here(checkpoint):
        from s4seg.training.data.synth import write_synthetic

        data = str(write_synthetic(workdir / "synth", num_train=0, num_val=count, num_unlabeled=0))
        kind = "folder"
    layout = data_layout(checkpoint, data, kind)
    samples = layout.samples(layout.default_val_split)[:count]
    if not samples:
        raise DatasetError(f"{layout.root} has no {layout.default_val_split} images for parity")
    images = [np.asarray(layout.read_image(s)) for s in samples]
    same_classes = list(layout.classes) == checkpoint.classes
    masks = [layout.read_mask(s) for s in samples] if same_classes else None
    source = {**layout.describe(), "split": layout.default_val_split, "with_masks": same_classes}
    return images, masks, source


def _source(path: str, checkpoint: Checkpoint) -> Source:
    return Source(
        path=str(Path(path).resolve()),
        sha256=sha256_file(path),
        kind=checkpoint.kind,
        trainer=checkpoint.trainer,
        iteration=checkpoint.iteration,
        arch=checkpoint.arch,
    )


def build_graphs(
    seg: Checkpoint, cls: Checkpoint | None
) -> tuple[dict[str, torch.nn.Module], int, dict]:
    """The four torch modules of the pipeline (eval mode), the classifier's input size and
    normalisation."""
    norm = seg.normalization
    if cls is not None:
        cls_size = cls.arch["input_size"]
        cls_norm = cls.normalization
        model = classifier_from_checkpoint(cls)
        cls_graph: torch.nn.Module = g.Classifier(model)
    else:
        cls_size = NO_CLASSIFIER_VIEW_SIZE
        cls_norm = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        cls_graph = g.NoClassifier(len(seg.classes))
    graphs: dict[str, torch.nn.Module] = {
        "preprocess": g.Preprocess(norm["mean"], norm["std"], cls_norm["mean"], cls_norm["std"]),
        "segmenter": g.Segmenter(segmenter_from_checkpoint(seg)),
        "classifier": cls_graph,
        "gate": g.Gate(seg.background_index),
    }
    return {name: module.eval() for name, module in graphs.items()}, cls_size, cls_norm


def served_confidence(
    pipeline: OnnxPipeline, seg: Checkpoint, request: ExportRequest, log: Log
) -> Confidence | None:
    """Calibrated confidence fitted on the calibration data (``--calibrate``); none without
    labeled data (said, and the manifest says so by its absence)."""
    if not request.calibrate_on or request.calibrate_on == "off":
        return None
    try:
        return fit_confidence(
            pipeline,
            seg,
            request.calibrate_on,
            request.calibrate_kind,
            request.calibrate_images,
            request.coverage,
            log,
        )
    except DatasetError as error:
        if request.calibrate_on != "auto":
            raise
        log(f"warning: confidence not calibrated: {error} (pass --calibrate DATA)")
        return None


def choose_served_tau(
    pipeline: OnnxPipeline,
    seg: Checkpoint,
    has_classifier: bool,
    tau: float | None,
    calibrate_on: str | None,
    calibrate_kind: str | None,
    calibrate_images: int,
    log: Log,
) -> tuple[float, TauChoice]:
    """An explicit tau wins; otherwise calibrate. Without calibration (``--calibrate off``, or
    ``auto`` finding no labeled validation data) the gate is served off, said so in the
    manifest: a classifier nobody measured on this model can cost more than it saves
    (RESULTS.md: the paper's 0.2 lowered mIoU on the synthetic set); ``--tau`` serves one."""
    if not has_classifier:
        reason = "exported without a classifier: the gate keeps every class"
        return PAPER_TAU, TauChoice(method="no classifier", reason=reason)
    if tau is not None:
        return tau, TauChoice(method="explicit", reason=f"--tau {tau:g} given at export")
    unmeasured = f"the gate is served off (--tau {PAPER_TAU:g} serves the paper's threshold)"
    if not calibrate_on or calibrate_on == "off":
        reason = f"not calibrated (--calibrate off): {unmeasured}"
        return GATE_OFF_TAU, TauChoice(method="not calibrated", reason=reason)
    try:
        return calibrate(pipeline, seg, calibrate_on, calibrate_kind, calibrate_images, log)
    except DatasetError as error:
        if calibrate_on != "auto":
            raise
        reason = f"not calibrated: {error} (pass --calibrate DATA); {unmeasured}"
        log(f"warning: {reason}")
        return GATE_OFF_TAU, TauChoice(method="not calibrated", reason=reason)


def check_request(request: ExportRequest) -> None:
    tau, out_dir = request.tau, Path(request.out)
    if tau is not None and not (0.0 <= tau <= 1.0 or tau == GATE_OFF_TAU):
        raise ExportError(f"--tau {tau:g}: a gate threshold is in [0, 1], or -1 for the gate off")
    if not 0.0 < request.coverage < 1.0:
        raise ExportError(f"--coverage {request.coverage:g}: a share of pixels, in (0, 1)")
    if out_dir.exists() and any(out_dir.iterdir()) and not request.overwrite:
        raise ExportError(
            f"{out_dir} exists and is not empty (choose another --out or --overwrite)"
        )


def load_checkpoints(
    segmenter: str, classifier: str | None
) -> tuple[Checkpoint, Checkpoint | None]:
    """Both checkpoints, checked to be of the right kind and to share their classes."""
    seg = Checkpoint.load(segmenter)
    if seg.kind != "segmenter":
        raise CheckpointError(
            f"--segmenter {segmenter} is a {seg.kind} checkpoint, not a segmenter"
        )
    classes = seg.classes
    if len(classes) > 255:
        raise ExportError(f"{len(classes)} classes do not fit the UINT8 label map (at most 255)")
    if not classifier:
        return seg, None
    cls = Checkpoint.load(classifier)
    if cls.kind != "classifier":
        raise CheckpointError(
            f"--classifier {classifier} is a {cls.kind} checkpoint, not an MLMT classifier"
        )
    if cls.classes != classes:
        raise CheckpointError(
            f"{classifier} was trained on classes {cls.classes[:5]}..., "
            f"{segmenter} on {classes[:5]}..."
        )
    return seg, cls


def example_inputs(num_classes: int, size: tuple[int, int], cls_size: int) -> dict:
    """Per step: example inputs, output names, dynamic axes (names: ``s4seg.tensors``)."""
    n, h, w = 2, *size
    return {
        "preprocess": (
            {
                g.IMAGE: torch.zeros(n, h, w, 3, dtype=torch.uint8),
                g.CLS_IMAGE: torch.zeros(n, cls_size, cls_size, 3, dtype=torch.uint8),
            },
            [g.SEG_INPUT, g.CLS_INPUT],
            {
                g.IMAGE: {0: "batch", 1: "height", 2: "width"},
                g.CLS_IMAGE: {0: "batch", 1: "cls_height", 2: "cls_width"},
            },
        ),
        "segmenter": (
            {g.SEG_INPUT: torch.zeros(n, 3, h, w)},
            [g.LOGITS],
            {g.SEG_INPUT: {0: "batch", 2: "height", 3: "width"}},
        ),
        "classifier": (
            {g.CLS_INPUT: torch.zeros(n, 3, cls_size, cls_size)},
            [g.CLASS_PROBS],
            {g.CLS_INPUT: {0: "batch"}},
        ),
        "gate": (
            {
                g.LOGITS: torch.zeros(n, num_classes, h, w),
                g.CLASS_PROBS: torch.zeros(n, num_classes),
                g.TAU: torch.zeros(n, 1),
            },
            [g.LABELS, g.SUPPRESSED, g.SCORES],
            {
                g.LOGITS: {0: "batch", 2: "height", 3: "width"},
                g.CLASS_PROBS: {0: "batch"},
                g.TAU: {0: "batch"},
            },
        ),
    }


def write_graphs(torch_graphs: dict, examples: dict, work: Path, log: Log) -> dict[str, GraphFile]:
    """The served graphs: each network with its normalisation folded in, and the gate."""
    parts = work / PARTS
    parts.mkdir()
    for step, (example, outputs, dynamic) in examples.items():
        log(f"export: {step}")
        export_onnx(
            torch_graphs[step],
            example,
            outputs,
            (work if step == "gate" else parts) / f"{step}.onnx",
            dynamic,
        )
    graph_files = {
        step: fold_network(work, step, parts / f"{step}.onnx", step) for step in FOLDED_INPUTS
    }
    graph_files["gate"] = graph_file(work / "gate.onnx")
    return graph_files


def build_manifest(
    seg: Checkpoint,
    cls: Checkpoint | None,
    paths: dict[str, str],
    size: tuple[int, int],
    cls_size: int,
    cls_norm: dict,
    graph_files: dict[str, GraphFile],
) -> Manifest:
    """Everything the server needs to know; parity and the served tau come later."""
    norm = seg.normalization
    sources = {"segmenter": _source(paths["segmenter"], seg)}
    configs = {"segmenter": seg.config}
    if cls is not None:
        sources["classifier"] = _source(paths["classifier"], cls)
        configs["classifier"] = cls.config
    return Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        s4seg_version=__version__,
        dataset=trained_on(seg),
        classes=list(seg.classes),
        palette=[list(c) for c in seg.palette],
        background_index=seg.background_index,
        input_size=list(size),
        pad_value=list(pad_colour(norm["mean"])),
        normalization=Normalization(mean=norm["mean"], std=norm["std"]),
        classifier=(
            ClassifierInput(
                size=cls_size,
                normalization=Normalization(mean=cls_norm["mean"], std=cls_norm["std"]),
            )
            if cls is not None
            else None
        ),
        tau=PAPER_TAU,  # the parity check gates at the paper's tau; the served one is set later
        opset=OPSET,
        graphs=graph_files,
        sources=sources,
        config_digest=digest_json(configs),
        metrics={
            "segmenter": seg.metrics,
            **({"classifier": cls.metrics} if cls else {}),
        },
    )


def export_models(request: ExportRequest, log: Log = print) -> Manifest:
    """Export, prove parity, choose the served tau (``request.tau`` explicit, else calibrated on
    ``request.calibrate_on``: a labeled data set, ``auto`` for the training data's validation
    split, None for the paper's 0.2). Written into a temporary folder, renamed to ``out`` when
    done."""
    r = request
    out_dir = Path(r.out)
    check_request(r)
    seg, cls = load_checkpoints(r.segmenter, r.classifier)
    size = served_size(seg, r.input_size, log)
    torch_graphs, cls_size, cls_norm = build_graphs(seg, cls)
    examples = example_inputs(len(seg.classes), size, cls_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        graph_files = write_graphs(torch_graphs, examples, work, log)
        paths = {"segmenter": r.segmenter, "classifier": r.classifier or ""}
        manifest = build_manifest(seg, cls, paths, size, cls_size, cls_norm, graph_files)
        manifest.save(work / MANIFEST_NAME)

        # Parity: the ONNX pipeline against PyTorch on real images.
        images, masks, source = parity_samples(seg, r.data, r.kind, r.parity_images, work)
        log(f"parity: ONNX Runtime against PyTorch on {len(images)} images from {source['root']}")
        pipeline = OnnxPipeline.from_export(work, device="cpu")
        parity = measure_parity(torch_graphs, pipeline, images, masks)
        manifest.parity = parity.model_copy(update={"data": source})
        if not parity.passed:
            raise ExportError(f"ONNX differs from PyTorch: {describe_failure(parity)}")

        # The served tau: explicit, calibrated on held-out labeled images, or the gate off.
        manifest.tau, manifest.tau_choice = choose_served_tau(
            pipeline,
            seg,
            cls is not None,
            r.tau,
            r.calibrate_on,
            r.calibrate_kind,
            r.calibrate_images,
            log,
        )
        manifest.confidence = served_confidence(pipeline, seg, r, log)
        manifest.discriminator = export_discriminator(seg, work, pipeline, images, log)
        # Lower-precision variants are judged as they will be served: at the served tau, on the
        # calibration images (the parity images when there are none).
        if r.variants:
            judged = variant_judging(
                manifest, seg, images, masks, source, r.calibrate_kind, r.calibrate_images, log
            )
            if "fp16" in r.variants:
                add_fp16_variant(manifest, work, torch_graphs, judged, log)
            if "int8" in r.variants:
                add_int8_variant(manifest, work, torch_graphs, seg, judged, log)
            if "bf16" in r.variants:
                add_bf16_variant(manifest, work, torch_graphs, judged, log)
        shutil.rmtree(work / "synth", ignore_errors=True)
        shutil.rmtree(work / PARTS)
        manifest.save(work / MANIFEST_NAME)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest
