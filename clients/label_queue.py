"""``s4seg queue``: which images of a pool to label next (issue 34, item 3).

Two steps. Scoring runs on ``s4seg predict``'s machinery (the same job list, shards, worker
processes under a deadline, atomic outputs, skip-what-exists resume, failures listed): each
image's answer (its mask as COCO RLE), its acquisition scores (``s4seg.acquisition``) and its
classifier features go to ``OUTPUT/scores/<image>.json``. Ranking then reads every score file
there (every shard's), orders them by the chosen strategy with the diversity step, and writes
``queue.csv`` (for people), ``queue.json`` (for ``s4seg labelstudio``) and ``contact_sheet.png``
(the top of the queue with its masks).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from s4seg.acquisition import ImageScores, Ranked, image_scores, rank
from s4seg.atomic import write_atomic
from s4seg.errors import S4segError
from s4seg.features import features_input
from s4seg.imaging import DEFAULT_MAX_PIXELS, read_image_file
from s4seg.letterbox import Framing, labels_from_scores
from s4seg.manifest import Manifest
from s4seg.onnx_pipeline import UNGATED_TAU
from s4seg.outputs import Answer, segmentation_json
from s4seg.quality import answer_quality, content_grid

from .predict import Job, output_path

SCORES = "scores"
QUEUE_CSV, QUEUE_JSON, CONTACT_SHEET = "queue.csv", "queue.json", "contact_sheet.png"


def check_strategy(strategy: str, manifest: Manifest, model: str) -> None:
    """Refuse, before any image is scored, a strategy this export cannot score."""
    if strategy == "set-size" and manifest.confidence is None:
        raise S4segError(
            f"--strategy set-size needs prediction sets, and {model} has no calibration: "
            "export again with a data set (s4seg export --data ...), or choose entropy"
        )
    if strategy == "discriminator" and manifest.discriminator is None:
        raise S4segError(
            f"--strategy discriminator needs s4GAN's discriminator, and {model} has none: export "
            "an s4GAN checkpoint (its discriminator goes along), or choose entropy"
        )
    if strategy == "disagreement" and manifest.classifier is None:
        raise S4segError(
            f"--strategy disagreement needs the MLMT classifier, and {model} has none: export "
            "with --classifier, or choose entropy"
        )


def features_reason(model: str, manifest: Manifest) -> str | None:
    """Why the diversity step cannot run on this export (None: it can)."""
    if manifest.classifier is None:
        return "the export has no classifier (its features keep near-copies apart)"
    import onnx

    try:
        features_input(onnx.load(str(Path(model) / manifest.graphs["classifier"].file)).graph)
    except S4segError as error:
        return str(error)
    return None


@dataclass(frozen=True)
class Scorer:
    """Plain data that builds ``score(path) -> bytes`` (one image's score file) in a worker."""

    model: str
    features: bool
    device: str = "auto"
    threads: int | None = None

    def build(self) -> Callable[[Path], bytes]:
        from s4seg.onnx_pipeline import OnnxPipeline

        pipeline = OnnxPipeline.from_export(
            self.model,
            device=self.device,
            threads=self.threads,
            features=self.features,
            discriminator=Manifest.load(self.model).discriminator is not None,
        )
        manifest = pipeline.manifest
        framing = Framing.of(manifest)
        tau = manifest.request_tau(None, True)

        def score(path: Path) -> bytes:
            decoded = read_image_file(path, DEFAULT_MAX_PIXELS, framing.fit)
            framed = framing.frame(decoded.pixels, decoded.size)
            out = pipeline.run(framed.canvas[None], framed.view[None], tau, keep_logits=True)
            assert out.logits is not None  # asked for
            scores, placement, class_probs = out.scores[0], framed.placement, out.class_probs[0]
            # Scored on the segmenter's own (ungated) logits, as calibrated; the mask is served.
            figures = image_scores(
                content_grid(out.logits[0], placement),
                class_probs if manifest.classifier is not None else None,
                manifest.confidence,
                manifest.background_index,
            )
            if out.d_score is not None:  # label first what D finds least like a label
                figures = replace(figures, discriminator=1.0 - float(out.d_score[0]))
            answer = Answer(
                labels_from_scores(scores, placement),
                class_probs,
                out.suppressed[0],
                manifest,
                "local",
                None if tau == UNGATED_TAU else tau,
                answer_quality(scores, placement, class_probs, manifest),
            )
            record = {
                "scores": figures.rounded(),
                "features": None if out.features is None else out.features[0].tolist(),
                "answer": segmentation_json(answer),
            }
            return (json.dumps(record) + "\n").encode()

        return score


@dataclass(frozen=True)
class Scored:
    job: Job
    scores: ImageScores
    features: list[float] | None
    answer: dict

    @property
    def name(self) -> str:
        return self.job.relative.as_posix()


def read_scored(output: Path, jobs: list[Job]) -> list[Scored]:
    """The pool's images that have a score file under ``output`` (any shard's), in pool order."""
    scored = []
    for job in jobs:
        path = output_path(output / SCORES, job, "json")
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        scored.append(
            Scored(job, ImageScores(**record["scores"]), record["features"], record["answer"])
        )
    return scored


@dataclass(frozen=True)
class QueueRequest:
    strategy: str
    top: int
    seed: int = 0
    similarity: float | None = None  # None: no diversity step


def values_of(scored: list[Scored], request: QueueRequest) -> list[float]:
    values = [s.scores.of(request.strategy, s.name, request.seed) for s in scored]
    if any(v is None for v in values):
        raise S4segError(
            f"the score files have no {request.strategy} score (scored by another "
            "export? delete OUTPUT/scores and run again)"
        )
    return [float(v) for v in values]  # type: ignore[arg-type]


def rank_scored(scored: list[Scored], request: QueueRequest) -> Ranked:
    values = values_of(scored, request)
    features = None
    if request.similarity is not None and all(s.features is not None for s in scored):
        features = np.asarray([s.features for s in scored], dtype=np.float32)
    return rank(values, features, request.top, request.similarity or 1.0)


def reason(
    item: Scored, value: float, request: QueueRequest, near: tuple[str, float] | None
) -> str:
    if near is not None:
        return f"set aside: a near-copy of {near[0]} (feature cosine {near[1]:.2f})"
    text = f"{request.strategy} {value:.3f}"
    disagreeing = (item.answer.get("quality") or {}).get("disagreeing")
    if disagreeing:
        text += "; the classifier and the segmenter disagree on " + ", ".join(disagreeing)
    return text


def queue_rows(scored: list[Scored], ranked: Ranked, request: QueueRequest) -> list[dict]:
    values = values_of(scored, request)
    rows = []
    for place, index in enumerate(ranked.order, start=1):
        item = scored[index]
        near = ranked.near_copy.get(index)
        copies = None if near is None else (scored[near[0]].name, near[1])
        quality = item.answer.get("quality") or {}
        rows.append(
            {
                "rank": place,
                "image": item.name,
                "source": str(item.job.source.resolve()),
                "score": round(values[index], 5),
                **{k: v for k, v in item.scores.rounded().items()},
                "mean_confidence": quality.get("mean_confidence"),
                "classes": " ".join(c["name"] for c in item.answer["classes"]),
                "near_copy_of": None if copies is None else copies[0],
                "reason": reason(item, values[index], request, copies),
            }
        )
    return rows


def write_queue(output: Path, rows: list[dict], request: QueueRequest, model: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(output / QUEUE_CSV, text.getvalue().encode())
    body = {
        "strategy": request.strategy,
        "seed": request.seed,
        "top": request.top,
        "similarity": request.similarity,
        "model": str(Path(model).resolve()),
        "scores": SCORES,
        "rows": rows,
    }
    write_atomic(output / QUEUE_JSON, (json.dumps(body, indent=1) + "\n").encode())


def write_contact_sheet(
    output: Path, rows: list[dict], scored: list[Scored], manifest: Manifest, count: int
) -> Path:
    from .contact_sheet import contact_sheet

    answers = {s.name: s.answer for s in scored}
    cells = [(row, answers[row["image"]]) for row in rows[:count]]
    path = output / CONTACT_SHEET
    contact_sheet(cells, manifest).save(path)
    return path


def build_queue(
    output: Path, pool: list[Job], request: QueueRequest, model: str, manifest: Manifest
) -> tuple[list[dict], int]:
    """Rank every scored image of ``pool`` and write the queue and its contact sheet; also how
    many of the pool have no score file yet (other shards still running, or failed)."""
    scored = read_scored(output, pool)
    if not scored:
        raise S4segError(f"no image of the pool could be scored (see {output / 'failures.json'})")
    rows = queue_rows(scored, rank_scored(scored, request), request)
    write_queue(output, rows, request, model)
    write_contact_sheet(output, rows, scored, manifest, request.top)
    return rows, len(pool) - len(scored)
