"""What a study is: its methods, cells (one training run each), the spec a folder holds, and
which cell ``--cell i/N`` names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from s4seg.acquisition import STUDY_STRATEGIES
from s4seg.atomic import write_json_atomic
from s4seg.cluster import AUTO, job_index
from s4seg.errors import ConfigError

from .. import studies


@dataclass(frozen=True)
class Method:
    name: str
    segmenter: str  # the trainer of its segmenter
    gated: bool  # with an MLMT classifier (its tau chosen on the calibration part)


METHODS = {
    m.name: m
    for m in (
        Method("baseline", "baseline", False),
        Method("s4gan", "s4gan", False),
        Method("baseline+mlmt", "baseline", True),
        Method("s4gan+mlmt", "s4gan", True),
        Method("unimatch", "unimatch", False),
        Method("unimatch+mlmt", "unimatch", True),
        Method("unimatch-v2", "unimatch-v2", False),
        Method("unimatch-v2+mlmt", "unimatch-v2", True),
    )
}


@dataclass(frozen=True)
class Cell:
    """One training run."""

    trainer: str  # baseline | s4gan | unimatch | unimatch-v2 | mlmt
    budget: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.trainer}-{budget_slug(self.budget)}-s{self.seed}"


def budget_slug(budget: str) -> str:
    text = Path(budget).stem if Path(budget).is_file() else budget
    return "".join(c if c.isalnum() else "_" for c in text)


ACQUIRED = ":"  # an acquired budget: START+ADDED:STRATEGY (``12+24:entropy``)


def acquired_budget(start: str, added: int, strategy: str) -> str:
    return f"{start}+{added}{ACQUIRED}{strategy}"


def parse_acquired(budget: str) -> tuple[str, int, str] | None:
    """``12+24:entropy`` -> ("12", 24, "entropy"); None for any other budget."""
    if ACQUIRED not in budget or "+" not in budget:
        return None
    counts, strategy = budget.rsplit(ACQUIRED, 1)
    start, added = counts.split("+", 1)
    return start, int(added), strategy


@dataclass(frozen=True)
class Acquisition:
    """The acquisition axis (issue 34, item 4): from the study's one budget, ``rounds`` times
    add ``add`` images picked by each strategy from the rest of the training split, retrain."""

    strategies: list[str]
    add: int
    rounds: int

    def check(self) -> None:
        unknown = [s for s in self.strategies if s not in STUDY_STRATEGIES]
        if unknown or "random" not in self.strategies:
            raise ConfigError(
                f"acquisition strategies: {', '.join(STUDY_STRATEGIES)}, random among them (the "
                f"baseline each is compared with); not {unknown}"
            )
        if self.add < 1 or self.rounds < 1:
            raise ConfigError("acquisition: add and rounds must be at least 1")


@dataclass
class StudySpec:
    config: str  # a training preset or YAML file
    methods: list[str]
    labels: list[str]  # budgets: ratios, counts or id files
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)  # --set, for every cell
    acquisition: dict | None = None  # Acquisition's fields (spec.json stays plain JSON)

    @property
    def acquiring(self) -> Acquisition | None:
        return Acquisition(**self.acquisition) if self.acquisition else None

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method {unknown}: choose from {', '.join(METHODS)}")
        if not self.methods or not self.labels or not self.seeds:
            raise ConfigError("a study needs at least one method, label budget and seed")
        if self.acquiring is not None:
            self.acquiring.check()
            if len(self.methods) != 1 or METHODS[self.methods[0]].gated or len(self.labels) != 1:
                raise ConfigError(
                    "an acquisition study has one ungated method and one starting budget"
                )

    def acquisition_cells(self, acquiring: Acquisition) -> list[Cell]:
        """Seed by seed: the starting budget, then round by round each strategy's cell."""
        trainer, start = METHODS[self.methods[0]].segmenter, self.labels[0]
        return [
            cell
            for seed in self.seeds
            for cell in [
                Cell(trainer, start, seed),
                *(
                    Cell(trainer, acquired_budget(start, r * acquiring.add, strategy), seed)
                    for r in range(1, acquiring.rounds + 1)
                    for strategy in acquiring.strategies
                ),
            ]
        ]

    def cells(self) -> list[Cell]:
        """Seed by seed (an unfinished study still compares the methods on the same splits),
        then budget, then trainer; the classifier, when a gated method needs it, first: each
        segmenter's gated rows are computed as soon as it is trained, while both checkpoints
        are on disk (a study that resumes in another session has only what was committed)."""
        if self.acquiring is not None:
            return self.acquisition_cells(self.acquiring)
        trainers = list(dict.fromkeys(METHODS[m].segmenter for m in self.methods))
        if any(METHODS[m].gated for m in self.methods):
            trainers.insert(0, "mlmt")
        return [
            Cell(trainer, budget, seed)
            for seed in self.seeds
            for budget in self.labels
            for trainer in trainers
        ]


