"""``s4seg bench train``: seconds per training iteration of DeepLabv2 per backbone depth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from s4seg import IGNORE_INDEX
from s4seg.benchmarks import cpu_description, provenance, update_section

from .models import DeepLabV2, upsample_logits
from .runtime import setup_runtime


def machine_description() -> str:
    text = f"{cpu_description()}, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def time_iterations(
    depth: int,
    batch: int,
    crop: int,
    iterations: int,
    warmup: int,
    device: str,
    amp: str,
    channels_last: str,
) -> dict:
    runtime = setup_runtime(device, amp, channels_last)
    torch.manual_seed(0)
    model = DeepLabV2(21, depth).to(runtime.device, memory_format=runtime.memory_format())
    optimizer = torch.optim.SGD(model.param_groups(2.5e-4, 10), lr=2.5e-4, momentum=0.9)
    images = torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
        memory_format=runtime.memory_format()
    )
    masks = torch.randint(0, 21, (batch, crop, crop), device=runtime.device)
    masks[:, :8] = IGNORE_INDEX
    if runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        with runtime.autocast():
            logits = model(images)
        loss = F.cross_entropy(
            upsample_logits(logits.float(), (crop, crop)), masks, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if runtime.device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    sync()
    seconds = (time.perf_counter() - start) / iterations
    peak = torch.cuda.max_memory_allocated() / 2**30 if runtime.device.type == "cuda" else None
    return {
        "depth": depth,
        "device": str(runtime.device),
        "precision": ("bf16" if runtime.amp_dtype else "fp32")
        + (" + channels_last" if runtime.channels_last else ""),
        "s_per_it": seconds,
        "it_per_s": 1 / seconds,
        "peak_gib": peak,
    }


def _cases(args: argparse.Namespace) -> list[tuple[int, str, str]]:
    on_cuda = args.device.startswith("cuda") or (
        args.device == "auto" and torch.cuda.is_available()
    )
    cases = [(depth, "off", "off") for depth in args.depths]
    if on_cuda and 101 in args.depths:
        cases.append((101, "bf16", "on"))
    return cases


def bench_train(args: argparse.Namespace) -> list[dict]:
    rows = []
    for depth, amp, channels_last in _cases(args):
        print(
            f"bench train: ResNet-{depth}, {amp=}, {channels_last=} ...",
            file=sys.stderr,
            flush=True,
        )
        row = time_iterations(
            depth,
            args.batch_size,
            args.crop,
            args.iterations,
            args.warmup,
            args.device,
            amp,
            channels_last,
        )
        rows.append(row)
        print(f"  {row['s_per_it']:.3f} s/it ({row['it_per_s']:.3f} it/s)", file=sys.stderr)
    fp32 = next((r for r in rows if r["depth"] == 101 and r["precision"] == "fp32"), None)
    lines = [
        *provenance(machine_description()),
        f"Setting: DeepLabv2 (OS 8, ASPP 6/12/18/24), {args.crop}x{args.crop}, batch "
        f"{args.batch_size}, SGD step included; {args.warmup} warm-up + {args.iterations} timed "
        "iterations per row.",
        "",
        "| backbone | device | precision | s/iteration | iterations/s | peak GPU memory "
        "| vs fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row['it_per_s'] / fp32['it_per_s']:.2f}x" if fp32 and row["depth"] == 101 else ""
        peak = f"{row['peak_gib']:.1f} GiB" if row["peak_gib"] is not None else "n/a"
        lines.append(
            f"| ResNet-{row['depth']} | {row['device']} | {row['precision']} | "
            f"{row['s_per_it']:.3f} | {row['it_per_s']:.3f} | {peak} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        device_tag = "gpu" if any(r["device"].startswith("cuda") for r in rows) else "cpu"
        update_section(Path(args.write), f"train-{device_tag}", table)
    return rows
