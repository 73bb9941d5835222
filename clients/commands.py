"""``s4seg segment`` and ``s4seg predict`` (no torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s4seg.errors import S4segError

from .predict import SUFFIX, list_jobs, parse_shard, run_jobs, summary, write_failures


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
                result = client.segment(path, args.format, args.tau, not args.no_gate)
            except (ClientError, S4segError) as error:
                print(f"{path}: {error}", file=sys.stderr)
                failed += 1
                continue
            target = result.save(out / (path.stem + SUFFIX[args.format]))
            line = f"{path} -> {target} (model version {result.version})"
            if args.format == "json":
                present = ", ".join(f"{c['name']} {c['pixels']}" for c in result.json["classes"])
                line += f": {present}"
            print(line)
    return 1 if failed else 0


def run_predict(args: argparse.Namespace) -> int:
    from . import backends

    jobs, rejected = list_jobs(args.input, parse_shard(args.shard))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    gate = not args.no_gate
    repository = Path(args.repository)
    if args.via == "gateway":
        segment = backends.gateway_segmenter(args.url, args.format, args.tau, gate, args.api_key)
    elif args.via == "triton":
        segment = backends.triton_segmenter(
            args.triton_url, repository, args.format, args.tau, gate
        )
    else:
        segment = backends.local_segmenter(
            args.model, repository, args.format, args.tau, gate, args.device
        )
    print(f"predict: {len(jobs)} images via {args.via}", file=sys.stderr)
    report = run_jobs(jobs, output, args.format, segment, args.concurrency)
    report.failures = rejected + report.failures
    write_failures(report, output)
    print(summary(report, output))
    return 1 if report.failures else 0
