"""The CUDA code paths, run on the CPU behind a fake CUDA runtime (tests/fake_cuda.py).

The first GPU run of every trainer crashed in ``setup_runtime`` (``set_device`` got
``torch.device("cuda")`` without an index); these tests would have caught it, and catch what the
trainers, evaluation and the benchmark hand to the device boundary.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_cuda import install
from helpers import TINY_TRAINING

from s4seg.errors import ConfigError
from s4seg.training.checkpoint import Checkpoint
from s4seg.training.runtime import resolve_device, setup_runtime
from s4seg.workflows.cli import main


@pytest.mark.parametrize(
    ("device", "expected"), [("cuda", ("cuda", 0)), ("auto", ("cuda", 0)), ("cuda:1", ("cuda", 1))]
)
def test_setup_runtime_hands_set_device_an_indexed_gpu(monkeypatch, device, expected) -> None:
    fake = install(monkeypatch, count=2)
    runtime = setup_runtime(device)
    assert runtime.device == torch.device(*expected)
    assert [torch.device(d) for d in fake.set_device_calls] == [torch.device(*expected)]
    assert runtime.amp_dtype == torch.bfloat16 and runtime.channels_last
    assert torch.backends.cudnn.benchmark  # training crops: one shape, tune once
    setup_runtime(device, fixed_shapes=False)
    assert not torch.backends.cudnn.benchmark


def test_each_torchrun_process_takes_its_local_rank(monkeypatch) -> None:
    import torch.distributed as dist

    fake = install(monkeypatch, count=4)
    groups = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: groups.append((a, k)))
    for key, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "3"}.items():
        monkeypatch.setenv(key, value)
    runtime = setup_runtime("cuda")
    assert runtime.device == torch.device("cuda", 3) and runtime.distributed
    assert [torch.device(d) for d in fake.set_device_calls] == [torch.device("cuda", 3)]
    assert groups == [(("nccl",), {"device_id": torch.device("cuda", 3)})]
    assert resolve_device("cuda", local_rank=3, world_size=4) == torch.device("cuda", 3)
    assert resolve_device("auto", local_rank=2, world_size=4) == torch.device("cuda", 2)
    with pytest.raises(ConfigError, match="every process on GPU 1"):
        resolve_device("cuda:1", local_rank=0, world_size=4)


def test_device_errors_name_the_problem(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="not one of auto, cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    install(monkeypatch, count=1)
    with pytest.raises(ConfigError, match="needs GPU 3, but this machine shows 1"):
        resolve_device("cuda:3")


def _train(trainer: str, root: Path, out: Path, iterations: int, *extra: str) -> int:
    settings = [
        *TINY_TRAINING,
        f"data.root={root}",
        f"train.iterations={iterations}",
        "train.val_every=2",
        "train.device=cuda",
        f"train.out_dir={out}",
        *extra,
    ]
    return main(
        ["train", trainer, "--config", "synthetic-quick", *[f"--set={s}" for s in settings]]
    )


@pytest.mark.parametrize("trainer", ["baseline", "s4gan", "mlmt"])
def test_trainers_train_validate_and_resume_on_cuda(
    monkeypatch, synth_root: Path, tmp_path: Path, trainer: str
) -> None:
    fake = install(monkeypatch)
    out = tmp_path / trainer
    assert _train(trainer, synth_root, out, 2) == 0
    assert [torch.device(d) for d in fake.set_device_calls] == [torch.device("cuda", 0)]
    assert fake.moves and fake.cuda_indices() == {0}  # inputs and models went to cuda:0
    assert ("cuda", torch.bfloat16) in fake.autocasts  # the train.amp=auto default on a GPU
    # Resume: the checkpoint is read onto the CPU first (it may come from another machine).
    fake.load_map_locations.clear()
    assert (
        main(
            [
                "train",
                trainer,
                "--config",
                "synthetic-quick",
                "--resume",
                str(out / "last.pt"),
                "--set",
                "train.iterations=3",
            ]
        )
        == 0
    )
    assert fake.load_map_locations == ["cpu"]
    assert Checkpoint.load(out / "last.pt").iteration == 3


def test_evaluate_on_cuda_runs_fp32_without_autotuning(
    monkeypatch, tiny_checkpoint: Path, tiny_classifier: Path, tmp_path: Path
) -> None:
    fake = install(monkeypatch)
    code = main(
        [
            "evaluate",
            "--segmenter",
            str(tiny_checkpoint),
            "--classifier",
            str(tiny_classifier),
            "--device",
            "cuda",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert fake.cuda_indices() == {0}
    assert not torch.backends.cudnn.benchmark  # images of many sizes: no per-shape autotuning
    assert all(dtype is None for _, dtype in fake.autocasts)


def test_bench_train_times_every_precision_on_cuda(monkeypatch, tmp_path: Path) -> None:
    fake = install(monkeypatch)
    out = tmp_path / "BENCH.md"
    code = main(
        [
            "bench",
            "train",
            "--device",
            "cuda",
            "--trainer",
            "s4gan",
            "--depths",
            "18",
            "--crop",
            "32",
            "--batch-size",
            "2",
            "--iterations",
            "2",
            "--warmup",
            "1",
            "--write",
            str(out),
        ]
    )
    assert code == 0
    text = out.read_text()
    assert "<!-- bench:train-gpu-s4gan -->" in text
    for precision in ("fp32", "fp32+cl", "bf16", "bf16+cl"):
        assert f"| cuda:0 | {precision} |" in text
    assert ("cuda", torch.bfloat16) in fake.autocasts
    assert fake.cuda_indices() == {0}