def load_spec(path: str) -> dict[str, Any]:
    """A study preset (``voc-paper``, ...) or a YAML file: config, methods, labels, seeds, set."""
    if not path.endswith((".yaml", ".yml")):
        names = sorted(
            p.name.removesuffix(".yaml")
            for p in resources.files(studies).iterdir()
            if p.name.endswith(".yaml")
        )
        if path not in names:
            raise ConfigError(f"unknown study preset '{path}' (presets: {', '.join(names)})")
        text = resources.files(studies).joinpath(f"{path}.yaml").read_text()
    else:
        if not Path(path).is_file():
            raise ConfigError(f"study file not found: {path}")
        text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a study file is a mapping (config, methods, labels, seeds)")
    return data


def resolve_spec(
    out: Path,
    preset: str | None = None,
    config: str | None = None,
    methods: list[str] | None = None,
    labels: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
) -> StudySpec:
    """What is given over the preset; with neither, the spec the study folder was started
    with."""
    saved = out / "spec.json"
    base: dict[str, Any] = load_spec(preset) if preset else {}
    given = {"config": config, "methods": methods, "labels": labels, "seeds": seeds}
    if not base and not any(given.values()) and not overrides and saved.is_file():
        return StudySpec(**json.loads(saved.read_text()))
    data = {**base, **{k: v for k, v in given.items() if v}}
    data["overrides"] = [*base.get("set", []), *(overrides or [])]
    data.pop("set", None)
    missing = [k for k in ("config", "methods", "labels", "seeds") if not data.get(k)]
    if missing:
        raise ConfigError(f"the study needs --{' --'.join(missing)} (or --preset)")
    spec = StudySpec(
        config=str(data["config"]),
        methods=[str(m) for m in data["methods"]],
        labels=[str(b) for b in data["labels"]],
        seeds=[int(s) for s in data["seeds"]],
        overrides=[str(o) for o in data["overrides"]],
        acquisition=data.get("acquisition"),
    )
    spec.check()
    return spec


def claim_folder(out: Path, spec: StudySpec) -> None:
    """A study folder belongs to one training config (preset and overrides): cells trained under
    another would not compare. Methods, budgets and seeds may grow or shrink: a cell is known
    by its trainer, budget and seed, so the ones already done are reused."""
    saved = out / "spec.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        changed = [k for k in ("config", "overrides") if before.get(k) != asdict(spec)[k]]
        if changed:
            raise ConfigError(
                f"{out} holds a study with other {' and '.join(changed)}: use another --out, or "
                "repeat the study's own flags (or none) to resume it"
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, asdict(spec))


def parse_cell(text: str, count: int) -> int:
    """``i/N``, or ``auto``: the index of a Kubernetes Indexed Job's pod (one cell per pod)."""
    if text == AUTO:
        text = f"{job_index('--cell')}/{count}"
    try:
        index, total = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--cell takes i/N, e.g. 0/{count}, not {text!r}") from None
    if total != count or not 0 <= index < total:
        raise ConfigError(
            f"--cell {text}: this study has {count} cells (0/{count} .. {count - 1}/{count})"
        )
    return index
