"""``s4seg bench train``: a trainer's training step (DeepLabv2, s4GAN, UniMatch, UniMatch V2)
per backbone and precision.

A benchmark, not a probe: cuDNN autotuning and the warm-up happen outside the timed window, every
timed iteration is measured on its own (GPU synchronised), and the table reports the median with
its spread (p10-p90), peak GPU memory and an MFU estimate (FLOPs counted by PyTorch's flop counter
over one step, against the card's dense peak for that precision).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from s4seg.errors import ConfigError
from s4seg.training.runtime import Runtime, setup_runtime
from s4seg.workflows.bench.report import cpu_description, provenance, time_calls, update_section
from s4seg.workflows.bench.train_steps import STEPS, VIT_DEFAULTS, VIT_TRAINERS, backbone_name

PRECISIONS = {  # name -> (train.amp, train.channels_last)
    "fp32": ("off", "off"),
    "fp32+cl": ("off", "on"),
    "bf16": ("bf16", "off"),
    "bf16+cl": ("bf16", "on"),
}

# Dense peak FLOP/s per card (the vendors' datasheets, no sparsity): bf16 tensor cores, and TF32,
# which is what cuDNN uses for fp32 convolutions by default (torch.backends.cudnn.allow_tf32).
PEAK_FLOPS = {
    "H200": {"bf16": 989e12, "fp32": 494e12},
    "H100": {"bf16": 989e12, "fp32": 494e12},
    "A100": {"bf16": 312e12, "fp32": 156e12},
    "L40S": {"bf16": 362e12, "fp32": 183e12},
}


def machine_description() -> str:
    text = f"{cpu_description()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        text += (
            f", GPU {torch.cuda.get_device_name()} ({props.total_memory / 2**30:.0f} GiB), "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
    return text


def peak_flops(runtime: Runtime) -> float | None:
    if not runtime.on_cuda:
        return None
    name = torch.cuda.get_device_name(runtime.device)
    for card, peaks in PEAK_FLOPS.items():
        if card in name:
            return peaks["bf16" if runtime.amp_dtype is not None else "fp32"]
    return None


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one step (forward and backward), counted by PyTorch on the real operators."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def time_case(  # noqa: PLR0913 (one benchmark case, by keyword)
    trainer: str,
    depth: int | str,
    precision: str,
    *,
    device: str,
    batch_size: int,
    crop: int,
    warmup: int,
    iterations: int,
    compile_model: bool = False,
) -> dict:
    amp, channels_last = PRECISIONS[precision]
    runtime = setup_runtime(device, amp, channels_last)
    torch.manual_seed(0)
    step = STEPS[trainer](runtime, depth, batch_size, crop)
    if compile_model:
        step = torch.compile(step)
    if runtime.on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(runtime.device)
    # Warm-up outside the window: cuDNN autotuning (benchmark mode), torch.compile, allocator.
    time_calls(step, 0, warmup, synchronize=runtime.synchronize)
    flops = count_flops(step) if not compile_model else None
    runtime.synchronize()
    times = time_calls(step, iterations, synchronize=runtime.synchronize)
    median = statistics.median(times)
    deciles = statistics.quantiles(times, n=10) if len(times) >= 2 else [median] * 9
    peak = peak_flops(runtime)
    images = batch_size * (2 if trainer in ("s4gan", "unimatch", "unimatch-v2") else 1)
    return {
        "trainer": trainer,
        "depth": depth,
        "device": str(runtime.device),
        "precision": precision + (" + compile" if compile_model else ""),
        "median_s": median,
        "p10_s": deciles[0],
        "p90_s": deciles[-1],
        "images_per_s": images / median,
        "peak_gib": (
            torch.cuda.max_memory_allocated(runtime.device) / 2**30 if runtime.on_cuda else None
        ),
        "tflop_per_step": flops / 1e12 if flops else None,
        "mfu": flops / median / peak if (flops and peak) else None,
    }


@dataclass
class TrainBenchRequest:
    """``s4seg bench train``'s options."""

    trainer: str
    depths: list[int] | None  # ResNet depths; a ViT trainer's encoders are ``backbones``
    precisions: list[str] | None
    compile: bool
    batch_size: int
    crop: int | None  # None: 321 (ResNets), 518 (ViTs)
    iterations: int | None
    warmup: int | None
    device: str
    write: str | None
    backbones: list[str] | None = None


