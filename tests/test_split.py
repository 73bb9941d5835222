"""Seeded splits: deterministic, disjoint, complete, saved and reloaded."""

from pathlib import Path

import pytest

from s4seg.layouts import open_layout
from s4seg.training.data.split import Split, make_split, parse_ratio
from s4seg.workflows.cli import main


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1/8", 0.125), ("0.25", 0.25), ("full", 1.0), ("2%", 0.02), ("1/50", 0.02)],
)
def test_parse_ratio(text: str, expected: float) -> None:
    assert float(parse_ratio(text)) == pytest.approx(expected)


def test_split_is_deterministic_disjoint_and_complete(synth_root: Path) -> None:
    layout = open_layout(synth_root)
    first = make_split(layout, "train", "1/8", seed=7)
    again = make_split(layout, "train", "1/8", seed=7)
    other = make_split(layout, "train", "1/8", seed=8)
    assert first.labeled == again.labeled and first.unlabeled == again.unlabeled
    assert first.labeled != other.labeled
    assert len(first.labeled) == int(24 / 8)
    assert not set(first.labeled) & set(first.unlabeled)
    assert sorted(first.labeled + first.unlabeled) == sorted(s.id for s in layout.samples("train"))
    assert len(first.extra_unlabeled) == 4
    full = make_split(layout, "train", "full", seed=7)
    assert len(full.labeled) == 24 and full.unlabeled == []


def test_split_command_writes_a_reloadable_file(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    assert (
        main(
            [
                "data",
                "split",
                "--data",
                str(synth_root),
                "--ratio",
                "1/4",
                "--seed",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    split = Split.load(out)
    assert split.ratio == "1/4" and split.seed == 3 and len(split.labeled) == 6
    assert split.labeled == make_split(open_layout(synth_root), "train", "1/4", 3).labeled
