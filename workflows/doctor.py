"""``s4seg doctor``: what to run first on a new machine.

It reports the environment (torch, CUDA, cuDNN, the GPUs, numpy, ONNX Runtime and its providers,
tritonserver) and then runs every stage once, small, on the chosen device: each trainer for a few
iterations with a validation, a resume from the checkpoint just written, gated evaluation, export
with the parity check from the device-trained checkpoints, and the exported pipeline on the best
execution provider. One line per stage, pass or fail with the reason; exit code 1 on a failure.

It lives in ``export/`` because it drives training and export (an import along the pipeline); it
asks about tritonserver without importing the serving stage.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from s4seg.export.requests import ExportRequest

# Small enough for a couple of minutes on 2 CPU cores, real enough to cross every code path:
# loader workers, a validation, checkpoints, resume, the classifier, the gate, ONNX export.
# UniMatch V2 on the tiny ViT (issue 35): its preset, crops on the 14-pixel patch grid.
VIT_SMOKE_PRESET = "synthetic-vit-tiny"
VIT_SMOKE = {"unimatch-v2": ["data.crop_size=[56, 56]", "unimatch.unlabeled_batch_size=2"]}
SMOKE_SETTINGS = [
    "model.backbone_depth=18",
    "data.crop_size=[64, 64]",
    "data.num_workers=1",
    "train.batch_size=2",
    "train.iterations=4",
    "train.val_every=4",
    "train.log_every=2",
    "train.val_max_images=4",
    "mlmt.depth=18",
    "mlmt.input_size=64",
    "mlmt.labeled_batch_size=2",
    "mlmt.unlabeled_batch_size=4",
    "mlmt.burn_in_epochs=0.5",
    "mlmt.rampup_epochs=1",
]


@dataclass
class StageResult:
    stage: str
    passed: bool | None  # None: skipped, because a stage it needs failed
    seconds: float
    detail: str


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as error:  # a broken install is a finding, not a crash
        return f"not available ({type(error).__name__}: {error})".splitlines()[0]


def tritonserver_path() -> str | None:
    """The pip-installed tritonserver (inside nvidia-pytriton) or one on PATH."""
    try:
        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "tritonserver/bin/tritonserver"
        if binary.is_file():
            return str(binary)
    return shutil.which("tritonserver")


def environment() -> dict[str, Any]:
    import torch

    import s4seg
    from s4seg.workflows.bench.report import cpu_description

    env: dict[str, Any] = {
        "s4seg": f"{s4seg.__version__} at {Path(s4seg.__file__).parent}",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "cuda (torch build)": torch.version.cuda or "none (CPU build)",
        "cuda available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        env["cudnn"] = torch.backends.cudnn.version()
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            env[f"gpu {index}"] = (
                f"{props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability "
                f"{props.major}.{props.minor}"
            )
        env["bf16 supported"] = torch.cuda.is_bf16_supported()
    env["onnx"] = _version("onnx")
    env["onnxruntime"] = _version("onnxruntime")
    try:
        import onnxruntime

        env["onnxruntime providers"] = ", ".join(onnxruntime.get_available_providers())
    except Exception:  # reported by the version line above
        pass
    env["tritonserver"] = tritonserver_path() or "not found (serving needs nvidia-pytriton)"
    return env


class Smoke:
    """The stages, in order, in one work folder; a stage returns the detail of its pass line."""

    def __init__(self, device: str, work: Path) -> None:
        self.device, self.work = device, work
        self.results: list[StageResult] = []
        self.outputs: dict[str, Path] = {}

    def config(self, trainer: str, *extra: str):
        from s4seg.training.config import load_config

        return load_config(
            VIT_SMOKE_PRESET if trainer in VIT_SMOKE else "synthetic-quick",
            [
                *SMOKE_SETTINGS,
                *VIT_SMOKE.get(trainer, []),
                f"data.root={self.outputs['data']}",
                f"train.device={self.device}",
                f"train.out_dir={self.work / trainer}",
                *extra,
            ],
        )

    def run(self, stage: str, needs: tuple[str, ...], body: Callable[[], str]) -> None:
        missing = [n for n in needs if n not in self.outputs]
        if missing:
            self.results.append(StageResult(stage, None, 0.0, f"skipped: {missing[0]} failed"))
            return
        log = self.work / "logs" / f"{stage.replace(' ', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "w") as handle, contextlib.redirect_stderr(handle):
            try:
                detail, passed = body(), True
            except Exception as error:
                traceback.print_exc(file=handle)
                text = str(error).strip().splitlines()
                detail, passed = f"{type(error).__name__}: {text[0] if text else ''}", False
        self.results.append(StageResult(stage, passed, time.perf_counter() - start, detail))

    # -- the stages -------------------------------------------------------------------------------
    def data(self) -> str:
        from s4seg.training.data.synth import write_synthetic

        self.outputs["data"] = write_synthetic(
            self.work / "synth", seed=0, num_train=16, num_val=4, num_unlabeled=4, size=64
        )
        return "synthetic set: 16 train, 4 val, 4 unlabeled images of 64x64"

    def train(self, trainer: str) -> str:
        from s4seg.training.checkpoint import Checkpoint
        from s4seg.training.trainers import TRAINERS

        cfg = self.config(trainer)
        last, _ = TRAINERS[trainer].run(cfg, resume=None, log=_quiet)
        trained = Checkpoint.load(last)
        self.outputs[trainer] = last
        metrics = trained.metrics
        figure = (
            f"teacher mAP {100 * metrics['teacher_map']:.1f}"
            if "teacher_map" in metrics
            else f"val mIoU {100 * metrics['val_miou']:.1f}"
        )
        return f"{trained.iteration} iterations on {_device_of(cfg)}, {figure}"

    def resume(self) -> str:
        from s4seg.training.checkpoint import Checkpoint
        from s4seg.training.trainers import TRAINERS

        before = Checkpoint.load(self.outputs["baseline"], kind="segmenter").iteration
        cfg = self.config("baseline")
        last, _ = TRAINERS["baseline"].run(
            cfg, self.outputs["baseline"], ["train.iterations=6"], log=_quiet
        )
        done = Checkpoint.load(last).iteration
        if done != 6:
            raise RuntimeError(f"resumed run ended at iteration {done}, expected 6")
        return f"continued from iteration {before} to {done}"

    def evaluate(self) -> str:
        from s4seg.training.evaluation import EvaluationRequest, evaluate_checkpoint

        request = EvaluationRequest(
            str(self.outputs["s4gan"]),
            device=self.device,
            classifier=str(self.outputs["mlmt"]),
            max_images=4,
        )
        report, _ = evaluate_checkpoint(request)
        return (
            f"{report['images']} images: mIoU {100 * report['ungated']['miou']:.1f} ungated, "
            f"{100 * report['miou']:.1f} gated"
        )

    def export(self) -> str:
        from s4seg.export.exporter import export_models

        out = self.work / "export"
        manifest = export_models(
            ExportRequest(
                str(self.outputs["s4gan"]),
                str(self.outputs["mlmt"]),
                str(out),
                input_size=(64, 64),
                data=str(self.outputs["data"]),
                parity_images=4,
            ),
            log=_quiet,
        )
        self.outputs["export"] = out
        parity = manifest.parity
        assert parity is not None  # export measures it or fails
        return (
            f"4 ONNX graphs, parity on {parity.images} images: labels agree on "
            f"{100 * parity.label_agreement:.2f}%"
        )

    def onnx_pipeline(self) -> str:
        import numpy as np

        from s4seg.onnx_pipeline import OnnxPipeline

        best = OnnxPipeline.from_export(self.outputs["export"], device="auto")
        cpu = OnnxPipeline.from_export(self.outputs["export"], device="cpu")
        from s4seg.letterbox import Framing

        rng = np.random.default_rng(0)
        images, views, _ = Framing.of(best.manifest).batch(
            [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
        )
        best.run(images, views)  # warm-up (CUDA provider start-up)
        start = time.perf_counter()
        labels = best.run(images, views).labels
        seconds = time.perf_counter() - start
        agreement = float((labels == cpu.run(images, views).labels).mean())
        if agreement < 0.999:
            raise RuntimeError(f"{best.providers[0]} and CPU labels agree on {agreement:.4f}")
        return (
            f"{best.providers[0]}: 2 images in {1000 * seconds:.0f} ms, labels equal to the "
            f"CPU provider's on {100 * agreement:.2f}% of pixels"
        )

    def all(self) -> list[StageResult]:
        self.run("data", (), self.data)
        for trainer in ("baseline", "s4gan", "mlmt", "unimatch-v2"):
            self.run(f"train {trainer}", ("data",), partial(self.train, trainer))
        self.run("resume", ("baseline",), self.resume)
        self.run("evaluate", ("s4gan", "mlmt"), self.evaluate)
        self.run("export", ("s4gan", "mlmt"), self.export)
        self.run("onnx pipeline", ("export",), self.onnx_pipeline)
        return self.results


def _quiet(message: str) -> None:
    print(message, file=sys.stderr)  # into the stage's log file


def _device_of(cfg) -> str:
    from s4seg.training.runtime import resolve_device

    return str(resolve_device(cfg.train.device, int(os.environ.get("LOCAL_RANK", "0"))))


def format_table(results: list[StageResult]) -> str:
    width = max(len(r.stage) for r in results)
    lines = [f"{'stage':<{width}}  result  seconds  detail"]
    for r in results:
        verdict = "skip" if r.passed is None else ("pass" if r.passed else "FAIL")
        lines.append(f"{r.stage:<{width}}  {verdict:<6}  {r.seconds:7.1f}  {r.detail}")
    return "\n".join(lines)


def doctor(env_only: bool, out: Path | None, device: str) -> int:
    """The environment, then (unless ``env_only``) the smoke test of every stage on
    ``device``, in ``out`` (kept) or a temporary folder."""
    env = environment()
    width = max(len(k) for k in env)
    print("environment")
    for key, value in env.items():
        print(f"  {key:<{width}}  {value}")
    if env_only:
        return 0
    keep = out
    work = keep or Path(tempfile.mkdtemp(prefix="s4seg-doctor-"))
    if keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
    print(f"\nsmoke test on device '{device}' (work folder {work}):", flush=True)
    start = time.perf_counter()
    try:
        results = Smoke(device, work).all()
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - start
    print(format_table(results))
    failed = [r for r in results if r.passed is not True]
    print(f"\n{len(results) - len(failed)} of {len(results)} stages passed in {total:.0f} s")
    if failed and keep is None:
        print("rerun with --out DIR to keep each stage's log")
    if keep is not None:
        report = {
            "environment": env,
            "device": device,
            "seconds": total,
            "stages": [asdict(r) for r in results],
        }
        (keep / "doctor.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"report: {keep / 'doctor.json'}, logs: {keep / 'logs'}")
    return 1 if failed else 0
