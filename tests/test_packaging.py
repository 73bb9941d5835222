"""The installed layout: every package listed, and the shared core free of torch and FastAPI."""

import subprocess
import sys
import tomllib
from pathlib import Path

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
        f"s4seg.{path.stem}" for path in (ROOT / "s4seg").glob("*.py")
        if path.stem not in ("__init__", "__main__")
    )  # fmt: skip
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