def default_cases(request: TrainBenchRequest, on_cuda: bool) -> list[tuple[int | str, str, bool]]:
    depths: list[int | str] = list(request.depths or ([101] if on_cuda else [18, 50, 101]))
    if request.trainer in VIT_TRAINERS:
        depths = list(request.backbones or VIT_DEFAULTS["cuda" if on_cuda else "cpu"])
        if request.crop is None or request.crop % 14:
            raise ConfigError(f"--crop {request.crop}: a ViT step needs a multiple of 14 (518)")
    precisions = request.precisions or (list(PRECISIONS) if on_cuda else ["fp32"])
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ConfigError(f"unknown precision {unknown}: choose from {', '.join(PRECISIONS)}")
    cases = [(depth, precision, False) for depth in depths for precision in precisions]
    if request.compile:
        cases += [(depth, precision, True) for depth in depths for precision in precisions]
    return cases


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def bench_train(request: TrainBenchRequest) -> list[dict]:
    runtime = setup_runtime(request.device, "off", "off")
    on_cuda = runtime.on_cuda
    request.crop = request.crop or (518 if request.trainer in VIT_TRAINERS else 321)
    request.iterations = request.iterations or (50 if on_cuda else 3)
    request.warmup = request.warmup if request.warmup is not None else (10 if on_cuda else 1)
    rows = []
    for depth, precision, compiled in default_cases(request, on_cuda):
        compiled_tag = " + compile" if compiled else ""
        label = f"{request.trainer} {backbone_name(depth)} {precision}{compiled_tag}"
        print(f"bench train: {label} ...", file=sys.stderr, flush=True)
        row = time_case(
            request.trainer,
            depth,
            precision,
            device=request.device,
            batch_size=request.batch_size,
            crop=request.crop,
            warmup=request.warmup,
            iterations=request.iterations,
            compile_model=compiled,
        )
        rows.append(row)
        print(
            f"  median {1000 * row['median_s']:.1f} ms/it (p10 {1000 * row['p10_s']:.1f}, "
            f"p90 {1000 * row['p90_s']:.1f})",
            file=sys.stderr,
            flush=True,
        )
    baseline = {r["depth"]: r for r in rows if r["precision"] == "fp32"}
    s4gan = request.trainer in ("s4gan", "unimatch-v2")  # a labeled and an unlabeled batch
    what = {
        "s4gan": "s4GAN step (S on labeled + unlabeled batch in one forward, CE + FM + ST, D step)",
        "unimatch-v2": "UniMatch V2 step on the DPT ViT (teacher pass, labeled pass, two strong "
        "views with complementary dropout, AdamW, EMA update; random weights)",
    }.get(request.trainer, "DeepLabv2 step (forward, CE, backward, SGD)")
    lines = [
        *provenance(machine_description()),
        f"Setting: {what}, {request.crop}x{request.crop}, batch {request.batch_size}"
        f"{' labeled + ' + str(request.batch_size) + ' unlabeled' if s4gan else ''}"
        f"; {request.warmup} warm-up + {request.iterations} timed iterations per row, each timed "
        "on "
        "its own; on a GPU, cuDNN benchmark mode is on (as in training).",
        "",
        "| backbone | device | precision | median ms/it | p10-p90 ms | images/s "
        "| peak GPU memory | TFLOP/step | MFU | vs fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = baseline.get(row["depth"])
        ratio = f"{base['median_s'] / row['median_s']:.2f}x" if base else ""
        peak = "n/a" if row["peak_gib"] is None else f"{row['peak_gib']:.1f} GiB"
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.0f}%"
        lines.append(
            f"| {backbone_name(row['depth'])} | {row['device']} | {row['precision']} | "
            f"{1000 * row['median_s']:.1f} | {1000 * row['p10_s']:.1f}-{1000 * row['p90_s']:.1f}"
            f" | {row['images_per_s']:.1f} | {peak} | {_cell(row['tflop_per_step'], '.2f')} | "
            f"{mfu} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    if request.write:
        device_tag = "gpu" if on_cuda else "cpu"
        suffix = f"-{request.trainer}" if request.trainer in ("s4gan", "unimatch-v2") else ""
        name = f"train-{device_tag}{suffix}"
        update_section(Path(request.write), name, table)
    return rows
