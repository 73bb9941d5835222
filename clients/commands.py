"""``s4seg segment`` and ``s4seg predict`` (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s4seg.defaults import REPOSITORY
from s4seg.errors import S4segError
from s4seg.imaging import IMAGE_SUFFIXES
from s4seg.outputs import OVERLAY_ENCODINGS

from .predict import (
    DEFAULT_DEADLINE,
    list_jobs,
    output_suffix,
    parse_shard,
    run_jobs,
    summary,
    write_failures,
)


def overlay_encoding(args: argparse.Namespace) -> str | None:
    """--overlay-encoding counts for --format overlay only (label maps stay PNG)."""
    return args.overlay_encoding if args.format == "overlay" else None


def run_segment(args: argparse.Namespace) -> int:
    from .client import ClientError, SegmentationClient

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    with SegmentationClient(args.url, args.api_key) as client:
        for name in args.images:
            path = Path(name)
            try:
                if not path.is_file():
                    raise S4segError(f"no such file: {path}")
                result = client.segment(
                    path, args.format, args.tau, not args.no_gate, overlay_encoding(args)
                )
            except (ClientError, S4segError) as error:
                print(f"{path}: {error}", file=sys.stderr)
                failed += 1
                continue
            suffix = output_suffix(args.format, overlay_encoding(args))
            target = result.save(out / (path.stem + suffix))
            line = f"{path} -> {target} (model version {result.version})"
            if args.format == "json":
                present = ", ".join(f"{c['name']} {c['pixels']}" for c in result.json["classes"])
                line += f": {present}"
            print(line)
    return 1 if failed else 0


def check_deadline(seconds: float) -> None:
    if seconds <= 0:
        raise S4segError(f"--deadline must be a positive number of seconds, not {seconds}")


def worker_processes(concurrency: int | None, local: bool) -> int:
    """--concurrency, else: local workers run the networks themselves, one per core (at most 4,
    the cores shared out as intra-op threads); remote ones wait on the server, 4 in flight."""
    from .workers import usable_cpus

    workers = concurrency or (min(usable_cpus(), 4) if local else 4)
    if workers < 1:
        raise S4segError(f"--concurrency must be at least 1, not {workers}")
    return workers


def run_predict(args: argparse.Namespace) -> int:
    from .backends import Backend, OutputFormat
    from .workers import usable_cpus

    check_deadline(args.deadline)
    jobs, rejected = list_jobs(args.input, parse_shard(args.shard, args.shard_count))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    output_format = OutputFormat(args.format, overlay_encoding(args))
    cpus = usable_cpus()
    local = args.via == "local"
    workers = worker_processes(args.concurrency, local)
    backend = Backend(
        args.via,
        output_format,
        args.tau,
        not args.no_gate,
        url=args.url,
        api_key=args.api_key,
        triton_url=args.triton_url,
        repository=Path(args.repository),
        model=args.model,
        device=args.device,
        threads=max(1, cpus // workers) if local else None,
    )
    backend.check()
    print(
        f"predict: {len(jobs)} images via {args.via}, {workers} worker processes, "
        f"{args.deadline:g} s deadline per image",
        file=sys.stderr,
    )
    report = run_jobs(
        jobs,
        output,
        args.format,
        backend,
        workers,
        args.deadline,
        encoding=output_format.encoding,
    )
    report.failures = rejected + report.failures
    write_failures(report, output)
    print(summary(report, output))
    return 1 if report.failures else 0


def run_queue(args: argparse.Namespace) -> int:
    from s4seg.acquisition import STRATEGIES
    from s4seg.manifest import Manifest

    from .label_queue import (
        SCORES,
        QueueRequest,
        Scorer,
        build_queue,
        check_strategy,
        features_reason,
    )
    from .predict import log
    from .workers import usable_cpus

    if args.strategy not in STRATEGIES:
        raise S4segError(f"--strategy must be one of {', '.join(STRATEGIES)}")
    if args.top < 1:
        raise S4segError(f"--top must be at least 1, not {args.top}")
    check_deadline(args.deadline)
    manifest = Manifest.load(args.model)
    check_strategy(args.strategy, manifest, args.model)
    pool, rejected = list_jobs(args.pool, (0, 1))
    if not pool:
        raise S4segError(f"--pool {args.pool} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    shard = parse_shard(args.shard, args.shard_count)
    jobs, _ = list_jobs(args.pool, shard)
    no_features = None if args.no_diversity else features_reason(args.model, manifest)
    if no_features:
        log(f"queue: no diversity step: {no_features}")
    workers = worker_processes(args.concurrency, local=True)
    scorer = Scorer(
        args.model,
        not args.no_diversity and not no_features,
        args.device,
        max(1, usable_cpus() // workers),
    )
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    log(f"queue: scoring {len(jobs)} of {len(pool)} images with {workers} worker processes")
    report = run_jobs(jobs, output / SCORES, "json", scorer, workers, args.deadline)
    report.failures = rejected + report.failures
    write_failures(report, output)
    request = QueueRequest(
        args.strategy, args.top, args.seed, None if args.no_diversity else args.similarity
    )
    rows, missing = build_queue(output, pool, request, args.model, manifest)
    print(summary(report, output))
    if missing:
        print(
            f"{missing} of the pool's {len(pool)} images are not scored yet (other shards, or "
            "failed): the queue ranks the rest; run again when they are done"
        )
    top = ", ".join(row["image"] for row in rows[: min(5, args.top)])
    print(
        f"queue: {len(rows)} images ranked by {args.strategy} -> {output / 'queue.csv'}, "
        f"contact sheet of the top {min(args.top, len(rows))} -> {output / 'contact_sheet.png'}"
    )
    print(f"label first: {top}")
    return 0


def run_labelstudio_tasks(args: argparse.Namespace) -> int:
    from .labelstudio import LABEL_CONFIG, TASKS, write_tasks

    out = Path(args.out)
    count = write_tasks(Path(args.queue), Path(args.document_root), out, args.top)
    print(
        f"{count} tasks with the model's masks as pre-annotations -> {out / TASKS}; the "
        f"project's labeling interface -> {out / LABEL_CONFIG}"
    )
    return 0


def run_labelstudio_import(args: argparse.Namespace) -> int:
    from .labelstudio import import_export

    done = import_export(
        Path(args.export),
        Path(args.data),
        args.split,
        Path(args.split_file) if args.split_file else None,
        Path(args.document_root) if args.document_root else None,
    )
    print(
        f"{done.images} labeled images added to {args.data} (split {args.split}; {done.moved} "
        "moved out of images/unlabeled/)"
        + (f"; {done.split_file} lists them as labeled" if done.split_file else "")
    )
    return 0


def run_labelstudio_backend(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from .backends import Backend, OutputFormat
    from .labelstudio_backend import backend_app

    backend = Backend(
        args.via,
        OutputFormat("json"),
        args.tau,
        url=args.url,
        api_key=args.api_key or os.environ.get("S4SEG_API_KEY"),
        triton_url=args.triton_url,
        repository=Path(args.repository),
        model=args.model,
        device=args.device,
    )
    backend.check()
    token = args.token or os.environ.get("LABEL_STUDIO_API_KEY")
    auth = args.basic_auth or os.environ.get("S4SEG_LS_BACKEND_AUTH")
    app = backend_app(backend, args.label_studio, token, auth)
    print(
        f"Label Studio ML backend on http://{args.host}:{args.port} (model via {args.via}; "
        f"images read from {args.label_studio} only): add this URL under the project's "
        "Settings > Model"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


# -- the command line: parsers only (no torch at parse time); each command names its handler ----


def add_parsers(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment images through the gateway")
    segment.add_argument("images", nargs="+", metavar="IMG")
    segment.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway")
    segment.add_argument("--format", choices=["png", "overlay", "json"], default="png")
    segment.add_argument("--out", default=".", help="folder for the outputs")
    segment.add_argument(
        "--overlay-encoding",
        choices=list(OVERLAY_ENCODINGS),
        default="png",
        help="--format overlay: png, or jpeg/webp (smaller and much faster on photos)",
    )
    segment.add_argument("--tau", type=float, help="gate threshold (default: the model's)")
    segment.add_argument("--no-gate", action="store_true", help="do not gate classes")
    segment.add_argument("--api-key", help="X-API-Key (default: env S4SEG_API_KEY)")

    predict = commands.add_parser(
        "predict", help="batch offline inference over a folder or list (resumable, sharded)"
    )
    predict.add_argument("--input", required=True, help="folder (recursive) or a list file")
    predict.add_argument("--output", required=True, help="folder for the outputs")
    predict.add_argument("--via", choices=["gateway", "triton", "local"], default="local")
    predict.add_argument("--format", choices=["png", "overlay", "json"], default="png")
    predict.add_argument(
        "--concurrency",
        type=int,
        help="worker processes, one image each (default: --via local one per core, at most 4; "
        "gateway/triton 4 requests in flight)",
    )
    predict.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help="the most an image may take; past it the image fails (listed with the reason), its "
        f"worker is replaced, and the run goes on (default {DEFAULT_DEADLINE:g})",
    )
    predict.add_argument(
        "--overlay-encoding",
        choices=list(OVERLAY_ENCODINGS),
        default="png",
        help="--format overlay: png, or jpeg/webp (smaller and much faster on photos)",
    )
    predict.add_argument(
        "--shard",
        help="i/n: this worker's share of the sorted inputs; auto: i from a Kubernetes Indexed "
        "Job ($JOB_COMPLETION_INDEX), n from --shard-count or $S4SEG_SHARD_COUNT",
    )
    predict.add_argument("--shard-count", type=int, help="--shard auto: the job's shard count")
    predict.add_argument("--tau", type=float, help="gate threshold (default: the model's)")
    predict.add_argument("--no-gate", action="store_true")
    add_model_arguments(predict)
    add_queue_parser(commands)
    add_labelstudio_parsers(commands)
    segment.set_defaults(handler=run_segment)
    predict.set_defaults(handler=run_predict)


def add_queue_parser(commands: argparse._SubParsersAction) -> None:
    from s4seg.acquisition import DEFAULT_SIMILARITY, DEFAULT_STRATEGY, STRATEGIES

    queue = commands.add_parser(
        "queue",
        help="rank a pool of images by what labeling them would teach the model (resumable, "
        "sharded): queue.csv and a contact sheet",
    )
    queue.add_argument("--pool", required=True, help="folder (recursive) or a list file")
    queue.add_argument("--model", required=True, help="an export folder (s4seg export)")
    queue.add_argument("--output", required=True, help="folder for the scores and the queue")
    queue.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,
        help="what ranks an image first: the model's uncertainty (entropy, margin, set-size: the "
        "share of pixels with more than one class in their calibrated prediction set), the "
        "classifier disagreeing with the segmenter, or random (the baseline)",
    )
    queue.add_argument(
        "--top",
        type=int,
        default=24,
        help="the batch to label: the diversity step's and the contact sheet's length (default 24)",
    )
    queue.add_argument(
        "--similarity",
        type=float,
        default=DEFAULT_SIMILARITY,
        help="an image whose classifier features are this close (cosine, centred) to one "
        f"already in the top is set aside as a near-copy (default {DEFAULT_SIMILARITY:g})",
    )
    queue.add_argument("--no-diversity", action="store_true", help="rank by score alone")
    queue.add_argument("--seed", type=int, default=0, help="--strategy random: its seed")
    queue.add_argument(
        "--concurrency", type=int, help="worker processes (default: one per core, at most 4)"
    )
    queue.add_argument(
        "--deadline",
        type=float,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help=f"the most an image may take (default {DEFAULT_DEADLINE:g})",
    )
    queue.add_argument(
        "--shard",
        help="i/n: score this share of the pool (as predict); every "
        "run ranks all the images scored so far",
    )
    queue.add_argument("--shard-count", type=int, help="--shard auto: the job's shard count")
    queue.add_argument("--device", default="auto", help="auto|cpu|cuda")
    queue.set_defaults(handler=run_queue)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the model is, for each ``--via`` (``clients/backends.py``'s ``Backend``)."""
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="--via gateway")
    parser.add_argument("--api-key", help="--via gateway: X-API-Key (env S4SEG_API_KEY)")
    parser.add_argument("--triton-url", default="127.0.0.1:8000", help="--via triton")
    parser.add_argument("--repository", default=str(REPOSITORY), help="--via triton/local")
    parser.add_argument("--model", help="--via local: an export folder (default: served)")
    parser.add_argument("--device", default="auto", help="--via local: auto|cpu|cuda")


