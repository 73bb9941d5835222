"""The installed layout: every package listed, and the shared core free of torch and FastAPI."""

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """Each mapped folder's packages under their installed names, the stages' subpackages
    included (the mapped folders are disjoint: none lies inside another)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join([name, *relative]))
    assert "s4seg.serving.gateway.routers" in found and "s4seg.training.data" in found
    assert found == listed, (
        f"not listed in pyproject.toml: {sorted(found - listed)}; "
        f"listed but not a package: {sorted(listed - found)}"
    )


def test_shared_core_imports_neither_torch_nor_fastapi() -> None:
    """Every module of the core (data-set layouts, pipeline evaluation, boundary metrics
    included: the later stages use them), and the command line's parser."""
    core = sorted(
        f"s4seg.{path.stem}"
        for path in (ROOT / "s4seg").glob("*.py")
        if path.stem not in ("__init__", "__main__")
    )
    assert {"s4seg.layouts", "s4seg.pipeline_evaluation", "s4seg.boundaries"} <= set(core)
    code = (
        f"import sys, s4seg, s4seg.workflows.cli, {', '.join(core)}; "
        "s4seg.workflows.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_serving_side_modules_import_no_torch() -> None:
    """Publish, the Triton launcher, the clients and the in-process ONNX pipeline run without
    torch (the gateway's machine need not have it)."""
    modules = (
        "s4seg.manifest, s4seg.letterbox, s4seg.onnx_pipeline, s4seg.export.repository, "
        "s4seg.triton_config, s4seg.repository, s4seg.tensors, s4seg.pipeline_evaluation, "
        "s4seg.export.commands, s4seg.serving.triton, s4seg.clients.evaluate, "
        "s4seg.clients.triton_pipeline, s4seg.clients.predict, s4seg.clients.backends, "
        "s4seg.clients.commands, s4seg.serving.serve, s4seg.serving.versions, "
        "s4seg.serving.gateway.app, s4seg.imaging, s4seg.outputs"
    )
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """``name -> (version, number of sha256 hashes)`` of a pip-compile lock file."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and "==" in line and not line.startswith("#"):
            name, version = line.split(" ")[0].split("==")
            pins[name.lower()] = (version, 0)
        elif name and "--hash=sha256:" in line:
            version, hashes = pins[name.lower()]
            pins[name.lower()] = (version, hashes + 1)
    return pins


def test_the_locks_pin_every_requirement_with_hashes_at_or_above_its_floor() -> None:
    """Issue 32, item 7 (review H5): everything is installed from hashed locks, and the floors
    that keep out releases with published decoder and parser CVEs hold in them and in what is
    installed. A lock that misses a dependency of pyproject.toml, or pins one below its floor,
    fails here (refresh with `make lock`)."""
    from importlib.metadata import version as installed

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = locked(ROOT / "requirements.lock"), locked(ROOT / "requirements-dev.lock")
    everything = project["dependencies"] + project["optional-dependencies"]["dev"]
    for pins, requirements in ((runtime, project["dependencies"]), (dev, everything)):
        for text in requirements:
            requirement = Requirement(text)
            name = requirement.name.lower()
            assert name in pins, f"{name} is not in the lock"
            pinned, hashes = pins[name]
            assert requirement.specifier.contains(pinned, prereleases=True), (name, pinned)
            assert hashes > 0, f"{name} has no hash"
    assert all(hashes for _, hashes in dev.values())
    assert locked(ROOT / "numpy2.lock")["numpy"][0].startswith("2.")
    floors = {
        "pillow": "13.0.0",
        "starlette": "0.49.1",
        "python-multipart": "0.0.27",
        "h11": "0.16.0",
    }
    for name, floor in floors.items():
        assert Version(installed(name)) >= Version(floor), (name, installed(name))


def test_the_settings_table_in_the_docs_is_made_from_serve_settings() -> None:
    """docs/serving.md's table of S4SEG_* settings is generated (scripts/settings_table.py)
    from ServeSettings, its one source: a setting added, renamed or given another default
    without regenerating it fails here."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from settings_table import DOC, settings_table, with_table
    finally:
        sys.path.pop(0)
    text = DOC.read_text()
    assert with_table(text) == text, "run: python scripts/settings_table.py"
    assert "| `S4SEG_MAX_IN_FLIGHT` | 32 |" in settings_table()
