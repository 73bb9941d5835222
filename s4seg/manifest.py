"""The manifest: the contract between export, publish, the Triton ensemble and the gateway.

Export writes ``manifest.json`` beside the ONNX files; publish copies it into the repository;
the gateway and the clients read it. Nothing downstream guesses a constant the manifest carries.
This module imports neither torch nor FastAPI.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path, PurePath
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from s4seg.atomic import write_json_atomic
from s4seg.errors import S4segError

# /2: the gate graph also outputs the gated scores (label maps at the photo's resolution).
# /3: the preprocess graph takes the classifier's view as an input of its own (the whole image,
# not the letterboxed canvas).
# /4: three steps: the normalisation is folded into the segmenter and classifier graphs, which
# take the uint8 images (docs/journal.md: three steps against four). Older exports can not be
# served by the ensemble of this version.
MANIFEST_FORMAT: Final = "s4seg-manifest/4"
OLDER_FORMATS = ("s4seg-manifest/1", "s4seg-manifest/2", "s4seg-manifest/3")
MANIFEST_NAME = "manifest.json"

# The steps of the pipeline, in order; each is one ONNX file ``<step>.onnx``.
STEPS = ("segmenter", "classifier", "gate")

# The gate's threshold (eq. 7). The paper's 0.2 was chosen by cross-validation on VOC; export
# chooses the served one on held-out data (export/calibration.py). -1 is below every probability:
# the gate keeps every class ("gate off").
PAPER_TAU = 0.2
GATE_OFF_TAU = -1.0

# The view the stand-in classifier (no MLMT trained) is sent: small, it is never looked at.
NO_CLASSIFIER_VIEW_SIZE = 32


class ManifestError(S4segError):
    """A manifest is missing, unreadable or does not describe a usable model."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Normalization(_Strict):
    """What the network expects: ``(pixel * pixel_scale - mean) / std`` per channel."""

    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    channel_order: Literal["RGB"] = "RGB"
    pixel_scale: float = 1 / 255


class ClassifierInput(_Strict):
    """The classifier's own view: the whole image resized to ``size`` x ``size``."""

    size: int = Field(gt=0)
    normalization: Normalization


class GraphFile(_Strict):
    file: str
    sha256: str
    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]
    precision: Literal["fp32", "fp16", "int8"] = "fp32"


class DiscriminatorGraph(_Strict):
    """The s4GAN discriminator, exported beside the pipeline (``export/discriminator.py``): not
    served, read by ``s4seg queue``."""

    graph: GraphFile
    parity_images: int
    max_abs_difference: float  # of its score, ONNX against PyTorch, on the parity images


class Source(_Strict):
    """A checkpoint an ONNX file was made from."""

    path: str
    sha256: str
    kind: str
    trainer: str | None = None
    iteration: int | None = None
    arch: dict[str, Any]


class TauChoice(_Strict):
    """How the served tau was chosen: what publish prints and ``/v1/models`` shows."""

    method: Literal["calibrated", "explicit", "paper default", "not calibrated", "no classifier"]
    reason: str
    data: dict[str, Any] | None = None  # the held-out images of a calibration
    images: int | None = None
    ungated_miou: float | None = None
    sweep: list[dict[str, float]] = []  # [{"tau": t, "miou": gated mIoU at t}]


class ConfidenceReport(_Strict):
    """The calibration measured on images it was not fitted on (the report part)."""

    images: int
    pixels: int
    accuracy: float
    ece_before: float  # raw softmax
    ece_after: float  # temperature-scaled
    coverage: float  # share of pixels whose prediction set holds the true class
    mean_set_size: float
    multiple_share: float  # share of pixels whose set holds more than one class


class Confidence(_Strict):
    """How far the segmenter's probabilities can be trusted (``s4seg.confidence``), fitted at
    export on the calibration part: softmax(logits / temperature) and prediction sets of every
    class whose calibrated probability reaches ``threshold``."""

    temperature: list[float] = Field(min_length=1, description="one (global) or one per class")
    scope: Literal["global", "per class"]
    scope_reason: str
    coverage: float = Field(gt=0.0, lt=1.0, description="the prediction sets' target coverage")
    threshold: float = Field(ge=0.0, le=1.0)
    fitted_on: dict[str, Any]  # data, part, images, pixels
    report: ConfidenceReport


