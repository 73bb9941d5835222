"""``s4seg bench train``: the training step of DeepLabv2 (or of s4GAN) per backbone and precision.

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
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from s4seg import IGNORE_INDEX
from s4seg.errors import ConfigError
from s4seg.training.config import GanConfig
from s4seg.training.losses import discriminator_loss, minmax01, one_hot_with_ignore
from s4seg.training.models import DeepLabV2, upsample_logits
from s4seg.training.models.discriminator import Discriminator
from s4seg.training.runtime import Runtime, setup_runtime
from s4seg.workflows.bench.report import cpu_description, provenance, time_calls, update_section

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


def segmenter_step(runtime: Runtime, depth: int, batch: int, crop: int) -> Callable[[], None]:
    """The baseline's step: forward, cross-entropy on upsampled logits, backward, SGD."""
    model = runtime.place(DeepLabV2(21, depth))
    optimizer = torch.optim.SGD(model.param_groups(2.5e-4, 10), lr=2.5e-4, momentum=0.9)
    images = torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
        memory_format=runtime.memory_format()
    )
    masks = torch.randint(0, 21, (batch, crop, crop), device=runtime.device)
    masks[:, :8] = IGNORE_INDEX

    def step() -> None:
        with runtime.autocast():
            logits = model(images)
        loss = F.cross_entropy(
            upsample_logits(logits.float(), (crop, crop)), masks, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def s4gan_step(runtime: Runtime, depth: int, batch: int, crop: int) -> Callable[[], None]:
    """The s4GAN trainer's step (training/s4gan.py): S on labeled + unlabeled in one forward,
    cross-entropy + feature matching + self-training, then the D step on detached maps."""
    from s4seg.training.s4gan import segmenter_gan_terms

    classes, gan = 21, GanConfig()
    model = runtime.place(DeepLabV2(classes, depth))
    discriminator = Discriminator(classes).to(runtime.device)
    optimizer = torch.optim.SGD(model.param_groups(2.5e-4, 10), lr=2.5e-4, momentum=0.9)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=gan.d_lr, betas=gan.d_betas)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
            memory_format=runtime.memory_format()
        )

    x_l, x_u, x_r = images(), images(), images()
    y_l = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)
    y_r = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)

    def step() -> None:
        with runtime.autocast():
            logits = model(torch.cat([x_l, x_u]))
        logits = upsample_logits(logits.float(), (crop, crop))
        logits_l, logits_u = logits[:batch], logits[batch:]
        images_u, images_r = minmax01(x_u), minmax01(x_r)
        real_maps = one_hot_with_ignore(y_r, classes)
        terms = segmenter_gan_terms(discriminator, logits_u, images_u, real_maps, images_r, gan)
        loss = F.cross_entropy(logits_l, y_l, ignore_index=IGNORE_INDEX) + terms.loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        d_logit, _ = discriminator(
            torch.cat([logits_u.detach().softmax(1), real_maps]), torch.cat([images_u, images_r])
        )
        loss_d = discriminator_loss(d_logit[batch:], d_logit[:batch])
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()

    return step


def unimatch_step(runtime: Runtime, depth: int, batch: int, crop: int) -> Callable[[], None]:
    """The UniMatch trainer's step (training/unimatch.py) on DeepLabv3+ (its recipe's model):
    the eval-mode pass on u', two strong views with CutMix, one forward of u's weak view (and
    its perturbed features), x and both strong views, the four losses, SGD."""
    from s4seg.training.config import UniMatchConfig
    from s4seg.training.models import DeepLabV3Plus
    from s4seg.training.unimatch import confident_ce, strong_views

    classes, u = 21, UniMatchConfig()
    model = runtime.place(DeepLabV3Plus(classes, depth))
    optimizer = torch.optim.SGD(model.param_groups(1e-3, 10), lr=1e-3, momentum=0.9)
    mean = torch.tensor([0.485, 0.456, 0.406], device=runtime.device).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=runtime.device).view(3, 1, 1)

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, device=runtime.device).contiguous(
            memory_format=runtime.memory_format()
        )

    x, u_w, m_w = images(), images(), images()
    y = torch.randint(0, classes, (batch, crop, crop), device=runtime.device)
    pad = torch.zeros(batch, crop, crop, dtype=torch.bool, device=runtime.device)

    def step() -> None:
        model.eval()
        with torch.no_grad(), runtime.autocast():
            conf_m, label_m = upsample_logits(model(m_w).float(), (crop, crop)).softmax(1).max(1)
        model.train()
        s1, s2 = (strong_views(u_w, m_w, mean, std, u) for _ in range(2))
        with runtime.autocast():
            logits, fp = model(torch.cat([u_w, x, s1.images, s2.images]), perturbed=batch)
        logits = upsample_logits(logits.float(), (crop, crop))
        fp = upsample_logits(fp.float(), (crop, crop))
        conf_w, label_w = logits[:batch].detach().softmax(1).max(1)
        loss = F.cross_entropy(logits[batch : 2 * batch], y, ignore_index=IGNORE_INDEX)
        for i, view in enumerate((s1, s2)):
            part = logits[(2 + i) * batch : (3 + i) * batch]
            labels = torch.where(view.boxes, label_m, label_w)
            confidence = torch.where(view.boxes, conf_m, conf_w)
            loss = loss + 0.25 * confident_ce(part, labels, confidence, pad, u.threshold)
        loss = (loss + 0.5 * confident_ce(fp, label_w, conf_w, pad, u.threshold)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


STEPS = {"segmenter": segmenter_step, "s4gan": s4gan_step, "unimatch": unimatch_step}


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs of one step (forward and backward), counted by PyTorch on the real operators."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def time_case(  # noqa: PLR0913 (one benchmark case, by keyword)
    trainer: str,
    depth: int,
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
    images = batch_size * (2 if trainer in ("s4gan", "unimatch") else 1)
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
    depths: list[int] | None
    precisions: list[str] | None
    compile: bool
    batch_size: int
    crop: int
    iterations: int | None
    warmup: int | None
    device: str
    write: str | None


def default_cases(request: TrainBenchRequest, on_cuda: bool) -> list[tuple[int, str, bool]]:
    depths = request.depths or ([101] if on_cuda else [18, 50, 101])
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
    request.iterations = request.iterations or (50 if on_cuda else 3)
    request.warmup = request.warmup if request.warmup is not None else (10 if on_cuda else 1)
    rows = []
    for depth, precision, compiled in default_cases(request, on_cuda):
        label = f"{request.trainer} ResNet-{depth} {precision}{' + compile' if compiled else ''}"
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
    s4gan = request.trainer == "s4gan"
    what = (
        "s4GAN step (S on labeled + unlabeled batch in one forward, CE + FM + ST, D step)"
        if s4gan
        else "DeepLabv2 step (forward, CE, backward, SGD)"
    )
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
            f"| ResNet-{row['depth']} | {row['device']} | {row['precision']} | "
            f"{1000 * row['median_s']:.1f} | {1000 * row['p10_s']:.1f}-{1000 * row['p90_s']:.1f}"
            f" | {row['images_per_s']:.1f} | {peak} | {_cell(row['tflop_per_step'], '.2f')} | "
            f"{mfu} | {ratio} |"
        )
    table = "\n".join(lines)
    print(table)
    if request.write:
        device_tag = "gpu" if on_cuda else "cpu"
        name = f"train-{device_tag}" + ("-s4gan" if request.trainer == "s4gan" else "")
        update_section(Path(request.write), name, table)
    return rows
