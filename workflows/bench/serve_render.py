"""``s4seg bench serve``'s results as BENCHMARKS' section (measured apart, rendered here)."""

from __future__ import annotations

import statistics

from .limits import peak_gflops
from .report import cpu_description, percentile, provenance
from .serve_callers import IN_PROCESS
from .serve_results import ServeResults


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms."""
    return statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000


def render(results: ServeResults) -> str:
    request, manifest, alone = results.request, results.manifest, results.alone
    rows, cpu, hops, by_size, stats = (results.rows, results.cpu, results.hops, results.by_size,
                                       results.stats)  # fmt: skip
    default, served_engine, flops = results.default, results.served_engine, results.flops
    version, repository = results.version, request.repository
    best = max((r for r in alone if r.engine == served_engine), key=lambda row: row.rate)
    limit = max(alone, key=lambda row: row.rate)
    per_image = sum(flops.values())
    in_proc = {c: r for n, c, r, _ in rows if n.startswith("in-process")}
    h, w = manifest.input_size
    lines = [
        *provenance(f"{cpu_description()} (client, gateway, Triton and models share it)"),
        f"Model: version {version} of {repository} (DeepLabv2 ResNet-"
        f"{manifest.sources['segmenter'].arch['backbone_depth']}, served {h}x{w}, "
        f"{manifest.num_classes} classes); {results.images} images cycled.",
        "",
        "**Model alone** (segmenter + classifier sessions, nothing else; "
        f"{request.windows} windows of {request.window:g} s after a warm-up; median, min-max). "
        f"Served with {served_engine.name}; FLOPs per image {per_image / 1e9:.2f} G "
        f"({', '.join(f'{k} {v / 1e9:.2f} G' for k, v in flops.items())}, torch's flop "
        "counter); peak an estimate:",
        "",
    ]
    for precision in sorted({row.engine.precision for row in alone}):
        peak, how = peak_gflops(precision)
        lines.append(f"- peak {precision}: {f'{peak:.0f} GFLOP/s' if peak else 'unknown'} ({how})")
    lines += [
        "",
        "| runtime | precision | instances x threads | batch | images/s | spread | GFLOP/s | "
        "of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in alone:
        mark = " **served best**" if row is best else ""
        mark += " **limit**" if row is limit else ""
        peak, _ = peak_gflops(row.engine.precision)
        gflops = row.rate * per_image / 1e9
        share = f"{100 * gflops / peak:.0f}%" if peak else "-"
        lines.append(
            f"| {row.engine.runtime} | {row.engine.precision} | {row.instances} x {row.threads} "
            f"| {row.batch} | {row.rate:.1f}{mark} | {min(row.rates):.1f}-{max(row.rates):.1f} | "
            f"{gflops:.0f} | {share} |"
        )
    lines += [
        "",
        "**Requests** (per request: decode, letterbox, segment gated, map back at the image's "
        "size, palette PNG; in-process and the gateway decode JPEGs at reduced scale alike):",
        "",
        "| target | concurrency | requests/s | p50 ms | p99 ms | p99/p50 | vs in-process | "
        "vs model alone (served engine) | vs the limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, concurrency, rate, latencies in sorted(rows, key=lambda r: r[1]):
        p50, p99 = percentiles(latencies)
        lines.append(
            f"| {name} | {concurrency} | {rate:.1f} | {p50:.0f} | {p99:.0f} | {p99 / p50:.2f} | "
            f"{rate / in_proc[concurrency]:.2f}x | {rate / best.rate:.2f}x | "
            f"{rate / limit.rate:.2f}x |"
        )
    if cpu:
        labels = sorted({k for (n, _), used in cpu.items() if n != IN_PROCESS for k in used})
        lines += [
            "",
            "**Where the CPU goes** (CPU ms per request, from /proc, over each run above: the "
            "client is this benchmark's process, the rest `s4seg serve` and its children; "
            "in-process: the whole pipeline in this process):",
            "",
            f"| concurrency | {' | '.join(labels)} | all (gateway path) | in-process |",
            "|---" * (len(labels) + 3) + "|",
        ]
        for concurrency in request.concurrency:
            used = cpu.get((default, concurrency), {})
            in_process = cpu.get((IN_PROCESS, concurrency), {})
            in_process_ms = in_process.get(IN_PROCESS, float("nan"))
            cells = " | ".join(f"{used.get(k, 0):.1f}" for k in labels)
            total = sum(used.values())
            lines.append(f"| {concurrency} | {cells} | {total:.1f} | {in_process_ms:.1f} |")
    if hops:
        lines += [
            "",
            f"**The hop alone**: the ensemble called directly with the served-size image tensor "
            f"(no decode, no map back), concurrency {request.hop_concurrency}, gated scores back:",
            "",
            "| protocol | requests/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
        ]
        for name, rate, latencies in hops:
            p50, p99 = percentiles(latencies)
            lines.append(f"| {name} | {rate:.1f} | {p50:.0f} | {p99:.0f} |")
    if by_size:
        lines += [
            "",
            f"**Latency by input size** (the default gateway, concurrency 1, JPEG in, "
            f"{request.size_repeats} requests after one warm-up):",
            "",
            "| input | output | p50 ms | p90 ms | response KiB |",
            "|---|---|---|---|---|",
        ]
        for name, fmt, p50, p90, kib in by_size:
            lines.append(f"| {name} | {fmt} | {p50:.0f} | {p90:.0f} | {kib:.0f} |")
    if stats:
        lines += ["", "Triton, per step over the default gateway's run (means per request):", "",
                  "| step | queue ms | compute ms | executions |", "|---|---|---|---|"]  # fmt: skip
        for step, (queue, compute, executions) in stats.items():
            lines.append(f"| {step} | {queue:.1f} | {compute:.1f} | {executions} |")
    return "\n".join(lines)
