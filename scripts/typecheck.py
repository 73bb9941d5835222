"""Type-check the packages named on the command line with mypy (``make lint``: the core and
every stage). The stages install as ``s4seg.<stage>`` from their own folders through an import
hook mypy cannot follow, so mypy reads a tree of links laid out as installed (``.venv/typecheck``,
rebuilt each run from pyproject's package-dir)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "s4seg.training",
    "s4seg.export",
    "s4seg.serving",
    "s4seg.clients",
    "s4seg.workflows",
]


def link_tree(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    for package, folder in sorted(mapping.items(), key=lambda item: item[0].count(".")):
        where = target.joinpath(*package.split("."))
        where.parent.mkdir(parents=True, exist_ok=True)
        if package == "s4seg":  # the core: its files, so the stages can sit beside them
            where.mkdir()
            for path in (ROOT / folder).iterdir():
                if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").is_file()):
                    (where / path.name).symlink_to(path)
        else:
            where.symlink_to(ROOT / folder)


def main(packages: list[str]) -> int:
    tree = ROOT / ".venv" / "typecheck"
    link_tree(tree)
    targets = []
    for package in packages:  # "s4seg" alone: the core's modules, not the stages below it
        folder = tree.joinpath(*package.split("."))
        targets += (
            sorted(str(p) for p in folder.glob("*.py")) if package == "s4seg" else [str(folder)]
        )
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        *targets,
    ]
    return subprocess.run(command, cwd=tree, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["s4seg", *STAGES]))
