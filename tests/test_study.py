"""``s4seg study`` (issue 22): budgets, the statistics of the table, and a real tiny study that is
killed with SIGKILL, resumed without redoing finished cells, run cell by cell, and reported."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAINING

from s4seg.errors import ConfigError, DatasetError
from s4seg.layouts import open_layout
from s4seg.training.data.split import make_budget_split
from s4seg.workflows.cli import main
from s4seg.workflows.study import Cell, StudySpec, summarise, verdict


def test_budgets_as_ratio_count_or_id_file_nest_by_seed(synth_root: Path, tmp_path: Path) -> None:
    layout = open_layout(synth_root)
    train = layout.default_train_split
    total = len(layout.samples(train))
    small = make_budget_split(layout, train, "3", seed=5)
    eighth = make_budget_split(layout, train, "1/8", seed=5)
    assert len(small.labeled) == 3 and len(eighth.labeled) == total // 8
    # One seed: a smaller budget is a subset of a larger one (label-efficiency curves).
    assert set(small.labeled) <= set(eighth.labeled)
    assert set(small.labeled) != set(make_budget_split(layout, train, "3", seed=6).labeled)
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# a published split\n{eighth.labeled[1]}\n{eighth.unlabeled[0]}\n")
    listed = make_budget_split(layout, train, str(ids), seed=0)
    assert listed.labeled == [eighth.labeled[1], eighth.unlabeled[0]]
    assert listed.ratio == f"2/{total}" and len(listed.unlabeled) == total - 2
    ids.write_text("no_such_image\n")
    with pytest.raises(DatasetError, match="not in the data set"):
        make_budget_split(layout, train, str(ids), seed=0)
    with pytest.raises(DatasetError, match=f"has {total} images"):
        make_budget_split(layout, train, str(total + 1), seed=0)


def test_summaries_and_the_verdict_on_paired_differences() -> None:
    s = summarise([0.40, 0.42, 0.44])
    assert s.n == 3 and abs(s.mean - 0.42) < 1e-12 and abs(s.sd - 0.02) < 1e-12
    assert abs(s.half_width - 4.303 * 0.02 / 3**0.5) < 1e-9  # t with 2 degrees of freedom
    assert verdict(summarise([0.02, 0.03, 0.025])).startswith("better")
    assert verdict(summarise([-0.02, -0.03, -0.025])).startswith("worse")
    assert verdict(summarise([0.02, -0.01, 0.01])) == "no difference shown"
    assert verdict(summarise([0.5])) == "one pair: no verdict"


def test_a_single_seed_is_shown_without_sd_or_interval_not_as_nan() -> None:
    from s4seg.workflows.study.acquisition import acquisition_table

    spec = StudySpec(
        config="synthetic-dense",
        methods=["baseline"],
        labels=["12"],
        seeds=[0, 1, 2],
        acquisition={"strategies": ["random", "entropy"], "add": 12, "rounds": 1},
    )
    rows = [
        {"round": 1, "labeled": 24, "strategy": "random", "seed": 0, "miou": 0.41},
        {"round": 1, "labeled": 24, "strategy": "entropy", "seed": 0, "miou": 0.43},
    ]
    table = acquisition_table(spec, rows)
    assert "nan" not in table, table
    assert "| 1 | 24 | random | 1 | 41.00 +- n/a | - | - | - |" in table, table
    assert (
        "| 1 | 24 | entropy | 1 | 43.00 +- n/a | 2.00 +- n/a (n=1) | [n/a, n/a] | one pair" in table
    )


def test_what_a_pick_holds_is_read_from_its_mask() -> None:
    from s4seg.workflows.study.acquisition import mask_contents

    mask = np.zeros((4, 4), np.uint8)
    mask[0, :2], mask[1, :2], mask[3, :] = 2, 5, 255  # 4 of 12 labeled pixels: classes 2 and 5
    assert mask_contents(mask, background=0) == {"foreground": 4 / 12, "classes": 2}
    assert mask_contents(mask, background=None) == {"foreground": 1.0, "classes": 3}


def test_cells_go_seed_by_seed_and_add_the_classifier_for_gated_methods() -> None:
    spec = StudySpec("synthetic-quick", ["baseline", "s4gan+mlmt"], ["1/8", "12"], [0, 1])
    names = [c.name for c in spec.cells()]
    assert names[:6] == [
        "mlmt-1_8-s0",
        "baseline-1_8-s0",
        "s4gan-1_8-s0",
        "mlmt-12-s0",
        "baseline-12-s0",
        "s4gan-12-s0",
    ]
    assert len(names) == 12 and Cell("s4gan", "12", 1).name in names
    with pytest.raises(ConfigError, match="unknown method"):
        StudySpec("synthetic-quick", ["s5gan"], ["1/8"], [0]).check()


def study_command(
    out: Path,
    data: Path,
    *extra: str,
    seeds: str = "0",
    methods: str = "baseline,s4gan,s4gan+mlmt",
    labels: str = "3,1/4",
) -> list[str]:
    sets = [
        *TINY_TRAINING,
        f"data.root={data}",
        "train.iterations=6",
        "train.checkpoint_every=2",
        "train.val_every=100",
        "gan.log_history_every=2",
    ]
    return [
        sys.executable,
        "-m",
        "s4seg",
        "study",
        "--out",
        str(out),
        "--config",
        "synthetic-quick",
        "--methods",
        methods,
        "--labels",
        labels,
        "--seeds",
        seeds,
        "--device",
        "cpu",
        *[a for s in sets for a in ("--set", s)],
        *extra,
    ]


@pytest.mark.trains
def test_a_killed_study_resumes_without_redoing_finished_cells(
    synth_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "study"
    command = study_command(out, synth_root, methods="baseline,s4gan,s4gan+mlmt,unimatch")
    first, second = out / "runs" / "mlmt-3-s0", out / "runs" / "baseline-3-s0"
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # Killed while the second cell trains: the first is done, the second has a checkpoint.
    while not ((first / "result.json").is_file() and (second / "last.pt").is_file()):
        assert process.poll() is None, "the study ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (second / "result.json").is_file()
    done = (first / "result.json").read_text()
    stamp = (first / "last.pt").stat().st_mtime_ns

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (first / "result.json").read_text() == done  # not redone
    assert (first / "last.pt").stat().st_mtime_ns == stamp
    assert "8 cells, 1 done, 7 to run" in result.stderr
    assert "resumed from iteration" in result.stderr  # the killed cell continued
    report = json.loads((out / "study.json").read_text())
    assert len(report["cells"]) == 8
    assert {r["method"] for r in report["rows"]} == {"baseline", "s4gan", "s4gan+mlmt", "unimatch"}
    gated = [r for r in report["rows"] if r["method"] == "s4gan+mlmt"]
    assert all("tau" in r for r in gated)  # chosen on the calibration part
    cell = report["cells"][0]
    assert cell["labeled"] == 3 and cell["versions"]["torch"] and cell["config_digest"]
    assert Path(cell["split_file"]).is_file()
    table = (out / "study.md").read_text()
    assert "| 3 | 3 | s4gan |" in table and "paired vs baseline" in table
    for picture in ("study.png", "curves.png"):
        assert (out / picture).stat().st_size > 10_000

    # Resumed in a session that has only the committed results (no checkpoints): a gated row
    # still to compute trains again the cells whose checkpoints it needs, and only those.
    for checkpoint in out.rglob("*.pt"):
        checkpoint.unlink()
    for cached in (out / "gated").glob("s4gan+mlmt-3-s0.json"):
        cached.unlink()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    retrained = sorted(re.findall(r"(\S+): its checkpoint is gone", resumed.stderr))
    assert retrained == ["mlmt-3-s0", "s4gan-3-s0"], resumed.stderr[-2000:]
    assert "8 cells, 6 done, 2 to run" in resumed.stderr
    assert (out / "gated" / "s4gan+mlmt-3-s0.json").is_file()

    # Other training settings in the same folder are refused (their cells would not compare);
    # more seeds or methods extend the study (tested by the cell counts above and below).
    again = [*command, "--set", "optim.lr=0.1"]
    other = subprocess.run(again, capture_output=True, text=True)
    assert other.returncode == 2 and "holds a study with other overrides" in other.stderr


def test_the_curves_average_finished_runs_only(tmp_path: Path) -> None:
    # A cell still training has a shorter history: in the mean over seeds it would cut every
    # curve of its budget short (the dense study's s4GAN D scores once stopped at iteration 300).
    from s4seg.workflows.study.plots import finished_runs

    spec = StudySpec(config="synthetic-quick", methods=["s4gan"], labels=["12"], seeds=[0, 1])
    for seed, done in ((0, True), (1, False)):
        folder = tmp_path / "runs" / Cell("s4gan", "12", seed).name
        folder.mkdir(parents=True)
        (folder / "d_scores.csv").write_text("iteration,d_real,d_fake,st_selected,st_batch\n")
        if done:
            (folder / "result.json").write_text("{}")
    runs = finished_runs(spec, tmp_path, "12")
    assert runs["s4gan"] == [tmp_path / "runs" / "s4gan-12-s0"]
    assert runs["baseline"] == []


@pytest.mark.trains
def test_one_cell_by_index_and_the_dry_run(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = subprocess.run(
        study_command(out, synth_root, "--cell", "5/6"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.parent.name for p in (out / "runs").glob("*/result.json")) == ["s4gan-1_4-s0"]
    wrong = subprocess.run(
        study_command(out, synth_root, "--cell", "1/5"), capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "this study has 6 cells" in wrong.stderr
    # A narrower study in the same folder reuses the finished cell (known by trainer, budget,
    # seed), and reports it.
    narrow = subprocess.run(
        study_command(out, synth_root, methods="s4gan", labels="1/4"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert narrow.returncode == 0, narrow.stderr[-2000:]
    assert "1 cells, 1 done, 0 to run" in narrow.stderr and "| 1/4 |" in narrow.stdout
    # --report: the table from the finished cells of the full spec, nothing trained.
    report = subprocess.run(
        study_command(out, synth_root, "--report"), capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert "| 1/4 | " in report.stdout and "training" not in report.stderr
    assert len(list((out / "runs").glob("*/result.json"))) == 1
    dry = subprocess.run(
        study_command(tmp_path / "dry", synth_root, "--dry-run"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "6 cells" in dry.stdout and "s4seg train s4gan --config synthetic-quick" in dry.stdout
    assert "s/iteration" in dry.stdout and not (tmp_path / "dry").exists()
    assert "timed on cpu" in dry.stdout  # what it timed, where, and how far it is
    assert "dry run: timing s4gan's step (2/2): ResNet-18" in dry.stderr  # only its trainers


@pytest.mark.parametrize(
    ("preset", "cells"),
    [
        ("voc-paper", 36),
        ("cityscapes-paper", 18),
        ("voc-unimatch", 27),
        ("synthetic-cpu", 24),
        ("synthetic-dense", 24),
        ("synthetic-dense-acquisition", 12),
        ("synthetic-dense-flexmatch", 12),
        ("voc-unimatch-v2", 36),
    ],
)
def test_the_study_presets_list_their_cells(
    preset: str, cells: int, monkeypatch, capsys, tmp_path: Path
) -> None:
    """The GPU presets' dry runs (the step timing is bench train's, tested above on a tiny
    model; here it is stubbed: a ResNet-101 step takes a minute on these CPUs)."""
    from s4seg.workflows.study import runner

    monkeypatch.setattr(runner, "step_seconds", lambda cfg, device, trainers: {"baseline": 0.5})
    assert main(["study", "--preset", preset, "--out", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{cells} cells" in out and out.count("s4seg train ") == cells
    assert not (tmp_path / "s").exists()
    # Recorded step times (bench train's, for the device the study will run on): nothing timed.
    monkeypatch.setattr(runner, "step_seconds", None)
    given = "baseline=0.5,s4gan=1,unimatch=1.25"
    argv = ["study", "--preset", preset, "--out", str(tmp_path / "s"), "--dry-run"]
    assert main([*argv, "--step-seconds", given]) == 0
    out = capsys.readouterr().out
    assert "baseline 0.50 s/iteration" in out and "(given)" in out


def test_a_vit_studys_dry_run_times_the_vit_steps_its_cells_run() -> None:
    """Issue 35: on a DPT config the dry run times the baseline's and UniMatch V2's steps on
    that ViT (bench train's steps), and only the trainers the cells use."""
    from s4seg.training.config import load_config
    from s4seg.workflows.study import runner

    cfg = load_config("synthetic-vit-tiny", ["data.crop_size=[28, 28]", "train.batch_size=1"])
    times = runner.step_seconds(cfg, "cpu", {"baseline", "unimatch-v2", "mlmt"})
    assert set(times) == {"baseline", "unimatch-v2"} and all(t > 0 for t in times.values())


def test_cpu_presets_train_batch_norm_and_old_studies_keep_their_settings() -> None:
    """Issue 31 (review U13): from random init the CPU presets train batch-norm scales; the
    synthetic-cpu study pins what its published figures were measured with (frozen scales,
    UniMatch's single forward), so its command still reproduces them."""
    from s4seg.training.config import load_config
    from s4seg.workflows.study import load_spec

    for preset in ("synthetic-quick", "quickstart", "synthetic-dense"):
        assert load_config(preset, []).model.freeze_bn_affine is False, preset
    old = load_spec("synthetic-cpu")
    cfg = load_config(old["config"], old["set"])
    assert cfg.model.freeze_bn_affine is True and cfg.unimatch.forward == "one"
    assert cfg.unimatch.loss_scale == 0.5 and cfg.gan.d_ignore == "paper"
    dense = load_config(load_spec("synthetic-dense")["config"], [])
    assert (dense.unimatch.forward, dense.unimatch.loss_scale, dense.gan.d_ignore) == (
        "two",
        1.0,
        "zero",
    )


def top(ids: list[str], values: list[float], count: int) -> list[str]:
    """The ``count`` ids of highest value (ties: the earlier)."""
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: (-values[i], i))[:count]]