class Parity(_Strict):
    """The ONNX graphs against the PyTorch modules on the same framed images
    (``export/parity.py``): what export and publish require, and what each variant was judged
    by."""

    images: int
    tau: float  # the gate's threshold for the gated figures
    input_size: list[int]
    providers: list[str]
    max_abs_prob_diff: float
    max_abs_class_prob_diff: float
    label_agreement: float  # share of pixels with the same gated label
    ungated_label_agreement: float
    gated_miou_torch: float | None = None  # None: the images had no masks of these classes
    gated_miou_onnx: float | None = None
    gated_miou_diff: float | None = None
    passed: bool
    data: dict[str, Any] | None = None  # where the images came from (export's own check)
    judged_on: dict[str, Any] | None = None  # variants: the calibration images, at the served tau
    # A variant's own rule (INT8): what it had to meet, and what it lost.
    rule: str | None = None
    gated_miou_drop: float | None = None
    calibration_images: int | None = None


class Variant(_Strict):
    """A lower-precision variant: its graphs (replacing the FP32 ones of the same steps; none
    when it was refused) and the parity figures it was accepted or refused by (INT8, FP16: in
    ONNX Runtime; BF16: in OpenVINO)."""

    graphs: dict[str, GraphFile] = {}
    parity: Parity
    # The same graphs judged in another runtime, by the same rule: OpenVINO runs INT8's QDQ
    # graph with kernels of its own, so ONNX Runtime's figures do not hold for it. A runtime
    # missing here is not offered for this variant (``export.engine_choice``).
    runtime_parity: dict[str, Parity] = {}


# bf16 is a way to run the FP32 graphs (OpenVINO at bf16, ``s4seg.engines``), not graphs of its
# own: its variant names the FP32 segmenter and classifier files, with parity figures of its own.
PRECISIONS = ("fp32", "fp16", "int8", "bf16")


