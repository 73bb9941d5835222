"""Export: real ONNX files from real checkpoints, checked against the PyTorch modules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import framed_batch, segment_like_the_server
from PIL import Image

from s4seg.errors import CheckpointError
from s4seg.export.graphs import Gate, Preprocess
from s4seg.export.onnx_export import ExportError, export_onnx
from s4seg.export.requests import ExportRequest, PublishRequest
from s4seg.letterbox import classifier_view
from s4seg.manifest import STEPS, Manifest, ManifestError, sha256_file
from s4seg.onnx_pipeline import OnnxPipeline
from s4seg.tensors import SUPPRESSED_SCORE
from s4seg.training.gate import gated_argmax


def test_export_writes_three_checked_graphs_and_a_manifest(tiny_export: Path) -> None:
    manifest = Manifest.load(tiny_export)
    assert sorted(p.name for p in tiny_export.iterdir()) == sorted(
        [*(f"{s}.onnx" for s in STEPS), "manifest.json"]
    )
    for step in STEPS:
        assert sha256_file(tiny_export / f"{step}.onnx") == manifest.graphs[step].sha256
    assert manifest.input_size == [64, 64]
    assert manifest.tau == 0.2 and manifest.opset >= 18
    assert manifest.classifier is not None and manifest.classifier.size == 32
    assert set(manifest.sources) == {"segmenter", "classifier"}
    assert all(len(s.sha256) == 64 for s in manifest.sources.values())
    assert manifest.config_digest.startswith("sha256:")
    parity = manifest.parity
    assert parity is not None and parity.passed and parity.images == 4
    assert parity.label_agreement >= 0.999
    assert parity.max_abs_prob_diff < 1e-3
    assert parity.gated_miou_diff is not None and parity.gated_miou_diff <= 0.001
    # The networks take the uint8 images (normalisation folded in); batch, height and width
    # stay dynamic in the files.
    assert manifest.graphs["segmenter"].inputs == {"image": ["batch", "height", "width", 3]}
    assert list(manifest.graphs["classifier"].inputs) == ["classifier_image"]
    assert not (tiny_export / "parts").exists()  # the unfolded graphs are export's own


def test_folded_networks_compute_what_preprocess_then_network_computes(tiny_export: Path) -> None:
    """Folding is composition: the served graph, cut where it was joined, gives the same
    numbers as its two halves run one after the other (what the four-step ensemble ran)."""
    import onnx
    import onnxruntime as ort

    from s4seg.tensors import FOLDED_INPUTS, GRAPH_IO

    def split_preprocess(folded: onnx.ModelProto, step: str) -> tuple:
        """The folded graph cut where it was joined: (image -> normalised, normalised -> out)."""
        image, normalised = FOLDED_INPUTS[step]
        (output,) = GRAPH_IO[step][1]
        extractor = onnx.utils.Extractor(folded)
        return (
            extractor.extract_model([image.name], [normalised.name]),
            extractor.extract_model([normalised.name], [output.name]),
        )

    def session(model: onnx.ModelProto) -> ort.InferenceSession:
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(3)
    inputs = {
        "segmenter": ("image", rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)),
        "classifier": ("classifier_image", rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)),
    }
    for step, (name, value) in inputs.items():
        folded = onnx.load(str(tiny_export / f"{step}.onnx"))
        (whole,) = session(folded).run(None, {name: value})
        pre, network = split_preprocess(folded, step)
        (normalised,) = session(pre).run(None, {name: value})
        assert normalised.dtype == np.float32 and normalised.shape[1] == 3  # NCHW, FP32
        (halves,) = session(network).run(None, {network.graph.input[0].name: normalised})
        np.testing.assert_allclose(whole, halves, rtol=1e-5, atol=1e-5)


def test_exports_of_an_older_format_are_refused_by_name(tiny_export: Path, tmp_path: Path) -> None:
    """/2 graphs take the letterboxed canvas for the classifier, /3 networks take normalised
    FP32 tensors from a preprocess step; this ensemble sends uint8 images to the networks: such
    an export can not be served and says so."""
    data = json.loads((tiny_export / "manifest.json").read_text())
    for older in ("s4seg-manifest/1", "s4seg-manifest/2", "s4seg-manifest/3"):
        (tmp_path / "manifest.json").write_text(json.dumps({**data, "format": older}))
        with pytest.raises(ManifestError, match="older s4seg: export the checkpoints again"):
            Manifest.load(tmp_path)


def test_pipeline_runs_any_batch_and_size(tiny_export: Path) -> None:
    pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    side = pipeline.manifest.classifier_view_size
    views = np.stack([classifier_view(image, side) for image in images])
    out = pipeline.run(images, views)
    assert out.labels.shape == (3, 40, 56) and out.labels.dtype == np.uint8
    assert out.class_probs.shape == (3, 7) and out.suppressed.shape == (3, 7)
    single = pipeline.run(images[1:2], views[1:2])
    np.testing.assert_array_equal(single.labels[0], out.labels[1])
    # Letterboxed to the served size as the server does, mapped back to the image's own size.
    assert segment_like_the_server(pipeline, images[0]).labels.shape == (1, 40, 56)


def test_gate_graph_computes_the_training_gate(tmp_path: Path) -> None:
    for background in (0, None):
        path = tmp_path / f"gate{background}.onnx"
        export_onnx(
            Gate(background),
            {
                "logits": torch.zeros(2, 5, 4, 4),
                "class_probs": torch.zeros(2, 5),
                "tau": torch.zeros(2, 1),
            },
            ["labels", "suppressed", "scores"],
            path,
            {
                "logits": {0: "batch", 2: "height", 3: "width"},
                "class_probs": {0: "batch"},
                "tau": {0: "batch"},
            },
        )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        generator = torch.Generator().manual_seed(1)
        logits = torch.randn(4, 5, 9, 7, generator=generator)
        probs = torch.rand(4, 5, generator=generator)
        probs[3] = 0.01  # every class below tau: without background the ungated argmax is kept
        tau = torch.tensor([[0.2], [0.5], [-1.0], [0.2]])
        labels, suppressed, scores = session.run(
            None, {"logits": logits.numpy(), "class_probs": probs.numpy(), "tau": tau.numpy()}
        )
        expected_labels, expected_suppressed = gated_argmax(logits, probs, tau, background)
        np.testing.assert_array_equal(labels, expected_labels.numpy())
        np.testing.assert_array_equal(scores.argmax(1), expected_labels.numpy())
        # Suppressed classes sit at the floor in the gated scores (unless every class is).
        floor = scores[:2][suppressed[:2]]
        assert (floor == SUPPRESSED_SCORE).all() and floor.size
        np.testing.assert_array_equal(suppressed, expected_suppressed.numpy())
        assert labels.dtype == np.uint8
        if background is not None:
            assert not suppressed[:, background].any()
        assert not suppressed[2].any()  # tau -1: nothing suppressed (gate=false)


def test_preprocess_matches_the_training_transforms() -> None:
    """The segmenter's input as training normalises it; the classifier's as training shows it:
    the whole image squeezed to its square (here 70 x 50 -> 32 x 32), not the letterboxed
    canvas with its pad bars."""
    from torchvision import tv_tensors

    from s4seg.defaults import IMAGENET_MEAN, IMAGENET_STD
    from s4seg.letterbox import Framing
    from s4seg.training.data.classification import eval_view
    from s4seg.training.data.transforms import eval_transform

    mean, std = [0.45, 0.44, 0.4], [0.22, 0.23, 0.24]
    module = Preprocess(mean, std, list(IMAGENET_MEAN), list(IMAGENET_STD))
    image = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    view = classifier_view(image, 32)
    seg, cls = module(torch.from_numpy(image)[None], torch.from_numpy(view)[None])
    pixels = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
    torch.testing.assert_close(seg[0], eval_transform(mean, std)(pixels), atol=1e-5, rtol=0)
    # Pillow's antialiased bilinear and torchvision's differ by rounding: < 1 grey level.
    one_level = 1 / 255 / min(IMAGENET_STD) + 1e-4
    assert (cls[0] - eval_view(32)(pixels)).abs().max() < one_level
    # What the server frames: the same view, whatever the letterbox does to the canvas.
    framed = Framing((64, 64), (0, 0, 0), 32).frame(image)
    np.testing.assert_array_equal(framed.view, view)
    assert framed.canvas.shape == (64, 64, 3) and (framed.canvas[:8] == 0).all()  # pad bars
    _, canvas_view = module(
        torch.from_numpy(framed.canvas)[None],
        torch.from_numpy(classifier_view(framed.canvas, 32))[None],
    )
    assert (canvas_view[0] - eval_view(32)(pixels)).abs().max() > 10 * one_level


def test_wrong_checkpoint_kind_is_refused_by_name(
    tiny_classifier: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, not a segmenter"):
        from s4seg.export.exporter import export_models

        export_models(ExportRequest(str(tiny_classifier), None, str(tmp_path / "out")))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "s4seg",
            "export",
            "--segmenter",
            str(tiny_checkpoint),
            "--classifier",
            str(tiny_checkpoint),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "is a segmenter checkpoint, not an MLMT classifier" in result.stderr
    assert not (tmp_path / "out").exists()


def test_failed_parity_leaves_nothing_behind(
    tiny_checkpoint: Path, synth_root: Path, tmp_path: Path, monkeypatch
) -> None:
    from s4seg.export import exporter, parity

    monkeypatch.setattr(parity, "MIN_LABEL_AGREEMENT", 1.01)  # no export can pass this
    with pytest.raises(ExportError, match="ONNX differs from PyTorch: label agreement"):
        exporter.export_models(
            ExportRequest(
                str(tiny_checkpoint),
                None,
                str(tmp_path / "out"),
                input_size=(64, 64),
                data=str(synth_root),
                parity_images=2,
            ),
            log=lambda *_: None,
        )
    assert list(tmp_path.iterdir()) == []


def test_export_without_classifier_keeps_every_class(
    tiny_checkpoint: Path, synth_root: Path, tmp_path: Path
) -> None:
    from s4seg.export.exporter import export_models

    manifest = export_models(
        ExportRequest(
            str(tiny_checkpoint),
            None,
            str(tmp_path / "out"),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=2,
        ),
        log=lambda *_: None,
    )
    assert manifest.classifier is None and "classifier" not in manifest.sources
    pipeline = OnnxPipeline.from_export(tmp_path / "out", device="cpu")
    out = pipeline.run(*framed_batch(pipeline, np.zeros((2, 64, 64, 3), np.uint8)), tau=0.99)
    assert (out.class_probs == 1).all() and not out.suppressed.any()
    # An existing, non-empty folder is not overwritten by accident.
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_models(ExportRequest(str(tiny_checkpoint), None, str(tmp_path / "out")))


def test_evaluate_onnx_agrees_with_pytorch(
    tiny_export: Path, varied_checkpoint: Path, tiny_classifier: Path, synth_root: Path, tmp_path
) -> None:
    def run(*args: str) -> dict:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "s4seg",
                "evaluate",
                *args,
                "--data",
                str(synth_root),
                "--out",
                str(out),
            ],
            check=True,
            capture_output=True,
        )
        return json.loads((out / "report.json").read_text())

    torch_report = run("--segmenter", str(varied_checkpoint), "--classifier", str(tiny_classifier))
    onnx_report = run("--onnx", str(tiny_export))
    assert onnx_report["images"] == torch_report["images"] == 2  # 4 val less the calibration 2
    assert abs(onnx_report["miou"] - torch_report["miou"]) <= 0.001
    assert abs(onnx_report["ungated"]["miou"] - torch_report["ungated"]["miou"]) <= 0.001
    assert torch_report["miou"] > 0  # the varied model predicts real classes somewhere


def test_manifest_errors_name_the_problem(tiny_export: Path, tmp_path: Path) -> None:
    from s4seg.manifest import ManifestError

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["classes"] = []
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="classes"):
        Manifest.load(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not readable JSON"):
        Manifest.load(copy)


def test_fp16_variant_has_its_own_parity_and_publishes(
    tiny_checkpoint: Path, synth_root: Path, tmp_path: Path
) -> None:
    from s4seg.export.exporter import export_models
    from s4seg.export.repository import publish
    from s4seg.repository import version_pipeline

    manifest = export_models(
        ExportRequest(
            str(tiny_checkpoint),
            None,
            str(tmp_path / "out"),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=2,
            variants=frozenset({"fp16"}),
        ),
        log=lambda *_: None,
    )
    fp16 = manifest.variants["fp16"]
    assert set(fp16.graphs) == {"segmenter", "classifier"}
    assert fp16.parity.passed
    assert fp16.parity.max_abs_prob_diff > 0  # really computed in half precision
    repo = tmp_path / "repo"
    publish(PublishRequest(tmp_path / "out", repo, precision="fp16"), log=lambda *_: None)
    served = version_pipeline(repo, 1, device="cpu")
    assert served.manifest.published["precision"] == "fp16"
    onnx_file = repo / "s4seg_segmenter" / "1" / "model.onnx"
    assert sha256_file(onnx_file) == fp16.graphs["segmenter"].sha256


def test_int8_variant_is_quantized_checked_and_refused_by_its_rule(
    varied_checkpoint: Path,
    tiny_classifier: Path,
    synth_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnx

    from s4seg.export import exporter, variants
    from s4seg.export.repository import PublishError, publish
    from s4seg.repository import version_pipeline

    manifest = exporter.export_models(
        ExportRequest(
            str(varied_checkpoint),
            str(tiny_classifier),
            str(tmp_path / "out"),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=4,
            variants=frozenset({"int8"}),
        ),
        log=lambda *_: None,
    )
    int8 = manifest.variants["int8"]
    parity = int8.parity
    assert parity.calibration_images is not None and parity.calibration_images > 0
    # Issue 20, item 5: judged as it will be served, at the served tau on the calibration part.
    assert manifest.tau_choice is not None and manifest.tau_choice.method == "calibrated"
    assert parity.tau == manifest.tau and parity.judged_on is not None
    assert parity.judged_on["part"] == "calibration"
    assert parity.judged_on["ids"] == manifest.tau_choice.data["ids"]
    assert parity.gated_miou_drop is not None
    assert parity.passed == (
        parity.label_agreement >= variants.INT8_MIN_LABEL_AGREEMENT
        and parity.gated_miou_drop <= variants.INT8_MAX_MIOU_DROP
    )
    if parity.passed:
        # OpenVINO runs the same QDQ graph with its own kernels: judged again, by the same rule
        in_openvino = int8.runtime_parity["openvino"]
        assert (in_openvino.rule, in_openvino.tau) == (parity.rule, parity.tau)
        assert in_openvino.providers == ["OpenVINO CPU int8"]
        assert parity.providers[0] == "CPUExecutionProvider"
        assert set(int8.graphs) == {"segmenter"}
        graph = onnx.load(str(tmp_path / "out" / int8.graphs["segmenter"].file))
        kinds = {node.op_type for node in graph.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= kinds  # really quantized (QDQ)
        assert parity.max_abs_prob_diff > 1e-4  # and it shows in the probabilities
        repo = tmp_path / "repo"
        publish(PublishRequest(tmp_path / "out", repo, precision="int8"), log=lambda *_: None)
        served = version_pipeline(repo, 1, device="cpu")
        assert served.manifest.published["precision"] == "int8"
        out = served.run(*framed_batch(served, np.zeros((1, 64, 64, 3), np.uint8)))
        assert out.labels.shape == (1, 64, 64) and out.scores.shape == (1, 7, 64, 64)

    # A rule no quantized model can meet: the variant is refused, the reason kept, no file.
    monkeypatch.setattr(variants, "INT8_MIN_LABEL_AGREEMENT", 1.01)
    refused = exporter.export_models(
        ExportRequest(
            str(varied_checkpoint),
            None,
            str(tmp_path / "refused"),
            input_size=(64, 64),
            data=str(synth_root),
            parity_images=2,
            variants=frozenset({"int8"}),
        ),
        log=lambda *_: None,
    )
    assert refused.variants["int8"].graphs == {} and refused.variants["int8"].parity.passed is False
    assert refused.variants["int8"].runtime_parity == {}
    assert "label agreement >= 101%" in (refused.variants["int8"].parity.rule or "")
    assert not (tmp_path / "refused" / "segmenter_int8.onnx").exists()
    with pytest.raises(PublishError, match="no INT8 variant"):
        publish(
            PublishRequest(tmp_path / "refused", tmp_path / "repo2", precision="int8"),
            log=lambda *_: None,
        )


def non_square_copy(root: Path, out: Path, size: tuple[int, int]) -> Path:
    """The synthetic set at ``size`` (width, height): images bilinear, masks nearest."""
    from PIL import Image

    shutil.copytree(root, out)
    for path in out.rglob("*.png"):
        mask = "masks" in path.parts
        resample = Image.Resampling.NEAREST if mask else Image.Resampling.BILINEAR
        Image.open(path).resize(size, resample).save(path)
    return out


@pytest.mark.trains
@pytest.mark.parametrize("layout", ["folder", "cityscapes"])
def test_served_at_the_evaluation_resolution_and_equal_to_evaluate(
    layout: str, synth_root: Path, cityscapes_root: Path, tmp_path: Path
) -> None:
    """Issue 20, item 1: without --input-size the export serves at the validation images'
    resolution (not the training crop), and the served path (letterbox, ONNX, map back) gives
    the mIoU of ``s4seg evaluate`` within the parity tolerance, on a non-square folder set and
    on a Cityscapes-layout tree (images halved)."""
    from helpers import TINY_TRAINING

    from s4seg.export.exporter import export_models
    from s4seg.export.parity import MAX_MIOU_DIFF
    from s4seg.onnx_pipeline import OnnxPipeline
    from s4seg.pipeline_evaluation import evaluate_pipeline
    from s4seg.training.baseline import train_baseline
    from s4seg.training.config import load_config
    from s4seg.training.evaluation import EvaluationRequest, evaluate_checkpoint

    if layout == "folder":
        root, expected = non_square_copy(synth_root, tmp_path / "wide", (80, 48)), [48, 80]
    else:
        root, expected = cityscapes_root, [16, 32]  # 64x32 halved
    cfg = load_config(
        "synthetic-quick",
        [
            *TINY_TRAINING,
            f"data.root={root}",
            f"data.kind={layout}",
            "train.iterations=3",
            "train.val_every=100",
            f"train.out_dir={tmp_path / 'run'}",
            "data.labeled_ratio=full",
        ],
    )
    checkpoint = train_baseline(cfg, log=lambda *_: None)
    export = tmp_path / "export"
    manifest = export_models(
        ExportRequest(str(checkpoint), None, str(export), parity_images=2), log=lambda *_: None
    )
    assert manifest.input_size == expected  # not the 48x48 training crop
    evaluated, _ = evaluate_checkpoint(EvaluationRequest(str(checkpoint), part="all", device="cpu"))
    served, _ = evaluate_pipeline(
        OnnxPipeline.from_export(export, device="cpu"),
        str(root),
        layout,
        part="all",
        served_path=True,
    )
    assert served["images"] == evaluated["images"] > 0
    assert abs(served["miou"] - evaluated["miou"]) <= MAX_MIOU_DIFF


def test_served_classifier_sees_what_training_and_evaluate_see(
    tiny_export: Path, tiny_classifier: Path
) -> None:
    """Issue 20, item 2: on photos whose aspect differs from the served canvas (portrait and
    landscape), the served class probabilities are those of ``s4seg evaluate``'s classifier
    (the whole image resized, training's view), not of the letterboxed canvas."""
    from torchvision import tv_tensors

    from s4seg.letterbox import Framing
    from s4seg.training.checkpoint import Checkpoint
    from s4seg.training.data.classification import eval_view
    from s4seg.training.models.classifier import classifier_from_checkpoint

    trained = Checkpoint.load(tiny_classifier, kind="classifier")
    model = classifier_from_checkpoint(trained).eval()
    view = eval_view(trained.arch["input_size"])
    pipeline = OnnxPipeline.from_export(tiny_export, device="cpu")
    framing = Framing.of(pipeline.manifest)
    rng = np.random.default_rng(3)
    served_gap, canvas_gap = [], []
    for height, width in ((30, 90), (96, 40), (64, 64), (20, 200)):
        image = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
        image = np.array(Image.fromarray(image).resize((width, height)))  # smooth, like photos
        pixels = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        with torch.no_grad():
            expected = torch.sigmoid(model(view(pixels)[None]))[0].numpy()
        framed = framing.frame(image)
        served = pipeline.run(framed.canvas[None], framed.view[None]).class_probs[0]
        boxed = classifier_view(framed.canvas, framing.classifier_size)[None]
        on_canvas = pipeline.run(framed.canvas[None], boxed).class_probs[0]
        served_gap.append(np.abs(served - expected).max())
        canvas_gap.append(np.abs(on_canvas - expected).max())
    assert max(served_gap) < 2e-3, served_gap  # rounding of the resize, nothing else
    assert max(canvas_gap[:2] + canvas_gap[3:]) > 5 * max(served_gap)  # pad bars do matter


@pytest.mark.trains
@pytest.mark.parametrize("trainer", ["baseline", "s4gan", "unimatch"])
def test_deeplabv3plus_exports_with_parity_for_every_trainer(
    trainer: str, synth_root: Path, tmp_path: Path
) -> None:
    """Issue 23: the architecture option is trained by every segmenter trainer and exported
    with the same parity check (ONNX against PyTorch)."""
    from helpers import TINY_TRAINING

    from s4seg.export.exporter import export_models
    from s4seg.training.config import load_config
    from s4seg.training.trainers import TRAINERS

    cfg = load_config(
        "synthetic-quick",
        [
            *TINY_TRAINING,
            f"data.root={synth_root}",
            "train.iterations=2",
            "train.val_every=100",
            "model.architecture=deeplabv3plus",
            f"train.out_dir={tmp_path / 'run'}",
        ],
    )
    checkpoint = TRAINERS[trainer].train(cfg, log=lambda *_: None)
    manifest = export_models(
        ExportRequest(
            str(checkpoint),
            None,
            str(tmp_path / "export"),
            input_size=(48, 64),
            data=str(synth_root),
            parity_images=2,
        ),
        log=lambda *_: None,
    )
    assert manifest.sources["segmenter"].arch["name"] == "deeplabv3plus"
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.parity.label_agreement >= 0.999
