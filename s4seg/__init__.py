"""s4seg: semi-supervised semantic segmentation (s4GAN + MLMT), trained, exported and served.

This package is the small shared core that every stage agrees on (class names and palettes,
metrics, errors, the CLI entry point). It imports neither torch nor FastAPI; the stages live in
``s4seg.training``, ``s4seg.export``, ``s4seg.serving`` and ``s4seg.clients``.
"""

__version__ = "0.1.0"

IGNORE_INDEX = 255
"""Mask value that marks pixels without a label (all data sets, all stages)."""
