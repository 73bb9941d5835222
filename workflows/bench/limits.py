"""How far the model alone is from the machine: FLOPs per image (torch's flop counter on the
export's architectures, randomly initialised: the count does not depend on the weights) and the
CPU's peak, estimated from its cores, nominal clock and vector units (a core that boosts above the
nominal clock /proc/cpuinfo shows can pass "100% of peak")."""

from __future__ import annotations

import os
from pathlib import Path

from s4seg.engines import cpu_flags
from s4seg.manifest import Manifest


def network_flops(manifest: Manifest) -> dict[str, float]:
    """FLOPs (2 per multiply-add, convolutions and matrix products) of one image through each
    network at the served size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from s4seg.training.models import segmenter_from_arch
    from s4seg.training.models.classifier import multilabel_resnet

    h, w = manifest.input_size
    side = manifest.classifier_view_size
    networks: dict[str, tuple[torch.nn.Module, tuple[int, ...]]] = {
        "segmenter": (segmenter_from_arch(manifest.sources["segmenter"].arch), (1, 3, h, w))
    }
    classifier = manifest.sources.get("classifier")
    if classifier is not None:
        arch = classifier.arch
        networks["classifier"] = (
            multilabel_resnet(arch["num_classes"], arch["depth"]),
            (1, 3, side, side),
        )
    flops = {}
    for name, (module, shape) in networks.items():
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module.eval()(torch.zeros(shape))
        flops[name] = float(counter.get_total_flops())
    return flops


def clock_ghz() -> float | None:
    """The highest 'cpu MHz' /proc/cpuinfo reports (a VM shows its nominal clock)."""
    try:
        mhz = [
            float(line.split(":", 1)[1])
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("cpu MHz")
        ]
    except (OSError, ValueError):
        return None
    return max(mhz) / 1000 if mhz else None


def cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo ('unknown' where it can not be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def vendor() -> str:
    return cpuinfo("vendor_id")


def half_width_avx512(flags: frozenset[str]) -> bool:
    """AVX-512 on 256-bit halves: AMD Zen 4 (family 25); Zen 5 (family 26) has 512-bit pipes."""
    family = cpuinfo("cpu family")
    amd = vendor() == "AuthenticAMD"
    return "avx512f" in flags and amd and family.isdigit() and int(family) < 26


def peak_gflops(precision: str) -> tuple[float | None, str]:
    """An estimate of the CPU's peak GFLOP/s at ``precision``, and how it was made: cores x
    nominal clock x FLOPs per cycle (two FMA pipes; AVX-512 on AMD Zen 4 runs on 256-bit halves,
    on Zen 5 (cpu family 26, BENCHMARKS' EPYC) on full 512-bit pipes; BF16
    dot products twice FP32's rate, INT8 VNNI four times). Each vCPU counts as a core: an upper
    bound where vCPUs are hyperthreads."""
    flags, ghz, cores = cpu_flags(), clock_ghz(), os.cpu_count() or 1
    if ghz is None:
        return None, "clock unknown"
    wide = "avx512f" in flags
    lanes = 8 if half_width_avx512(flags) or not wide else 16
    if not wide and "avx2" not in flags:
        lanes = 4
    per_cycle = 2 * lanes * 2  # two FMA pipes x lanes x (multiply + add)
    factor, unit = 1, "FP32 FMA"
    if precision == "bf16" and flags & {"avx512_bf16", "amx_bf16"}:
        factor, unit = 2, "BF16 dot products"
    elif precision == "int8" and flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        factor, unit = 4, "INT8 VNNI"
    peak = cores * ghz * per_cycle * factor
    how = (
        f"{cores} vCPU x {ghz:.2f} GHz nominal x {per_cycle * factor} FLOP/cycle ({unit}, "
        f"{lanes * 32}-bit pipes x 2; cpu family {cpuinfo('cpu family')})"
    )
    return peak, how