class Manifest(_Strict):
    format: Literal["s4seg-manifest/4"] = MANIFEST_FORMAT
    created: str
    s4seg_version: str
    dataset: dict[str, Any]
    classes: list[str] = Field(min_length=1, max_length=255)
    palette: list[list[int]]
    background_index: int | None
    input_size: list[int] = Field(min_length=2, max_length=2, description="served [height, width]")
    pad_value: list[int] = Field(
        min_length=3, max_length=3, description="RGB fill of the letterbox (the mean colour)"
    )
    normalization: Normalization
    classifier: ClassifierInput | None = Field(
        description="None: exported without an MLMT classifier (the gate keeps every class)"
    )
    tau: float = Field(ge=GATE_OFF_TAU, le=1.0, description="served gate threshold; -1: gate off")
    tau_choice: TauChoice | None = None
    confidence: Confidence | None = Field(
        default=None, description="calibrated confidence, when export had labeled data for it"
    )
    opset: int
    graphs: dict[str, GraphFile]
    discriminator: DiscriminatorGraph | None = Field(
        default=None, description="s4GAN's discriminator, for s4seg queue (not served)"
    )
    sources: dict[str, Source]
    config_digest: str
    parity: Parity | None = Field(default=None, description="set by export once measured")
    variants: dict[Literal["fp16", "int8", "bf16"], Variant] = {}
    metrics: dict[str, Any] = {}
    published: dict[str, Any] | None = Field(
        default=None, description="set by publish: version, runtime, precision, time, source"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if len(self.palette) < len(self.classes):
            raise ValueError(
                f"palette has {len(self.palette)} colours for {len(self.classes)} classes"
            )
        if self.background_index is not None and not 0 <= self.background_index < len(self.classes):
            raise ValueError(f"background_index {self.background_index} is not a class index")
        if self.tau < 0 and self.tau != GATE_OFF_TAU:
            raise ValueError(f"tau must be in [0, 1] or {GATE_OFF_TAU} (gate off), not {self.tau}")
        missing = [step for step in STEPS if step not in self.graphs]
        if missing:
            raise ValueError(f"graphs lacks {', '.join(missing)}")
        temperatures = len(self.confidence.temperature) if self.confidence else 1
        if temperatures not in (1, len(self.classes)):
            raise ValueError(
                f"confidence has {temperatures} temperatures: one, or one per class "
                f"({len(self.classes)})"
            )
        return self

    def variant_graphs(self, precision: str = "fp32") -> dict[str, GraphFile]:
        """Each step's graph in ``precision``: the variant's files replace the FP32 ones they
        were made from (FP16 segmenter and classifier, INT8 segmenter)."""
        if precision not in PRECISIONS:
            raise ManifestError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}"
            )
        if precision == "fp32":
            return dict(self.graphs)
        variant = self.variants.get(precision)  # type: ignore[call-overload]
        if variant is None or not variant.graphs:
            raise ManifestError(
                f"this export has no {precision.upper()} variant (export with --{precision}, "
                f"and see variants.{precision}.parity in its manifest if it was refused)"
            )
        return {**self.graphs, **variant.graphs}

    @property
    def classifier_view_size(self) -> int:
        """The side of the classifier's square input (``letterbox.classifier_view``)."""
        return self.classifier.size if self.classifier is not None else NO_CLASSIFIER_VIEW_SIZE

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe_tau(self) -> str:
        """One line: the served tau and how it was chosen."""
        served = "gate off (tau -1)" if self.tau == GATE_OFF_TAU else f"tau {self.tau:g}"
        if self.tau_choice is None:
            return served
        return f"{served} [{self.tau_choice.method}] {self.tau_choice.reason}"

    @property
    def gate_on(self) -> bool:
        """The served default gates classes (a classifier, and tau not "off")."""
        return self.classifier is not None and self.tau != GATE_OFF_TAU

    def request_tau(self, tau: float | None = None, gate: bool = True) -> float:
        """The tau a request runs with: the gate off when ``gate`` is False, else the asked
        ``tau``, else the served one. (The one place a request's tau is resolved.)"""
        if not gate:
            return GATE_OFF_TAU
        return self.tau if tau is None else tau

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.model_dump(mode="json"))

    def public_dump(self) -> dict[str, Any]:
        """What may be shown to clients (``GET /v1/models``): every host path (data roots,
        checkpoints, the export folder) reduced to its last name."""
        return without_host_paths(self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read ``path`` (a manifest file, or a folder holding one); errors name the file."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"no manifest at {path} (make one with `s4seg export`)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ManifestError(f"{path} is not readable JSON: {error}") from None
        if isinstance(data, dict) and data.get("format") != MANIFEST_FORMAT:
            again = (
                " (an export of an older s4seg: export the checkpoints again)"
                if data.get("format") in OLDER_FORMATS
                else ""
            )
            raise ManifestError(
                f"{path} has format {data.get('format')!r}; this s4seg reads "
                f"{MANIFEST_FORMAT}{again}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise ManifestError(f"{path}: {where}: {first['msg']}") from None


# An absolute POSIX path inside any string: "/a/b/c" (two parts or more) -> "c".
_HOST_PATH = re.compile(r"(?<![\w.~])(?:~|[A-Za-z]:)?(?:[/\\][^\s/\\'\"]+){2,}[/\\]?")


def without_host_paths(value: Any) -> Any:
    """``/home/u/data/voc`` -> ``voc``, anywhere in a JSON value, sentences included."""
    if isinstance(value, dict):
        return {k: without_host_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_host_paths(v) for v in value]
    if isinstance(value, str):
        return _HOST_PATH.sub(lambda m: PurePath(m.group(0).replace("\\", "/")).name, value)
    return value


def digest_json(value: Any) -> str:
    """sha256 of a value's canonical JSON (sorted keys): the same config gives the same digest."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
