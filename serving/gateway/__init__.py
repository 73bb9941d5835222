"""The FastAPI gateway in front of the Triton ensemble (no torch)."""