def add_labelstudio_parsers(commands: argparse._SubParsersAction) -> None:
    labelstudio = commands.add_parser(
        "labelstudio", help="the labeling round trip: queue -> Label Studio tasks -> data set"
    )
    steps = labelstudio.add_subparsers(dest="step", required=True, metavar="STEP")
    tasks = steps.add_parser(
        "tasks", help="the top of a queue as Label Studio tasks, the model's masks pre-annotated"
    )
    tasks.add_argument("--queue", required=True, help="a folder written by s4seg queue")
    tasks.add_argument(
        "--document-root",
        required=True,
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT: the images' URLs are relative to it",
    )
    tasks.add_argument("--out", default=".", help="folder for tasks.json and label_config.xml")
    tasks.add_argument("--top", type=int, help="how many (default: the queue's --top)")
    tasks.set_defaults(handler=run_labelstudio_tasks)
    back = steps.add_parser(
        "import", help="a Label Studio JSON export into a folder data set, the split updated"
    )
    back.add_argument("--export", required=True, help="Label Studio's JSON export of the project")
    back.add_argument("--data", required=True, help="the folder data set (classes.yaml, images/)")
    back.add_argument("--split", default="train", help="where the labeled images go (train)")
    back.add_argument("--split-file", help="a saved training split to list them as labeled in")
    back.add_argument(
        "--document-root", help="for tasks not made by s4seg: where their local-files URLs point"
    )
    back.set_defaults(handler=run_labelstudio_import)
    serve = steps.add_parser(
        "backend",
        help="Label Studio's ML backend: a project asks s4seg for brush-mask predictions",
    )
    serve.add_argument(
        "--label-studio",
        required=True,
        help="Label Studio's URL: task images are read from there (and from nowhere else)",
    )
    serve.add_argument(
        "--token", help="a Label Studio legacy API token (default: env LABEL_STUDIO_API_KEY)"
    )
    serve.add_argument(
        "--basic-auth",
        metavar="USER:PASSWORD",
        help="required of every call (the connection's basic auth in Label Studio; env "
        "S4SEG_LS_BACKEND_AUTH); set it before listening beyond loopback",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--via", choices=["gateway", "triton", "local"], default="local")
    serve.add_argument("--tau", type=float, help="gate threshold (default: the model's)")
    add_model_arguments(serve)
    serve.set_defaults(handler=run_labelstudio_backend)