@pytest.mark.trains
def test_an_acquisition_study_picks_each_round_by_its_strategy_against_random(
    synth_root: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import yaml

    from s4seg.acquisition import random_score
    from s4seg.training.acquisition import score_pool
    from s4seg.training.data.split import Split

    spec = tmp_path / "acquisition.yaml"
    settings = [*TINY_TRAINING, f"data.root={synth_root}", "train.iterations=2"]
    spec.write_text(
        yaml.safe_dump(
            {
                "config": "synthetic-quick",
                "methods": ["baseline"],
                "labels": ["3"],
                "seeds": [0, 1],
                "set": [*settings, "train.val_every=100"],
                "acquisition": {"strategies": ["random", "entropy"], "add": 2, "rounds": 1},
            }
        )
    )
    out = tmp_path / "study"
    command = ["study", "--preset", str(spec), "--out", str(out)]
    assert main(command) == 0
    assert len(list((out / "runs").glob("*/result.json"))) == 6
    for seed in (0, 1):
        start = Split.load(out / "splits" / f"3-s{seed}.json")
        pool = start.unlabeled
        checkpoint = json.loads((out / "runs" / f"baseline-3-s{seed}" / "result.json").read_text())
        scored = score_pool(checkpoint["checkpoint"], "train", pool, "cpu")
        values = {
            "entropy": [scored[i].entropy for i in pool],
            "random": [random_score(i, seed) for i in pool],
        }
        for strategy, value in values.items():
            acquired = Split.load(out / "splits" / f"3_2_{strategy}-s{seed}.json")
            assert acquired.labeled[:3] == start.labeled and len(acquired.labeled) == 5
            assert acquired.labeled[3:] == top(pool, value, 2), strategy
            assert not set(acquired.labeled) & set(acquired.unlabeled)
    table = (out / "study.md").read_text()
    assert "| 1 | 5 | entropy | 2 |" in table and "paired vs random" in table, table
    # What each strategy picked, from the picks' own masks: 2 seeds x 2 images a strategy.
    assert re.search(r"\| - \| pool \| \d+ \| [\d.]+ \| [\d.]+ \|", table), table
    assert re.search(r"\| 1 \| entropy \| 4 \| [\d.]+ \| [\d.]+ \|", table), table
    assert (out / "study.png").stat().st_size > 10_000
    # Resumed with only the committed results: every round's split is made, nothing retrains.
    for checkpoint in out.rglob("*.pt"):
        checkpoint.unlink()
    capfd.readouterr()
    assert main(command) == 0
    assert "checkpoint is gone" not in capfd.readouterr().err
    # A round whose split is not made yet needs the round before's checkpoint: retrained.
    (out / "splits" / "3_2_entropy-s1.json").unlink()
    shutil.rmtree(out / "runs" / "baseline-3_2_entropy-s1")
    assert main(command) == 0
    log = capfd.readouterr().err
    assert "baseline-3-s1: its checkpoint is gone" in log and "6 cells, 4 done, 2 to run" in log
