"""``s4seg bench serve``'s results as BENCHMARKS' section (measured apart, rendered here)."""

from __future__ import annotations

import statistics

from .limits import peak_gflops
from .report import cpu_description, percentile, provenance, segmenter_name
from .serve_alone import ModelAlone
from .serve_callers import IN_PROCESS
from .serve_results import ServeResults


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 in ms."""
    return statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000


def render(results: ServeResults) -> str:
    """BENCHMARKS' section: the model alone, the requests, where the CPU goes, the hop alone,
    latency by input size and Triton's steps (each part present when measured)."""
    parts = (model_alone, requests, cpu_use, hop_alone, latency_by_size, triton_steps)
    return "\n".join(line for part in parts for line in part(results))


def served_best(results: ServeResults) -> tuple[ModelAlone, ModelAlone]:
    """The fastest configuration of the served engine, and the fastest of all (the limit)."""
    alone = results.alone
    best = max((r for r in alone if r.engine == results.served_engine), key=lambda r: r.rate)
    return best, max(alone, key=lambda row: row.rate)


def model_alone(results: ServeResults) -> list[str]:
    request, manifest, alone, flops = (
        results.request,
        results.manifest,
        results.alone,
        results.flops,
    )
    best, limit = served_best(results)
    per_image = sum(flops.values())
    h, w = manifest.input_size
    lines = [
        *provenance(f"{cpu_description()} (client, gateway, Triton and models share it)"),
        f"Model: version {results.version} of {request.repository} "
        f"({segmenter_name(manifest.sources['segmenter'].arch)}, served {h}x{w}, "
        f"{manifest.num_classes} classes); {results.images} images cycled.",
        "",
        "**Model alone** (segmenter + classifier sessions, nothing else; "
        f"{request.windows} windows of {request.window:g} s after a warm-up; median, min-max). "
        f"Served with {results.served_engine.name}; FLOPs per image {per_image / 1e9:.2f} G "
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
    return lines


def requests(results: ServeResults) -> list[str]:
    best, limit = served_best(results)
    in_proc = {c: r for n, c, r, _ in results.rows if n.startswith("in-process")}
    lines = [
        "",
        "**Requests** (per request: decode, letterbox, segment gated, map back at the image's "
        "size, palette PNG; in-process and the gateway decode JPEGs at reduced scale alike):",
        "",
        "| target | concurrency | requests/s | p50 ms | p99 ms | p99/p50 | vs in-process | "
        "vs model alone (served engine) | vs the limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, concurrency, rate, latencies in sorted(results.rows, key=lambda r: r[1]):
        p50, p99 = percentiles(latencies)
        lines.append(
            f"| {name} | {concurrency} | {rate:.1f} | {p50:.0f} | {p99:.0f} | {p99 / p50:.2f} | "
            f"{rate / in_proc[concurrency]:.2f}x | {rate / best.rate:.2f}x | "
            f"{rate / limit.rate:.2f}x |"
        )
    alone = [lat for n, c, _, lat in results.rows if n == IN_PROCESS and c == 1]
    if results.quality_seconds is not None and alone:
        share = results.quality_seconds / statistics.median(alone[0])
        lines += [
            "",
            f"Each answer's quality (`s4seg/quality.py`, in every gateway answer): "
            f"{1000 * results.quality_seconds:.2f} ms, timed alone, {100 * share:.1f}% of an "
            "in-process request at concurrency 1.",
        ]
        if results.uncertainty_seconds is not None:
            extra = results.uncertainty_seconds / statistics.median(alone[0])
            lines[-1] += (
                f" With `uncertainty=true`, the map and its PNG add "
                f"{1000 * results.uncertainty_seconds:.2f} ms ({100 * extra:.1f}%)."
            )
    return lines


def cpu_use(results: ServeResults) -> list[str]:
    cpu = results.cpu
    if not cpu:
        return []
    labels = sorted({k for (n, _), used in cpu.items() if n != IN_PROCESS for k in used})
    lines = [
        "",
        "**Where the CPU goes** (CPU ms per request, from /proc, over each run above: the "
        "client is this benchmark's process, the rest `s4seg serve` and its children; "
        "in-process: the whole pipeline in this process):",
        "",
        f"| concurrency | {' | '.join(labels)} | all (gateway path) | in-process |",
        "|---" * (len(labels) + 3) + "|",
    ]
    for concurrency in results.request.concurrency:
        used = cpu.get((results.default, concurrency), {})
        in_process = cpu.get((IN_PROCESS, concurrency), {})
        in_process_ms = in_process.get(IN_PROCESS, float("nan"))
        cells = " | ".join(f"{used.get(k, 0):.1f}" for k in labels)
        total = sum(used.values())
        lines.append(f"| {concurrency} | {cells} | {total:.1f} | {in_process_ms:.1f} |")
    return lines


def hop_alone(results: ServeResults) -> list[str]:
    if not results.hops:
        return []
    lines = [
        "",
        f"**The hop alone**: the ensemble called directly with the served-size image tensor "
        f"(no decode, no map back), concurrency {results.request.hop_concurrency}, gated scores "
        "back:",
        "",
        "| protocol | requests/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name, rate, latencies in results.hops:
        p50, p99 = percentiles(latencies)
        lines.append(f"| {name} | {rate:.1f} | {p50:.0f} | {p99:.0f} |")
    return lines


def latency_by_size(results: ServeResults) -> list[str]:
    if not results.by_size:
        return []
    lines = [
        "",
        f"**Latency by input size** (the default gateway, concurrency 1, JPEG in, "
        f"{results.request.size_repeats} requests after one warm-up):",
        "",
        "| input | output | p50 ms | p90 ms | response KiB |",
        "|---|---|---|---|---|",
    ]
    for name, fmt, p50, p90, kib in results.by_size:
        lines.append(f"| {name} | {fmt} | {p50:.0f} | {p90:.0f} | {kib:.0f} |")
    return lines


def triton_steps(results: ServeResults) -> list[str]:
    if not results.stats:
        return []
    lines = [
        "",
        "Triton, per step over the default gateway's run (means per request):",
        "",
        "| step | queue ms | compute ms | executions |",
        "|---|---|---|---|",
    ]
    for step, (queue, compute, executions) in results.stats.items():
        lines.append(f"| {step} | {queue:.1f} | {compute:.1f} | {executions} |")
    return lines
